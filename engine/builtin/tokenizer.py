"""A byte-level tokenizer with no merges (one token per character for ASCII) and a ChatML template.

It is built as a `Qwen2Tokenizer`, the class `AutoTokenizer` picks for Qwen2 models, so the saved
folder loads the same way in transformers and in vLLM.
"""

from __future__ import annotations

from transformers import Qwen2Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-character table used by the ByteLevel pre-tokenizer.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))

PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_char_tokenizer() -> Qwen2Tokenizer:
    """256 byte tokens (ids 0-255) then <|pad|>, <|im_start|>, <|im_end|> (ids 256-258)."""
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    for tok in (PAD, BOS, EOS):
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
