"""Preference pairs from the engine's own rollouts (pairs.kind): RLSF's and EVOLVE's, selected by pure rules over
the rewards (selection.py, builders.py), and PSRLM's step pairs ranked by the policy's own judge (psrlm.py),
with the probes measured each round. No labels are read."""
