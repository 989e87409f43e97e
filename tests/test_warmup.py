"""model.warmup (engine/models/warmup.py): a cached supervised warm-up stage on the built-in task's worked answers, on a
tiny random Qwen2 with the project's char tokenizer (ChatML), three steps."""

import json
import random
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from engine.base.errors import UserError
from engine.builtin.tiny_model import TinyArithRecipe, recipe_key, require_chatml
from engine.builtin.tokenizer import build_char_tokenizer
from engine.config.schema import ModelConfig, WarmupSettings
from engine.models.paths import prepare_model
from engine.models.warmup import base_identity, warmed_up_folder

SETTINGS = WarmupSettings(steps=3, lr=1e-2, batch_size=8)  # a random model: a large lr moves it in 3 steps
# recipe_key(TinyArithRecipe()) and builtin:tiny-arith-judge's: at 5a6a5d0 (before pretrain() was shared) they
# were 8c562f522250 and 868928b92a1c; BUILD_VERSION 2 (512 positions, the same weights) moved them to these
BUILTIN_KEYS = {"tiny-arith": "332faed753c8", "tiny-arith-judge": "3be1278041f9"}


def quiet(*_):
    pass


def save_random_qwen2(folder: Path, chat_template: str | None = None) -> Path:
    from transformers import Qwen2ForCausalLM

    from engine.builtin.tiny_model import model_config

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    config = model_config(TinyArithRecipe(hidden_size=64, intermediate_size=128, num_layers=1), vocab_size=320,
                          eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    return save_random_qwen2(tmp_path_factory.mktemp("base") / "random-qwen2")


@pytest.fixture(scope="module")
def warmed(base_folder, tmp_path_factory):
    """The warm-up built once: (folder, cache dir, the lines its build logged)."""
    cache = tmp_path_factory.mktemp("cache")
    logs: list[str] = []
    folder = warmed_up_folder(base_folder, SETTINGS, cache, is_builder=True, log=logs.append)
    return folder, cache, logs


def test_builds_once_with_progress_then_reuses(base_folder, warmed):
    folder, cache, logs = warmed
    assert folder.parent == cache and folder.name.startswith("warmup-")
    steps = [line for line in logs if "pretrain step" in line]
    assert [line.split()[3] for line in steps] == ["1/3", "3/3"] and all("loss" in line for line in steps), logs
    assert all(line.endswith("s)") for line in steps), steps  # elapsed time on every progress line
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    record = json.loads((folder / "warmup.json").read_text())
    assert record["base_folder"] == str(base_folder) and record["settings"]["steps"] == 3
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert warmed_up_folder(base_folder, SETTINGS, cache, is_builder=True, log=again.append) == folder
    assert warmed_up_folder(base_folder, SETTINGS, cache, is_builder=False, log=again.append) == folder
    assert again == [] and (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left


def train_loss(folder: Path) -> float:
    """Mean loss on four fresh batches of the warm-up's own episodes (train split, another seed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.builtin.tiny_model import _batch
    from engine.tasks.arith import arith_problems

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rng, recipe = random.Random(123), TinyArithRecipe(batch_size=8, p_slip_t1=0.0, p_break_t2=0.0)
    with torch.no_grad():
        return sum(model(input_ids=ids, labels=labels).loss.item()
                   for ids, labels in (_batch(tokenizer, arith_problems("pretrain"), rng, recipe) for _ in range(4))) / 4


def test_weights_move_and_train_loss_falls(base_folder, warmed):
    from safetensors.torch import load_file

    folder = warmed[0]
    before, after = load_file(base_folder / "model.safetensors"), load_file(folder / "model.safetensors")
    assert before.keys() == after.keys() and all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert train_loss(folder) < train_loss(base_folder) - 0.5


def test_other_settings_another_folder_never_from_eval(base_folder, warmed, tmp_path, monkeypatch):
    import engine.builtin.tiny_model
    import engine.tasks.arith

    asked: list[str] = []
    real = engine.tasks.arith.arith_problems

    def recording(split):
        asked.append(split)
        return real(split)

    monkeypatch.setattr(engine.tasks.arith, "arith_problems", recording)
    monkeypatch.setattr(engine.builtin.tiny_model, "arith_problems", recording)
    settings = {**OmegaConf.to_container(OmegaConf.structured(SETTINGS)), "seed": 1, "p_slip_t1": 0.5}
    other = warmed_up_folder(base_folder, settings, warmed[1], is_builder=True, log=quiet)
    assert other != warmed[0] and other.parent == warmed[0].parent
    # the pretrain split: train and validation, as the warm-up was first built (before validation existed); never eval
    assert asked and set(asked) == {"pretrain"}


def test_non_builder_without_cache_raises(base_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="builder rank"):
        warmed_up_folder(base_folder, SETTINGS, tmp_path, is_builder=False, log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_prepare_model(base_folder, warmed, monkeypatch):
    monkeypatch.setenv("SELFCORRECT_CACHE", str(warmed[1]))
    plain = OmegaConf.structured(ModelConfig(path=str(base_folder)))
    assert prepare_model(plain, is_builder=False, log=quiet) == str(base_folder)  # steps=0: the base as it is
    with_warmup = OmegaConf.structured(ModelConfig(path=str(base_folder), warmup=SETTINGS))
    assert prepare_model(with_warmup, is_builder=False, log=quiet) == str(warmed[0])
    bad = OmegaConf.structured(ModelConfig(path=str(base_folder), warmup=WarmupSettings(steps=3, p_fix_t2=1.5)))
    with pytest.raises(UserError, match=r"model\.warmup\.p_fix_t2=1\.5"):
        prepare_model(bad, is_builder=True, log=quiet)


def test_non_chatml_tokenizer_is_refused(tmp_path):
    template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    folder = save_random_qwen2(tmp_path / "not-chatml", chat_template=template)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="ChatML.*Hint: .*model.warmup.steps=0"):
        warmed_up_folder(folder, SETTINGS, cache, is_builder=True, log=quiet)
    assert not cache.exists() or not list(cache.iterdir())
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="ChatML"):
        require_chatml(tokenizer)
    require_chatml(build_char_tokenizer())  # the project's own ChatML passes


def test_cache_key_follows_content(base_folder, tmp_path):
    assert base_identity(tmp_path / "gguf-SmolLM2-135M-Instruct.Q4_1-b179c9523d0e-v1") == {
        "name": "gguf-SmolLM2-135M-Instruct.Q4_1-b179c9523d0e-v1"}  # named by content: no file is read
    identity = base_identity(base_folder)
    assert set(identity["sha256_12"]) == {"config.json", "model.safetensors"}


def test_builtin_tiny_model_keys_unchanged():
    from engine.models.paths import BUILTIN_MODELS

    assert recipe_key(TinyArithRecipe()) == BUILTIN_KEYS["tiny-arith"]
    assert recipe_key(TinyArithRecipe(**BUILTIN_MODELS["builtin:tiny-arith-judge"])) == BUILTIN_KEYS["tiny-arith-judge"]
