"""Reward functions: the registry, the label-free self-rewards, the judge and the seq2seq reward model."""

from rewards import self_rewards  # noqa: F401  (registers the self-rewards)
from rewards.registry import REWARDS, RewardInputs, get_reward, register, turn_correctness, turn_has_answer

__all__ = ["REWARDS", "RewardInputs", "get_reward", "register", "turn_correctness", "turn_has_answer"]
