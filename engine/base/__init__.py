"""Foundations every layer may use: user errors, JSON lines, the cache folder, shuffled batches, the collapse guard."""
