"""Model folders: where a model.path resolves to, GGUF and Hub sources, warm-up fine-tuning, LoRA adapters."""
