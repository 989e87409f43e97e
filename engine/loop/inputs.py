"""Every user-fixable input, checked before the run sets anything up: the data, the options that
depend on the number of ranks, the output directory, and (once the model folder is known) whether
each episode fits the context."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from engine.base.errors import UserError
from engine.config.loading import with_values
from engine.models.paths import check_model_source
from engine.models.warmup import warmup_fields
from engine.ops.logprobs import impl_for_this_machine
from engine.runtime.checkpoint import latest_checkpoint
from engine.tasks.data import VALIDATION, Problem, load_problems, require_answers
from rewards.registry import reward_needs
from rollout.episodes import encode_prompt, turn_overhead


@dataclass
class Inputs:
    train: list[Problem]
    eval: list[Problem]
    skipped: dict[str, int] = field(default_factory=dict)  # "train"/"eval"/"guard" -> problems dropped (data.overlong=skip)
    guard: list[Problem] = field(default_factory=list)  # guard.data's problems, when the guard's accuracy check is on


def check_inputs(cfg: DictConfig, rank: int, world: int, workers: int = 0) -> Inputs:
    """Data and every other check that needs no model, before the (possibly minutes-long) model build.
    `world` counts the learner ranks; `workers` the dedicated rollout workers."""
    for count, what in ((world, "learner ranks"), (workers, "rollout workers")):
        if count and cfg.rollout.prompts_per_step % count:
            raise UserError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the "
                            f"number of {what} ({count}).")
    if cfg.algo.kind == "dpo":  # every rank scores and trains the same number of rows (ZeRO-3 gathers)
        for key in ("dpo.batch_pairs", "dpo.prompts_per_round"):
            if OmegaConf.select(cfg, key) % world:
                raise UserError(f"{key}={OmegaConf.select(cfg, key)} must be divisible by the number of learner "
                                f"ranks ({world}).")
    reward = reward_needs(cfg.reward.kind, cfg.reward)
    keys = (cfg.data.prompt_key, cfg.data.answer_key, cfg.data.prompt_template)
    train_problems, eval_problems = load_problems(cfg.data.train, *keys), load_problems(cfg.data.eval, *keys)
    require_answers(eval_problems, cfg.data.eval, "evaluation (data.eval)")
    if reward.needs_gold:
        require_answers(train_problems, cfg.data.train, f"reward.kind={cfg.reward.kind}")
    if rank == 0 and len(eval_problems) < cfg.eval.problems:
        print(f"[warn] eval.problems={cfg.eval.problems} but {cfg.data.eval} has {len(eval_problems)}; "
              f"evaluating on all {len(eval_problems)}.", flush=True)
    check_model_source(cfg.model.path)  # a bad folder or file fails here, not after set-up
    warmup_fields(cfg.model.warmup)  # on every rank: a bad setting must not leave the others at rank 0's barrier
    if cfg.train.resume == "never" and latest_checkpoint(cfg.train.output_dir) is not None:
        raise UserError(f"train.output_dir={cfg.train.output_dir} holds checkpoints of an earlier run and "
                        f"train.resume=never would mix a new run into them. Hint: train.resume=auto continues "
                        f"it; or give another train.output_dir.")
    impl_for_this_machine(cfg.learner.logprob_impl)
    guard_problems = []
    if guard_reads_labels(cfg):
        guard_problems = load_problems(guard_data(cfg), *keys)
        require_answers(guard_problems, guard_data(cfg), "the guard's accuracy check (guard.data, guard.patience > 0)")
    # eval.problems is taken after overlong ones are dropped
    inputs = Inputs(train_problems, eval_problems, guard=guard_problems)
    _check_enough_prompts(cfg, inputs)
    return inputs


def guard_reads_labels(cfg: DictConfig) -> bool:
    """The guard's accuracy check is on (the policy-gradient loop, guard.patience > 0, evaluations to run)."""
    return cfg.guard.patience > 0 and cfg.eval.every > 0 and cfg.algo.kind == "pg"


def guard_data(cfg: DictConfig) -> str:
    """guard.data, or when unset data.eval's validation split (engine/tasks/data.py VALIDATION), else data.eval."""
    return cfg.guard.data or VALIDATION.get(cfg.data.eval, cfg.data.eval)


