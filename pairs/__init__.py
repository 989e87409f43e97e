"""Preference pairs from the engine's own rollouts and rewards (RLSF, EVOLVE): which response is preferred
to which, and by what weight. Pure selection rules over scores; no labels are read."""
