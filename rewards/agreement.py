"""Rewards from agreement among a prompt's samples: no gold labels.

- `agreement`: the share of the prompt's samples of a turn whose answer is equivalent to this turn's
  answer, i.e. the Monte-Carlo estimate of p(answer | prompt) (a soft majority vote). With
  `reward.vote_weight=confidence` each sample's vote weighs its own confidence (`reward.vote_metric` over
  `reward.scope`, reduced by `reward.reduction`), so a sample the model itself doubts (a slip in the
  working is a low-probability token) barely counts: the weighted share of the votes.
- `majority` (TTRL-style): 1 when the turn's answer is the strict plurality among the prompt's samples.

Answers are compared as equivalence classes (engine.tasks.answer.answers_match): plain numbers by value ("12",
"12.0" and "\\boxed{12}" agree), anything else by math-verify ("\\frac{1}{2}" and "0.5" vote together).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from engine.tasks.answer import answers_match, extract_answer
from rewards.registry import RewardInputs, register
from rewards.token_confidence import turn_confidence
from rollout.episodes import rows_by_prompt


def answer_classes(answers: Sequence[str | None]) -> list[int | None]:
    """An equivalence-class id per answer (None for no answer): each answer joins the first earlier class
    whose first member it matches."""
    representatives: list[str] = []
    classes: list[int | None] = []
    for answer in answers:
        if answer is None:
            classes.append(None)
            continue
        found = next((i for i, rep in enumerate(representatives) if answers_match(answer, rep)), None)
        if found is None:
            representatives.append(answer)
            found = len(representatives) - 1
        classes.append(found)
    return classes


def agreement_shares(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> list[float]:
    """Per answer, the (weighted) share of all samples' votes, answered or not, that go to answers equivalent
    to it; 0 for no answer, and 0 for all when every weight is 0."""
    weights = [1.0] * len(answers) if weights is None else [float(w) for w in weights]
    classes = answer_classes(answers)
    votes: dict[int, float] = defaultdict(float)
    for c, w in zip(classes, weights):
        if c is not None:
            votes[c] += w
    total = sum(weights)
    return [0.0 if c is None or total <= 0 else votes[c] / total for c in classes]


def majority_votes(answers: Sequence[str | None]) -> list[float]:
    """1.0 for answers equivalent to the strict plurality of the non-empty answers; a tie has no majority."""
    classes = answer_classes(answers)
    counts = Counter(c for c in classes if c is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return [0.0] * len(answers)
    return [float(c == counts[0][0]) for c in classes]


def per_group(inputs: RewardInputs, score, weights: Sequence[Tensor] | None = None) -> list[Tensor]:
    """`score(answers of one prompt's samples of one turn[, their weights]) -> values`, per prompt and turn."""
    out = torch.zeros(len(inputs.episodes[0].turns), len(inputs.episodes))
    for rows in rows_by_prompt(inputs.episodes):
        for turn in range(out.shape[0]):
            answers = [extract_answer(inputs.episodes[r].turns[turn].text) for r in rows]
            values = score(answers) if weights is None else score(answers, weights[turn][rows].tolist())
            out[turn, rows] = torch.tensor(values)
    return list(out)


def vote_weights(inputs: RewardInputs) -> list[Tensor] | None:
    """Per-turn vote weights: None (one vote each) or each sample's own confidence, answered or not, so the
    total is over all the prompt's samples as with one vote each (with scope=answer an unanswered sample,
    having no answer tokens, weighs 0)."""
    opts = inputs.options
    if opts.get("vote_weight", "uniform") == "uniform":
        return None
    return turn_confidence(inputs, opts.vote_metric, opts.scope, opts.reduction, require_answer=False)


def agreement_reads(options) -> tuple[str, ...]:
    """vote_weight; with vote_weight=confidence, what each vote's confidence is made of."""
    confident = options.get("vote_weight", "uniform") == "confidence"
    return ("vote_weight", *(("vote_metric", "scope", "reduction") if confident else ()))


# the token statistics weigh votes (reward.vote_weight)
@register("agreement", needs_token_stats=True, bounds=(0.0, 1.0), reads=agreement_reads)
def agreement_reward(inputs: RewardInputs) -> list[Tensor]:
    return per_group(inputs, agreement_shares, vote_weights(inputs))


@register("majority", bounds=(0.0, 1.0), reads=())
def majority_reward(inputs: RewardInputs) -> list[Tensor]:
    return per_group(inputs, majority_votes)
