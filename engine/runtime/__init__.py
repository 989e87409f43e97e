"""The processes and their lifecycle: the process group, rollout placement, checkpoints, stop signals, the console filter."""
