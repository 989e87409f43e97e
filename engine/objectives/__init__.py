"""Training objectives beside SCoRe's policy gradient (engine/algorithms.py): pure functions on tensors."""
