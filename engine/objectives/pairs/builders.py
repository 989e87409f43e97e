"""Pair builders (`pairs.kind`): preference pairs from the current policy's own rollouts, scored by the
registered reward `reward.kind` (label-free by default; reward.kind=gold when asked).

- `rlsf` (arXiv 2507.21931): CoT decoding (the top-`pairs.branches` first tokens, each continued greedily)
  gives a prompt's traces; their confidence (the reward, any metric) ranks them: i is preferred to j when
  c_i >= pairs.threshold and c_j < c_i, weighted by exp(c_i - c_j).
- `evolve` (arXiv 2502.05605): K-turn refinement chains (rollout.turns, rollout.n per prompt). A refinement
  pair sits in the refinement's context (prompt, earlier turns, correction request): the turn-k answer is
  preferred to the turn-(k-1) answer it refined when its reward is higher, and the other way round when
  lower, so the model learns both to fix and to keep. Direct pairs (pairs.direct) rank a prompt's turn-1
  samples by their rewards, in the prompt's context.

Each builder runs on every learner rank over its share of the round's prompts and returns that share's pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from engine.objectives.pairs.selection import confidence_pairs, ranked_pairs, refinement_pairs
from engine.update.algorithms import turn_means
from engine.update.batch import collate
from rewards import RewardInputs, turn_has_answer
from rewards.checked import checked_rewards
from rewards.registry import reward_needs, unanswered_lowest
from rollout.answer_probe import probe_answer_spans
from rollout.cot_decoding import cot_decode
from rollout.episodes import Episode, encode_prompt, rows_by_prompt
from rollout.service import sample_step


@dataclass
class PreferencePair:
    kind: str  # confidence (rlsf) | refine | direct (evolve) | step (psrlm)
    prompt: str  # the problem's prompt, for reading
    context_ids: list[int]  # what both responses answer: the chat-templated prompt (and earlier turns)
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_text: str
    rejected_text: str
    chosen_score: float  # the reward that ranked them
    rejected_score: float
    weight: float
    # dpo.reference=previous: [chosen, rejected] summed log-probs under the policy that built the pair, scored
    # before the round's first update (engine/objectives/dpo_rounds.py); saved with the pair for a resume
    reference_logps: list[float] | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RoundInputs:
    engine: object  # rollout.vllm_engine.RolloutEngine holding the round's policy
    tokenizer: object
    cfg: object
    learner: object  # scores token statistics for the reward
    problems: list  # this rank's share of the round's prompts
    round: int
    stats: dict = field(default_factory=dict)  # a builder's counts for the round ("prefix/name": n), summed over ranks


PairBuilder = Callable[[RoundInputs], list[PreferencePair]]
PAIR_BUILDERS: dict[str, PairBuilder] = {}


def register(kind: str):
    def add(fn: PairBuilder) -> PairBuilder:
        PAIR_BUILDERS[kind] = fn
        return fn
    return add


def turn_rewards(inputs: RoundInputs, episodes: list[Episode]) -> list[list[float]]:
    """reward.kind's reward per turn, [turn][episode]; a turn without a locatable answer gets the lowest."""
    stats = inputs.learner.score(collate(episodes, inputs.tokenizer.pad_token_id))
    reward = RewardInputs(episodes, inputs.tokenizer, inputs.cfg.reward, stats)
    spec = reward_needs(inputs.cfg.reward.kind, inputs.cfg.reward)
    rewards, skipped = checked_rewards(inputs.cfg.reward.kind, spec.fn, reward, inputs.round + 1,
                                       inputs.cfg.reward.nonfinite)
    lengths = [torch.tensor([len(e.turns[k].token_ids) for e in episodes]) for k in range(len(rewards))]
    rewards = [turn_means(r, n) if r.dim() == 2 else r for r, n in zip(rewards, lengths)]  # token-level: the mean
    # An unanswered turn scores the reward's lowest value (as in policy-gradient training); reward.nonfinite=skip:
    # a skipped episode's turns score NaN, and `informative` drops their pairs
    rewards = unanswered_lowest(spec, inputs.cfg.reward.kind, inputs.cfg.reward, inputs.tokenizer, rewards,
                                turn_has_answer(episodes, inputs.tokenizer))
    return [r.masked_fill(skipped, float("nan")).tolist() for r in rewards]


