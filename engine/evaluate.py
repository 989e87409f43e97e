"""Held-out evaluation: one episode of rollout.turns turns per problem, scored against gold answers. A model
trained with 2 turns can be scored with rollout.turns=3 or 4 (refinement chains at inference).

The trainer's before/after/periodic evaluations compute `eval_metrics`; so does the command line, which scores
any model folder (the base model or a policy the trainer saved):

    python -m engine.evaluate [config.yaml ...] [key=value ...] [--json PATH]

It reads the same config as training (model.path, data.eval, eval.*, rollout.max_tokens, ...), prints
a table and writes the metrics as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.loop.evaluation import eval_metrics
from rollout.service import sample_eval
from rollout.vllm_engine import RolloutEngine


def table_rows(turns: int) -> list[tuple[str, str]]:
    """(label, metric key) of the table, for episodes of `turns` turns."""
    ks = range(1, turns + 1)
    rows = [(f"Acc@t{k}", f"acc_t{k}") for k in ks]
    rows += [(f"Δ(t1,t{turns})", "delta"), (f"Δ i→c (t1→t{turns})", "delta_i2c"), (f"Δ c→i (t1→t{turns})", "delta_c2i")]
    if turns > 2:
        rows += [(f"Δ {kind} (t{k - 1}→t{k})", f"delta_{key}_t{k}") for k in range(2, turns + 1)
                 for kind, key in (("i→c", "i2c"), ("c→i", "c2i"))]
    rows += [(f"ECE t{k}", f"ece_t{k}") for k in ks] + [(f"length t{k} (tokens)", f"len_t{k}") for k in ks]
    rows += [(f"edit ratio t{k - 1}→t{k}", "edit_ratio" if k == 2 else f"edit_ratio_t{k}") for k in range(2, turns + 1)]
    return rows


def format_table(metrics: dict[str, float]) -> str:
    """A markdown table of the metrics with their standard errors."""
    lines = [f"| metric (n={metrics['n']}) | value | ± se |", "|---|---|---|"]
    turns = sum(key.startswith("acc_t") for key in metrics)
    for label, key in table_rows(turns):
        if key in metrics:
            lines.append(f"| {label} | {metrics[key]:.3f} | {metrics.get('se_' + key, float('nan')):.3f} |")
    return "\n".join(lines)


def split_json_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """`... --json PATH ...` or `--json=PATH` -> (the other arguments, PATH)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--json="):
            return argv[:i] + argv[i + 1:], arg.split("=", 1)[1]
    if "--json" not in argv:
        return argv, None
    at = argv.index("--json")
    if at + 1 >= len(argv):
        raise ValueError("--json needs a path")
    return argv[:at] + argv[at + 2:], argv[at + 1]


def main(argv: list[str] | None = None, console: bool = False) -> dict[str, float]:
    """console: the command line's run: the terminal shows progress, the table and problems; evaluate.log
    (beside --json's file, else in train.output_dir) keeps every line."""
    from engine.base.errors import UserError
    from engine.config.loading import load_config, main_args
    from engine.loop.inputs import require_chat_template, sized_for
    from engine.models.paths import load_tokenizer_and_config, prepare_model_everywhere
    from engine.runtime.console import to_console
    from engine.runtime.distributed import init_distributed
    from engine.tasks.data import load_problems, require_answers

    try:
        args, json_path = split_json_flag(main_args(argv))
    except ValueError as err:
        raise UserError(str(err)) from None
    cfg = load_config(args)
    problems = load_problems(cfg.data.eval, cfg.data.prompt_key, cfg.data.answer_key, cfg.data.prompt_template)
    require_answers(problems, cfg.data.eval, "evaluation (data.eval)")
    problems = problems[: cfg.eval.problems]
    rank, world = init_distributed()
    model_path = prepare_model_everywhere(cfg.model, rank)
    tokenizer, model_config = load_tokenizer_and_config(model_path, cfg.model.trust_remote_code)
    require_chat_template(cfg.model.path, tokenizer)
    cfg = sized_for(cfg, problems, tokenizer, model_config, log=print if rank == 0 else lambda _: None)
    log = None
    if console:  # after the start-up checks: a bad input leaves no log folder behind
        log_dir = Path(json_path).parent if json_path else Path(cfg.train.output_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        log = to_console(log_dir, rank, cfg.log.level, stem="evaluate")
    engine = RolloutEngine(model_path, max_model_len=cfg.rollout.max_model_len, seed=cfg.train.seed + rank,
                           dtype=cfg.model.dtype, kv_cache_gib=cfg.rollout.kv_cache_gib,
                           trust_remote_code=cfg.model.trust_remote_code)
    episodes = sample_eval(engine, tokenizer, cfg, list(problems[rank::world]), progress=rank == 0)
    metrics = eval_metrics(episodes, tokenizer)
    if rank == 0:
        print(f"model {cfg.model.path}, data {cfg.data.eval}, T={cfg.eval.temperature}, {cfg.rollout.turns} turns")
        print(format_table(metrics))
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps({"model": cfg.model.path, "data": cfg.data.eval, "turns": cfg.rollout.turns, **metrics},
                                                  indent=2) + "\n")
            print(f"wrote {json_path}")
        if log is not None:
            print(f"[done] every line of this run: {log.log_path}")
    return metrics


if __name__ == "__main__":
    from engine.base.errors import run_cli

    run_cli(lambda: main(console=True))
