"""The sequence-to-sequence reward model's trainer parts (`python -m engine.train_rm`, engine/train_rm.py):
its pairs (pairs.py: JSONL or a pair builder, builder.py), its rewrite examples (examples.py), one update
(update.py) and the held-out rewrite check (heldout.py). The reward that uses it is rewards/seq2seq.py."""
