"""Rollout: the vLLM engine, two-turn episodes and prompt data."""
