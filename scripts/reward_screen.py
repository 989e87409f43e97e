"""Which label-free rewards can teach? A screen on the base model, before any training.

    python scripts/reward_screen.py [configs/default.yaml] [key=value ...] [--prompts 256] [--data SOURCE]
                                    [--json PATH]

Samples `--prompts` problems of the validation split (rollout.n answers each, plus one correction per answer) from the
model, scores the policy's token statistics once, and computes every label-free reward. For each reward
and turn it reports the within-prompt ranking accuracy: over pairs of samples of the same prompt where
one is right and the other wrong (by the gold answer, read here only to judge), the share in which the
right one gets the higher reward (ties count half). Group-baselined advantages (rloo, grpo) only see
these within-prompt differences, so 0.5 means the reward's advantages carry no signal about correctness.
A screen chooses a reward, so it reads validation: `--data`, by default the recipe's validation split
(builtin:arith-val for builtin:arith-eval, engine/tasks/data.py's VALIDATION), else data.train; never data.eval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from engine.base.errors import UserError, run_cli
from engine.config.loading import load_config
from engine.loop.inputs import sized_for
from engine.models.paths import DTYPES, load_tokenizer_and_config, prepare_model
from engine.ops.scoring import ScoringModel
from engine.ops.token_stats import token_stats
from engine.runtime.distributed import init_distributed
from engine.tasks.data import VALIDATION, load_problems
from engine.update.batch import collate
from rewards import REWARDS, RewardInputs, turn_correctness, turn_has_answer
from rewards.confidence import REDUCTIONS, SCOPES, TOKEN_METRICS
from rewards.registry import reward_needs, unanswered_lowest
from rollout.service import sample_step
from rollout.vllm_engine import RolloutEngine


def candidates() -> list[dict]:
    """Every label-free reward setting: confidence metric x scope x reduction, then the others."""
    out = [{"kind": "confidence", "metric": m, "scope": s, "reduction": r}
           for m, s, r in itertools.product(TOKEN_METRICS, SCOPES, REDUCTIONS)]
    weighted = [{"kind": "agreement", "vote_weight": "confidence", "vote_metric": m, "scope": "response",
                 "reduction": r} for m, r in itertools.product(("prob", "disparity"), REDUCTIONS)]
    # one vote each, whatever the recipe's own vote_weight (configs/default.yaml weighs votes)
    return out + [{"kind": "self_certainty"}, {"kind": "agreement", "vote_weight": "uniform"}, {"kind": "majority"}] + weighted


def label(c: dict) -> str:
    keys = ("kind", "vote_weight", "vote_metric", "metric", "scope", "reduction")
    return "/".join(str(c[k]) for k in keys if k in c)


def ranking_accuracy(reward: torch.Tensor, correct: torch.Tensor, groups: list[int]) -> tuple[float, int]:
    """P(reward of a right sample > reward of a wrong one of the same prompt), ties half; and the pair count."""
    wins, pairs = 0.0, 0
    for g in set(groups):
        rows = [i for i, x in enumerate(groups) if x == g]
        right = [i for i in rows if correct[i] == 1]
        wrong = [i for i in rows if correct[i] == 0]
        for i, j in itertools.product(right, wrong):
            pairs += 1
            wins += 1.0 if reward[i] > reward[j] else 0.5 if reward[i] == reward[j] else 0.0
    return (wins / pairs if pairs else float("nan")), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="*", default=["configs/default.yaml"])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--data", default=None, help="the problems to screen on (default: the validation split)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cfg = load_config(args.config)
    source = args.data or VALIDATION.get(cfg.data.eval, cfg.data.train)
    if source == cfg.data.eval:
        raise UserError(f"--data {source} is data.eval, the split results are reported on: a screen that chooses "
                        f"the reward must not read it. Hint: a validation split (builtin:arith-val), or data.train.")
    init_distributed()  # vLLM joins a process group of one
    model_path = prepare_model(cfg.model, is_builder=True)
    tokenizer, model_config = load_tokenizer_and_config(model_path, cfg.model.trust_remote_code)
    pool = load_problems(source, cfg.data.prompt_key, cfg.data.answer_key, cfg.data.prompt_template)
    problems = random.Random(cfg.train.seed).sample(pool, min(args.prompts, len(pool)))
    cfg = sized_for(cfg, problems, tokenizer, model_config)
    engine = RolloutEngine(model_path, max_model_len=cfg.rollout.max_model_len, seed=cfg.train.seed,
                           dtype=cfg.model.dtype, kv_cache_gib=cfg.rollout.kv_cache_gib,
                           trust_remote_code=cfg.model.trust_remote_code)
    episodes = sample_step(engine, tokenizer, cfg, problems, progress=True)
    lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[cfg.model.dtype],
                                              trust_remote_code=cfg.model.trust_remote_code)
    batch = collate(episodes, tokenizer.pad_token_id)
    stats = token_stats(ScoringModel(lm, cfg.learner.logprob_impl).eval(), batch.input_ids, batch.attention_mask,
                        cfg.train.micro_batch_size, lm.get_output_embeddings().out_features)
    c1, c2 = turn_correctness(episodes)
    has1, has2 = turn_has_answer(episodes, tokenizer)
    groups = [ep.group for ep in episodes]
    rows = []
    for cand in candidates():
        options = OmegaConf.merge(cfg.reward, {k: v for k, v in cand.items() if k != "kind"})
        r1, r2 = REWARDS[cand["kind"]].fn(RewardInputs(episodes, tokenizer, options, stats))
        # an unanswered turn scores what training gives it: the reward's lowest value
        r1, r2 = unanswered_lowest(reward_needs(cand["kind"], options), cand["kind"], options, tokenizer, [r1, r2],
                                   [has1, has2])
        (a1, n1), (a2, n2) = (ranking_accuracy(r1, c1, groups), ranking_accuracy(r2, c2, groups))
        rows.append({"reward": label(cand), **cand, "rank_acc_t1": a1, "pairs_t1": n1, "rank_acc_t2": a2,
                     "pairs_t2": n2, "mean_r1": r1.mean().item(), "mean_r2": r2.mean().item()})
    print(f"\nmodel {cfg.model.path}, {len(problems)} prompts x n={cfg.rollout.n}, seed {cfg.train.seed}; "
          f"Acc t1 {c1.mean():.3f}, t2 {c2.mean():.3f}")
    print("| reward | rank acc t1 | rank acc t2 | mean r1 | mean r2 |\n|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -(r["rank_acc_t1"] + r["rank_acc_t2"])):
        print(f"| {r['reward']} | {r['rank_acc_t1']:.3f} | {r['rank_acc_t2']:.3f} | {r['mean_r1']:.3f} | "
              f"{r['mean_r2']:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"data": source, "prompts": len(problems), "n": cfg.rollout.n, "seed": cfg.train.seed,
                                               "acc_t1": c1.mean().item(), "acc_t2": c2.mean().item(),
                                               "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)
