"""The policy as a pairwise judge of next steps (PSRLM, arXiv 2503.03746): pure rules, no model calls.

A question shows the problem, the steps so far and two candidate next steps labelled A and B; the policy
answers briefly and ends its answer with a label (builtin:tiny-arith-judge first writes the step as it would
compute it, then the label: "4+8+1=13. A"). Each candidate pair is asked in both orders, and only a verdict
that names the same step both times counts. Among a prefix's candidates, the one with the best net score
(consistent wins minus consistent losses) is the chosen step and the one with the worst the rejected step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The default judge question: each candidate is followed by its label, so a judge that writes the step it
# would take can end by copying that step's label. builtin:tiny-arith-judge was pre-trained on exactly this.
JUDGE_TEMPLATE = "{problem}\nSteps: {prefix}\n{a} {label_a}\n{b} {label_b}\nWhich next step is right?"
JUDGE_FIELDS = ("problem", "prefix", "a", "b", "label_a", "label_b")
JUDGE_LABELS = ("A", "B")
PUNCTUATION = ".:)!"  # what may follow a label ("A.", "B)")


def judge_prompt(template: str, problem: str, prefix: str, a: str, b: str,
                 labels: Sequence[str] = JUDGE_LABELS) -> str:
    """The judge question; step texts are shown without their surrounding spaces."""
    return template.format(problem=problem, prefix=prefix.strip(), a=a.strip(), b=b.strip(),
                           label_a=labels[0], label_b=labels[1])


def parse_verdict(text: str, labels: Sequence[str] = JUDGE_LABELS) -> int | None:
    """0 when the answer's last word is labels[0], 1 when labels[1] ("4+8+1=13. A" -> 0, "B." -> 1); no verdict
    when the last word is anything else, or when another word is a label too (an answer naming both)."""
    words = [w.strip(PUNCTUATION) for w in text.split()]
    if not words or words[-1] not in labels or any(w in labels for w in words[:-1]):
        return None
    return list(labels).index(words[-1])


def combine_orders(first: int | None, second: int | None) -> int | None:
    """`first` was asked with (A=x, B=y), `second` with (A=y, B=x). Returns 0 when both name x, 1 when both
    name y, None when they disagree (a position bias, not a judgement) or either is missing."""
    if first is None or second is None:
        return None
    return first if first != second else None  # naming x is A (0) first, then B (1) after the swap


def net_scores(candidates: int, verdicts: Mapping[tuple[int, int], int | None]) -> list[int]:
    """Per candidate, consistent wins minus consistent losses; `verdicts[(i, j)]` is 0 when i beat j, 1
    when j beat i, None when no consistent verdict."""
    scores = [0] * candidates
    for (i, j), winner in verdicts.items():
        if winner is not None:
            won, lost = (i, j) if winner == 0 else (j, i)
            scores[won] += 1
            scores[lost] -= 1
    return scores


def best_and_worst(scores: Sequence[int]) -> tuple[int, int] | None:
    """(best, worst) when exactly one candidate has the top score and exactly one the bottom score and
    they differ; a tie at either end, or no consistent verdict at all, gives no pair."""
    if not scores:
        return None
    top, bottom = max(scores), min(scores)
    if top == bottom or scores.count(top) > 1 or scores.count(bottom) > 1:
        return None
    return scores.index(top), scores.index(bottom)


def continuation(scores: Sequence[int], counts: Sequence[int]) -> int:
    """The candidate that extends the prefix: the best net score, then the most often sampled, then the
    first (so a chain goes on even when its judge gave no pair)."""
    return max(range(len(scores)), key=lambda i: (scores[i], counts[i], -i))
