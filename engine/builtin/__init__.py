"""The built-in base model: its character tokenizer and its pre-training on the built-in task."""
