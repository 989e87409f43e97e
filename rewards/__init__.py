"""Reward functions (registry), answer extraction and gold verification."""

from rewards.registry import REWARDS, get_reward, register, turn_correctness

__all__ = ["REWARDS", "get_reward", "register", "turn_correctness"]
