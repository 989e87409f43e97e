"""Rollout: the vLLM engine, K-turn episodes, the rollout service and workers, and the weights they load."""
