import hashlib

from transformers import AutoConfig, AutoTokenizer

from engine.builtin.tiny_model import TinyArithRecipe, build_tiny_arith, recipe_key
from engine.builtin.tokenizer import build_char_tokenizer


def _digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_and_cached(tmp_path):
    recipe = TinyArithRecipe(steps=3, batch_size=4)
    a = build_tiny_arith(recipe, cache_dir=tmp_path / "a", log=lambda *_: None)
    b = build_tiny_arith(recipe, cache_dir=tmp_path / "b", log=lambda *_: None)
    assert _digest(a) == _digest(b)
    logs = []
    assert build_tiny_arith(recipe, cache_dir=tmp_path / "a", log=logs.append) == a and not logs  # cache hit
    assert recipe_key(recipe) != recipe_key(TinyArithRecipe(steps=4, batch_size=4))
    config = AutoConfig.from_pretrained(a)
    assert config.architectures == ["Qwen2ForCausalLM"] and config.tie_word_embeddings
    assert config.hidden_size // config.num_attention_heads == 64  # vLLM's CPU attention needs head_dim 64
    assert not list((tmp_path / "a").glob(".building-*"))  # no half-written folder left behind


def test_saved_tokenizer_round_trips_through_autotokenizer(tmp_path):
    recipe = TinyArithRecipe(steps=1, batch_size=2)
    folder = build_tiny_arith(recipe, cache_dir=tmp_path, log=lambda *_: None)
    loaded, built = AutoTokenizer.from_pretrained(folder), build_char_tokenizer()
    text = "<|im_start|>user\n47+85=?<|im_end|>\n<|im_start|>assistant\n7+5=12, 4+8+1=13. Final Answer: 132"
    ids = built(text, add_special_tokens=False).input_ids
    assert loaded(text, add_special_tokens=False).input_ids == ids
    assert loaded.decode(ids) == text
    specials = 2 * len("<|im_start|>") + len("<|im_end|>")
    assert len(ids) == len(text) - specials + 3  # one token per character, each special token whole
    assert loaded.eos_token == "<|im_end|>" and loaded.chat_template == built.chat_template
