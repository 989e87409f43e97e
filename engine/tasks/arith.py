"""The built-in synthetic task: two-digit addition with a fixed answer format.

Problems are split into disjoint train / validation / eval sets by a fixed hash of the operands, so
`builtin:arith`, `builtin:arith-val` and `builtin:arith-eval` never share a problem. Validation is for
choosing settings (reward screens, sweeps, the guard); eval reports the chosen recipe. The built-in base
model is pre-trained on the `pretrain` split, train and validation together (it predates validation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ANSWER_PREFIX = "Final Answer: "
CORRECTION_INSTRUCTION = "Check your answer and fix any mistake."
OPERAND_RANGE = (10, 99)
EVAL_EVERY = 8  # one problem in eight is held out for evaluation, and another one in eight for validation
SPLITS = ("train", "val", "eval", "pretrain")


@dataclass(frozen=True)
class ArithProblem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}=?"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def split_of(a: int, b: int) -> str:
    # A fixed multiplicative hash, so the split never depends on Python's salted hash(). Mod 8 it is
    # (b - a) mod 8, so a bucket fixes the ones digits' gap: buckets 0, 2, 4, 6 carry in the ones column half
    # the time, the odd ones 40%. Validation takes bucket 2, so it is as hard as eval (bucket 0).
    bucket = (a * 7919 + b * 104729) % EVAL_EVERY
    return "eval" if bucket == 0 else "val" if bucket == 2 else "train"


def arith_problems(split: str) -> list[ArithProblem]:
    """All problems of `split` (train, val, eval, or pretrain: train and val), in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    wanted = ("train", "val") if split == "pretrain" else (split,)
    lo, hi = OPERAND_RANGE
    return [ArithProblem(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1) if split_of(a, b) in wanted]


def worked_answer(problem: ArithProblem, slip: str | None = None) -> str:
    """Column addition, ones first, then the final answer, e.g. "7+5=12, 4+8+1=13. Final Answer: 132".

    `slip` injects one mistake and carries it through consistently: "drop_carry" forgets the carry,
    "ones" or "tens" gets that column's sum off by one.
    """
    a1, a0, b1, b0 = problem.a // 10, problem.a % 10, problem.b // 10, problem.b % 10
    ones = a0 + b0 + (1 if slip == "ones" else 0)
    carry = 0 if slip == "drop_carry" else ones // 10
    tens = a1 + b1 + carry + (1 if slip == "tens" else 0)
    return f"{a0}+{b0}={ones}, {a1}+{b1}+{carry}={tens}. {ANSWER_PREFIX}{tens * 10 + ones % 10}"


def sample_slip(problem: ArithProblem, rng: random.Random) -> str:
    """A plausible mistake: mostly a dropped carry where there is one, else a column off by one."""
    if (problem.a % 10) + (problem.b % 10) >= 10 and rng.random() < 0.6:
        return "drop_carry"
    return rng.choice(["ones", "tens"])