def _pair(kind, ep, context, chosen, rejected, scores, weight) -> PreferencePair:
    (ci, c), (ri, r) = chosen, rejected
    return PreferencePair(kind=kind, prompt=ep.problem.prompt, context_ids=list(context), chosen_ids=list(c.token_ids),
                          rejected_ids=list(r.token_ids), chosen_text=c.text, rejected_text=r.text,
                          chosen_score=scores[ci], rejected_score=scores[ri], weight=weight)


@register("rlsf")
def rlsf_pairs(inputs: RoundInputs) -> list[PreferencePair]:
    cfg, tokenizer = inputs.cfg, inputs.tokenizer
    prompts = [encode_prompt(tokenizer, p.prompt) for p in inputs.problems]
    traces = cot_decode(inputs.engine, tokenizer, prompts, cfg.pairs.branches, cfg.rollout.max_tokens)
    episodes = [Episode(problem, g, [ids], [trace])
                for g, (problem, ids, branch) in enumerate(zip(inputs.problems, prompts, traces)) for trace in branch]
    probe_answer_spans(inputs.engine, tokenizer, episodes, cfg.reward.probe_prompt, cfg.reward.probe_tokens,
                       cfg.reward.probe_min_tokens)
    (confidence,) = turn_rewards(inputs, episodes)
    return confidence_ranked(episodes, confidence, cfg.pairs.threshold)


def confidence_ranked(episodes: list[Episode], confidence: list[float], threshold: float) -> list[PreferencePair]:
    """RLSF's pairs among the single-turn traces of each prompt (episodes sharing a group)."""
    out = []
    for rows in rows_by_prompt(episodes):
        scores = [confidence[r] for r in rows]
        for p in confidence_pairs(scores, threshold):
            a, b = episodes[rows[p.chosen]], episodes[rows[p.rejected]]
            out.append(_pair("confidence", a, a.prompt_ids, (p.chosen, a.turns[0]), (p.rejected, b.turns[0]),
                             scores, p.weight))
    return out


@register("evolve")
def evolve_pairs(inputs: RoundInputs) -> list[PreferencePair]:
    episodes = sample_step(inputs.engine, inputs.tokenizer, inputs.cfg, inputs.problems)
    return refinement_and_direct(episodes, turn_rewards(inputs, episodes), inputs.cfg.pairs.direct)


def refinement_and_direct(episodes: list[Episode], rewards: list[list[float]], direct: bool) -> list[PreferencePair]:
    """EVOLVE's pairs from K-turn chains with per-turn rewards [turn][episode]."""
    out = []
    for row, ep in enumerate(episodes):
        scores = [r[row] for r in rewards]
        for p in refinement_pairs(scores):  # the later turn's context: prompt, earlier turns, the request
            context = ep.turn_prompt_ids[max(p.chosen, p.rejected)]
            out.append(_pair("refine", ep, context, (p.chosen, ep.turns[p.chosen]), (p.rejected, ep.turns[p.rejected]),
                             scores, p.weight))
    if direct:
        for rows in rows_by_prompt(episodes):
            scores = [rewards[0][r] for r in rows]
            for p in ranked_pairs(scores):
                a, b = episodes[rows[p.chosen]], episodes[rows[p.rejected]]
                out.append(_pair("direct", a, a.prompt_ids, (p.chosen, a.turns[0]), (p.rejected, b.turns[0]),
                                 scores, p.weight))
    return out


def informative(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """Drops pairs whose two responses are the same tokens (their DPO gradient is zero) and pairs with a
    skipped (non-finite) score."""
    return [p for p in pairs if p.chosen_ids != p.rejected_ids
            and math.isfinite(p.chosen_score) and math.isfinite(p.rejected_score)]
