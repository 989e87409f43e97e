"""The maths of a SCoRe update: advantage estimators, KL estimators, per-turn returns, the loss.

Pure functions on tensors; each is tested against hand-computed numbers in tests/test_algorithms.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

GRPO_EPS = 1e-6


# --- advantage estimators: rewards [groups, n] -> advantages [groups, n] -------------------------

def reinforce_advantages(rewards: Tensor) -> Tensor:
    """Plain REINFORCE: the return itself, no baseline."""
    return rewards.clone()


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out: subtract the mean of the other n-1 samples of the same prompt."""
    n = rewards.shape[-1]
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (n - 1)
    return rewards - others_mean


def grpo_advantages(rewards: Tensor) -> Tensor:
    """GRPO: centre on the group mean and divide by the group's (unbiased) standard deviation."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    return (rewards - mean) / (std + GRPO_EPS)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "reinforce": reinforce_advantages,
    "rloo": rloo_advantages,
    "grpo": grpo_advantages,
}


# --- KL estimators: per-token estimates of KL(policy || reference) from sampled tokens -----------

def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Schulman's k1 (log-ratio), k2 (half squared log-ratio) and k3 (ratio - 1 - log-ratio).

    All three estimate KL(pi || ref) in value. As a loss on on-policy samples only k2's gradient is the
    gradient of KL(pi || ref); k1's is zero in expectation and k3's is that of KL(ref || pi).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


# --- SCoRe returns and weights per stage, for episodes of K turns ----------------------------------

@dataclass(frozen=True)
class TurnWeights:
    pg: tuple[float, ...]  # per turn, the weight of its policy-gradient term (0: the turn gets none)
    kl: tuple[float, ...]  # per turn, the weight of its KL term


def turn_returns(rewards: Sequence[Tensor], stage: int, alpha: float, turn1_credit: str = "own") -> list[Tensor]:
    """Per-turn returns of episodes of K = len(rewards) turns, each [episodes]. Stage I rewards the last turn
    only; Stage II rewards every turn, turn k >= 2 with the correction bonus: r_k + alpha * (r_k - r_(k-1)).
    With `own` credit each turn gets its own return; with `trajectory` credit, as REINFORCE on the whole
    episode would, each turn gets its own plus every later turn's (for K = 2: r2 then r1 + r2 + alpha *
    (r2 - r1) for turn 1, which weighs r1 by 1 - alpha: with alpha > 1 it pays turn 1 for being wrong
    before a fix)."""
    if stage == 1:
        returns = [torch.zeros_like(r) for r in rewards[:-1]] + [rewards[-1].clone()]
    elif stage == 2:
        returns = [rewards[0].clone()] + [now + alpha * (now - before) for before, now in zip(rewards, rewards[1:])]
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if turn1_credit == "own":
        return returns
    if turn1_credit != "trajectory":
        raise ValueError(f"turn1_credit must be 'own' or 'trajectory', got {turn1_credit!r}")
    to_go = [returns[-1]]  # returns-to-go, from the last turn back
    for ret in reversed(returns[:-1]):
        to_go.insert(0, ret + to_go[0])
    return to_go


def turn_weights(stage: int, beta1: float, beta2: float, turns: int = 2, turn1_credit: str = "own") -> TurnWeights:
    """Stage I holds every turn before the last near the base model with the strong beta2, and gives them no
    policy-gradient term unless credited with the trajectory's return; Stage II uses beta1 on every turn."""
    if stage == 1:
        earlier = turns - 1
        return TurnWeights(pg=(float(turn1_credit == "trajectory"),) * earlier + (1.0,),
                           kl=(beta2,) * earlier + (beta1,))
    return TurnWeights(pg=(1.0,) * turns, kl=(beta1,) * turns)


def stage_at(step: int, stage1_steps: int) -> int:
    """Steps are 0-based; the first `stage1_steps` steps are Stage I."""
    return 1 if step < stage1_steps else 2


# --- the loss ------------------------------------------------------------------------------------

