"""Step-level truth of the built-in task: where a slipped worked answer's steps differ from the right one's.
Each difference is a held-out judge question with a known answer (the right step after the right prefix)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.tasks.arith import ArithProblem, worked_answer
from engine.tasks.steps import split_text

SLIPS = ("drop_carry", "ones", "tens")


@dataclass(frozen=True)
class KnownStepPair:
    problem: str  # the prompt, e.g. "47+85=?"
    prefix: str  # the right steps before this one, as text
    right: str
    wrong: str


def slipped_step_pairs(problem: ArithProblem, slip: str, delimiter: str) -> list[KnownStepPair]:
    """One pair per step where the `slip` answer differs from the right answer, both after the right prefix:
    for 47+85 and "ones", steps 1 ("7+5=12," / "7+5=13,") and 3 (" Final Answer: 132" / " ... 133")."""
    right, wrong = split_text(worked_answer(problem), delimiter), split_text(worked_answer(problem, slip), delimiter)
    if len(right) != len(wrong):  # a slip never changes the number of steps of this task's answers
        return []
    return [KnownStepPair(problem.prompt, "".join(right[:k]), right[k], wrong[k])
            for k in range(len(right)) if right[k] != wrong[k]]


def known_step_pairs(problems: list[ArithProblem], delimiter: str) -> list[KnownStepPair]:
    """Every slip's differing steps, over `problems`, in a fixed order."""
    return [pair for problem in problems for slip in SLIPS for pair in slipped_step_pairs(problem, slip, delimiter)]
