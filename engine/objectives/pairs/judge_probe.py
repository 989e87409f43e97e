"""How well the policy judges steps whose truth is known: held-out step pairs of the built-in task (right step
vs a slipped one after the right prefix, from builtin:arith-eval's problems), each asked in both orders.

accuracy = pairs whose consistent verdict names the right step / pairs asked; consistency = pairs with a
consistent verdict / pairs asked; parsed = pairs whose two answers were both a label / pairs asked; said_a =
answers naming the first label / parsed answers (0.5 without a position bias).
The truth comes from the built-in task's worked answers, so the probe measures that task whatever data.eval is.
"""

from __future__ import annotations

import random

from engine.objectives.pairs.probes import ProbeInputs
from engine.runtime.distributed import all_ranks_sum
from engine.tasks.arith import arith_problems
from engine.tasks.arith_steps import KnownStepPair, known_step_pairs
from rewards.judging import StepQuestion, ask_judge

PROBE_SEED = 0  # every round and every run measures the same pairs


def held_out_step_pairs(count: int, delimiter: str) -> list[KnownStepPair]:
    pairs = known_step_pairs(arith_problems("eval"), delimiter)
    return random.Random(PROBE_SEED).sample(pairs, min(count, len(pairs)))


def judge_counts(first: list[int | None], second: list[int | None], combined: list[int | None]) -> dict[str, float]:
    """Counts over questions whose x is the right step (combined 0 names it). said_a: answers naming the
    first label, over both orders: half of the parsed answers when the judge has no position bias."""
    answers = [v for v in first + second if v is not None]
    return {"asked": float(len(combined)), "right": float(sum(c == 0 for c in combined)),
            "consistent": float(sum(c is not None for c in combined)),
            "parsed": float(sum(f is not None and s is not None for f, s in zip(first, second))),
            "answers": float(len(answers)), "said_a": float(sum(v == 0 for v in answers))}


def judge_rates(counts: dict[str, float]) -> dict[str, float]:
    asked = max(counts["asked"], 1.0)
    return {"accuracy": counts["right"] / asked, "consistency": counts["consistent"] / asked,
            "parsed": counts["parsed"] / asked, "said_a": counts["said_a"] / max(counts["answers"], 1.0),
            "pairs": counts["asked"]}


def judge_accuracy(inputs: ProbeInputs) -> dict[str, float] | None:
    """judge.eval_pairs held-out pairs (0: no probe), shared over the ranks, counts summed."""
    cfg = inputs.cfg
    if cfg.judge.eval_pairs == 0:
        return None
    mine = held_out_step_pairs(cfg.judge.eval_pairs, cfg.steps.delimiter)[inputs.rank::inputs.world]
    questions = [StepQuestion(p.problem, p.prefix, p.right, p.wrong) for p in mine]
    verdicts = ask_judge(inputs.engine, inputs.tokenizer, cfg.judge, questions)
    counts = judge_counts(verdicts.first, verdicts.second, verdicts.combined)
    return judge_rates(dict(zip(counts, all_ranks_sum(list(counts.values())))))