def token_coefficients(turn_masks: Tensor, advantages: Sequence[Tensor], weights: TurnWeights,
                       turn_tokens: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-token weights (policy-gradient, KL) of the loss, [B, T] from masks [B, K, T] and per-turn
    advantages: [B] (one per episode) or [B, T] (one per token, already placed in the batch's positions).

    Each turn's terms are divided by that turn's token count across the whole batch, so the loss summed
    over micro-batches is a token mean per turn. Padding and prompt tokens get weight 0."""
    pg = kl = 0.0
    for k, (advantage, tokens) in enumerate(zip(advantages, turn_tokens)):
        per = turn_masks[:, k] / max(tokens, 1.0)
        per_token = advantage.unsqueeze(-1) if advantage.dim() == 1 else advantage
        term_pg, term_kl = weights.pg[k] * per_token * per, weights.kl[k] * per
        pg, kl = (term_pg, term_kl) if k == 0 else (pg + term_pg, kl + term_kl)
    return pg, kl


def token_loss(logprobs: Tensor, ref_logprobs: Tensor, pg_coef: Tensor, kl_coef: Tensor, kl_estimator: str) -> Tensor:
    """Per-token loss -c_pg * pi/pi_detached + c_kl * KL estimate. The ratio's value is 1 and its
    gradient is grad log pi (one on-policy update per batch), so the policy-gradient term is
    -A * grad log pi. Elementwise, so the fused head can take its gradient chunk by chunk."""
    ratio = torch.exp(logprobs - logprobs.detach())
    return -pg_coef * ratio + kl_coef * kl_per_token(logprobs, ref_logprobs, kl_estimator)


# --- token-level rewards: a turn's reward given per sampled token, [B, L] (L: its longest response) ------

def turn_means(token_rewards: Tensor, lengths: Tensor) -> Tensor:
    """[B] mean reward over each response's own tokens (0 for an empty response): the turn's scalar reward,
    which the SCoRe returns, the logs and the metrics use."""
    valid = positions_within(lengths, token_rewards.shape[1])
    return (token_rewards * valid).sum(-1) / lengths.clamp(min=1)


def positions_within(lengths: Tensor, width: int) -> Tensor:
    """[B, width] float mask, 1 at positions before each row's length."""
    return (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(-1)).float()


def own_reward_coefficients(stage: int, alpha: float, turns: int, turn1_credit: str = "own") -> list[float]:
    """Per turn k, dR_k / dr_k: how much turn k's return moves with its own reward. turn_returns is linear, so
    it is the return of turn k when r_k = 1 and every other reward is 0 (Stage II, own credit: 1 for turn 1,
    1 + alpha after; Stage I: 1 for the last turn, 0 before it)."""
    coefficients = []
    for k in range(turns):
        unit = [torch.tensor([float(j == k)]) for j in range(turns)]
        coefficients.append(turn_returns(unit, stage, alpha, turn1_credit)[k].item())
    return coefficients


def token_advantages(advantages: Tensor, returns: Tensor, token_rewards: Tensor, lengths: Tensor, coefficient: float,
                     n: int, baseline: str) -> Tensor:
    """Per-token advantages [B, L] of one turn with token-level rewards, groups of n consecutive rows.

    A token's return is its turn's return with the turn's mean reward replaced by the token's own reward:
    R_t = R + c * (r_t - mean_t r), c = own_reward_coefficients (so the correction bonus still applies).
    - turn_mean: A_t = A + c * (r_t - mean_t r), A the turn's advantage from algo.advantage (for rloo: R_t minus
      the other samples' mean turn return). The deviations sum to 0 over a response, so the turn-level signal
      is unchanged and the token terms only move credit inside the response, onto the tokens that were wrong.
      The token term stays in reward units even with grpo (whose A is in units of the group's std): a group
      whose samples all earn one return has std 0, and dividing would blow up the token credit exactly there.
    - position: A_t = R_t - the mean of the other samples' R_t at the same position (leave-one-out; where no
      other sample is that long, their mean turn return). Ignores algo.advantage."""
    width = token_rewards.shape[1]
    valid = positions_within(lengths, width)
    deviation = (token_rewards - turn_means(token_rewards, lengths).unsqueeze(-1)) * valid
    if baseline == "turn_mean":
        return (advantages.unsqueeze(-1) + coefficient * deviation) * valid
    if baseline != "position":
        raise ValueError(f"token baseline must be 'turn_mean' or 'position', got {baseline!r}")
    token_returns = (returns.unsqueeze(-1) + coefficient * deviation) * valid
    grouped, counts = token_returns.view(-1, n, width), valid.view(-1, n, width)
    others_sum = grouped.sum(1, keepdim=True) - grouped
    others = counts.sum(1, keepdim=True) - counts
    turn_baseline = (returns.view(-1, n).sum(-1, keepdim=True) - returns.view(-1, n)) / max(n - 1, 1)
    baseline_at = torch.where(others > 0, others_sum / others.clamp(min=1), turn_baseline.unsqueeze(-1))
    return (token_returns - baseline_at.reshape(-1, width)) * valid


def place_turn_tokens(values: Tensor, turn_mask: Tensor) -> Tensor:
    """[B, L] values of a turn's tokens (position j: its j-th sampled token) -> [B, T] at the turn's positions
    in the batch (turn_mask [B, T]: 1 on them, contiguous), 0 elsewhere."""
    if values.shape[1] == 0:
        return torch.zeros_like(turn_mask)
    index = (turn_mask.cumsum(-1) - 1).clamp(min=0, max=values.shape[1] - 1).long()
    return values.gather(1, index) * turn_mask


def fill_skipped(rewards: Tensor, skipped: Tensor, n: int) -> Tensor:
    """Rewards [B] with each skipped episode's value replaced by the mean of the kept ones in its group
    of n (0 if none is kept), so a skipped episode moves no other episode's baseline much. The caller
    also zeroes the skipped episodes' advantages."""
    kept = (~skipped).view(-1, n)
    grouped = torch.where(kept, rewards.view(-1, n), torch.zeros(()))
    mean = grouped.sum(-1, keepdim=True) / kept.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(kept, grouped, mean).flatten()


def truncated_is_weights(logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """min(pi(a) / pi_rollout(a), cap) per token: corrects the policy gradient of a token sampled by
    older weights (asynchronous rollouts); the cap bounds the variance (truncated IS, as in IMPALA's rho-bar)."""
    return torch.exp(logprobs - rollout_logprobs).clamp(max=cap)
