"""The training run around an objective: its set-up, inputs, metrics, evaluation, checkpoints and end."""