def fit_to_model(cfg: DictConfig, inputs: Inputs, tokenizer, model_config,
                 log=print) -> tuple[DictConfig, Inputs]:
    """Check the context settings against the model, size rollout.max_model_len when it is unset (the config
    returned records the value), then drop (data.overlong=skip, counted) or refuse (data.overlong=error)
    problems whose rollout.turns-turn episode could outgrow it."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if cfg.rollout.max_model_len is not None and positions is not None and cfg.rollout.max_model_len > positions:
        raise UserError(f"rollout.max_model_len={cfg.rollout.max_model_len} exceeds the model's "
                        f"max_position_embeddings={positions}. Hint: lower rollout.max_model_len, or leave it "
                        f"unset (null) to size it from the data.")
    require_chat_template(cfg.model.path, tokenizer)
    overhead = episode_overhead(cfg, tokenizer, inputs.train[0].prompt)
    # The evaluations use eval.problems problems: with data.overlong=error only those are checked; skip
    # may draw on the rest to replace dropped ones
    used = len(inputs.eval) if cfg.data.overlong == "skip" else cfg.eval.problems
    roles = (("train", cfg.data.train, inputs.train), ("eval", cfg.data.eval, inputs.eval[:used]),
             ("guard", guard_data(cfg), inputs.guard[:used]))
    lengths = {role: [len(encode_prompt(tokenizer, p.prompt)) for p in problems] for role, _, problems in roles}
    sized_by = {role: n[:cfg.eval.problems] if role != "train" else n for role, n in lengths.items()}
    unset = cfg.rollout.max_model_len is None
    cfg = with_context_length(cfg, max(max(n, default=0) for n in sized_by.values()), overhead, positions, log)
    if overhead >= cfg.rollout.max_model_len:
        hint = (f"lower rollout.max_tokens or rollout.turns: the model's max_position_embeddings={positions} is the "
                f"limit" if unset else "raise rollout.max_model_len or lower rollout.max_tokens")
        raise UserError(f"{cfg.rollout.turns} turn(s) of rollout.max_tokens={cfg.rollout.max_tokens} (rollout.turns), "
                        f"the correction requests and the answer probe take {overhead} tokens, leaving no room for "
                        f"a prompt in rollout.max_model_len={cfg.rollout.max_model_len}. Hint: {hint}.")
    skipped = {}
    kept = {}
    for role, source, problems in roles:
        kept[role], skipped[role] = _fit(cfg, source, problems, lengths[role], overhead, log) if problems else ([], 0)
    fitted = Inputs(kept["train"], kept["eval"][: cfg.eval.problems], {k: v for k, v in skipped.items() if v},
                    guard=kept["guard"][: cfg.eval.problems])
    _check_enough_prompts(cfg, fitted)
    return cfg, fitted


def episode_overhead(cfg: DictConfig, tokenizer, prompt: str) -> int:
    """The tokens an episode adds to its prompt at most: rollout.turns full turns, the correction requests
    and RLSF's answer probe (it extends the last turn's response)."""
    overhead = turn_overhead(tokenizer, prompt, cfg.rollout.max_tokens, cfg.rollout.correction_instruction,
                             cfg.rollout.turns)
    if cfg.reward.probe_tokens:
        overhead += len(tokenizer(cfg.reward.probe_prompt, add_special_tokens=False).input_ids) + cfg.reward.probe_tokens
    return overhead


def context_length(longest_prompt: int, overhead: int, positions: int | None) -> int:
    """The context that fits the longest prompt's whole episode, within the model's positions."""
    needed = longest_prompt + overhead
    return needed if positions is None else min(needed, positions)


def with_context_length(cfg: DictConfig, longest_prompt: int, overhead: int, positions: int | None,
                        log=print) -> DictConfig:
    """cfg itself when rollout.max_model_len is set; else a copy with it sized by context_length."""
    if cfg.rollout.max_model_len is not None:
        return cfg
    chosen = context_length(longest_prompt, overhead, positions)
    capped = ", the model's max_position_embeddings" if chosen < longest_prompt + overhead else ""
    log(f"[context] rollout.max_model_len={chosen} (unset: the longest prompt, {longest_prompt} tokens, and its "
        f"{cfg.rollout.turns}-turn episode, {overhead} tokens{capped})")
    return with_values(cfg, {"rollout.max_model_len": chosen})


def sized_for(cfg: DictConfig, problems: list[Problem], tokenizer, model_config, log=print) -> DictConfig:
    """with_context_length for commands that sample without fit_to_model (evaluation, the reward screen)."""
    if cfg.rollout.max_model_len is not None:
        return cfg
    longest = max(len(encode_prompt(tokenizer, p.prompt)) for p in problems)
    return with_context_length(cfg, longest, episode_overhead(cfg, tokenizer, problems[0].prompt),
                               getattr(model_config, "max_position_embeddings", None), log)


def _fit(cfg: DictConfig, source: str, problems: list[Problem], lengths: list[int], overhead: int,
         log) -> tuple[list, int]:
    room = cfg.rollout.max_model_len - overhead
    over = [i for i, n in enumerate(lengths) if n > room]
    if not over:
        return problems, 0
    first = problems[over[0]]
    where = f"{source}:{first.line}" if first.line is not None else f"{source} (problem {over[0]})"
    if cfg.data.overlong == "error":
        raise UserError(f"{where}: the prompt takes {lengths[over[0]]} tokens and its episode "
                        f"{lengths[over[0]] + overhead} ({cfg.rollout.turns} turn(s) of rollout.max_tokens={cfg.rollout.max_tokens}, "
                        f"the correction requests, the answer probe), more than rollout.max_model_len="
                        f"{cfg.rollout.max_model_len}; {len(over)} of {len(problems)} problems are too long. "
                        f"Hint: data.overlong=skip drops them (and counts them); or raise rollout.max_model_len or "
                        f"lower rollout.max_tokens.")
    too_long = set(over)
    kept = [p for i, p in enumerate(problems) if i not in too_long]
    log(f"[data] {source}: skipped {len(over)} of {len(problems)} problems whose episode would exceed "
        f"rollout.max_model_len={cfg.rollout.max_model_len} (data.overlong=skip; first: {where})")
    if not kept:
        raise UserError(f"{source}: every problem is too long for rollout.max_model_len={cfg.rollout.max_model_len}"
                        f" (data.overlong=skip left none). Hint: raise rollout.max_model_len or lower "
                        f"rollout.max_tokens.")
    return kept, len(over)


def require_chat_template(model_spec: str, tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"model.path={model_spec}: the tokenizer has no chat template, and an episode is a chat "
                        f"(prompt, answer, correction request, answer). Hint: add one to the folder, as "
                        f"'chat_template' in tokenizer_config.json or a chat_template.jinja file; a base model "
                        f"can use ChatML (see docs/reliability.md, 'Bad input').")


def _check_enough_prompts(cfg: DictConfig, inputs: Inputs) -> None:
    key = "dpo.prompts_per_round" if cfg.algo.kind == "dpo" else "rollout.prompts_per_step"
    if len(inputs.train) < OmegaConf.select(cfg, key):
        raise UserError(f"{key}={OmegaConf.select(cfg, key)} is more than the {len(inputs.train)} problems in "
                        f"{cfg.data.train}. Hint: lower {key}.")
