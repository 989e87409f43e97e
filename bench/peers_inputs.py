"""bench/peers.py's shared inputs: the model every row trains (a random one of a given shape, or the real
SmolLM2 with --real-model) and the prompts every row samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=16, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=32768, max_position_embeddings=1024, tie_word_embeddings=True)
# vLLM's CPU attention takes head_dim 64 or more: 2 heads of 64
TINY = {**MODEL, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT_WORDS = 24  # each prompt: this many random vocabulary words, one token each
REAL_MODEL = "builtin:smollm2-135m-instruct"
REAL_PROMPTS = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def model_dir(args, out: Path) -> Path:
    if getattr(args, "real_model", False):  # the engine's cached conversion of the GGUF (made on first use)
        from engine.models.paths import resolve_model_path

        return Path(resolve_model_path(REAL_MODEL, is_builder=True, log=lambda *a: None))
    return out / ("model-tiny" if args.tiny else "model")


def write_real_prompts(path: Path, count: int = 64) -> Path:
    """The first `count` GSM8K training questions, as they are (the benchmark's reward reads no answer)."""
    rows = [json.loads(line) for line in REAL_PROMPTS.read_text().splitlines()[:count]]
    path.write_text("".join(json.dumps({"prompt": r["question"], "answer": "0"}) + "\n" for r in rows))
    return path


def word_vocabulary(size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary of `size` tokens in Qwen2's own form (so `AutoTokenizer` and vLLM load it
    as a Qwen2Tokenizer, unchanged): 3 special tokens, the 256 byte symbols, then " a".." zzz" (every space +
    1-3 lowercase letters) and as many " aaaa"-style 4-letter words as fill `size`; each word is one token,
    built by merging its last letter onto its prefix (which is itself a token)."""
    from itertools import product

    from engine.builtin.tokenizer import _bytes_to_unicode

    space, letters = _bytes_to_unicode()[ord(" ")], "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_bytes_to_unicode().values()]
    merges = []
    for length in (1, 2, 3, 4):
        for word in product(letters, repeat=length):
            if len(tokens) >= size:
                break
            token = space + "".join(word)
            tokens.append(token)
            merges.append((token[:-1], token[-1]))
    return {t: i for i, t in enumerate(tokens)}, merges


def build_model(folder: Path, shape: dict, seed: int = 0) -> Path:
    """A random-weight Qwen2 with a 32k byte-level BPE tokenizer (any sampled id decodes) and a chat template."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    vocab, merges = word_vocabulary(shape["vocab_size"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    tmp = folder.with_name(folder.name + ".tmp")
    Qwen2ForCausalLM(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    reloaded = AutoTokenizer.from_pretrained(tmp)  # what TRL, vLLM and the engine will load
    if len(reloaded) != shape["vocab_size"] or len(reloaded(" abc zzz").input_ids) != 2:
        raise RuntimeError(f"the benchmark tokenizer did not survive AutoTokenizer ({type(reloaded).__name__})")
    os.replace(tmp, folder)
    return folder


def prompt_tokens(folder: Path, prompts: list[str]) -> list[int]:
    """Tokens of each prompt as every system sends it: through the chat template, with the assistant header."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]) for p in prompts]


def parameter_count(folder: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def write_prompts(path: Path, count: int = 64, words: int = PROMPT_WORDS) -> Path:
    """`count` prompts of `words` random 3-letter vocabulary words each (one token per word), with a dummy
    answer (the data format needs one; the benchmark's reward does not read it)."""
    import random
    from itertools import product

    rng = random.Random(0)
    vocabulary = ["".join(w) for w in product("abcdefghijklmnopqrstuvwxyz", repeat=3)]
    rows = [{"prompt": " ".join(rng.choice(vocabulary) for _ in range(words)), "answer": "0"} for _ in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
