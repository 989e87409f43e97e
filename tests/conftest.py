import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextmanager
def rendezvous_restored():
    """A process group started inside (init_distributed sets MASTER_PORT and friends for a world of one)
    must not hand that rendezvous to the processes later tests start: the variables are put back after."""
    from engine.runtime.distributed import RENDEZVOUS_VARS

    before = {k: os.environ.get(k) for k in RENDEZVOUS_VARS}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _no_rendezvous_leak():
    with rendezvous_restored():
        yield


def random_policy_and_reference(model_dir: Path):
    """A random tiny Qwen2 (the project's tiny-model config, smaller; seed 0) saved to `model_dir`, loaded
    as the policy, and a reference moved away from it: at policy == reference the KL gradient and the DPO
    margin would be zero and go untested."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    from engine.builtin.tiny_model import TinyArithRecipe, model_config

    torch.manual_seed(0)
    config = model_config(TinyArithRecipe(hidden_size=64, intermediate_size=128, num_layers=2), vocab_size=32,
                          eos_id=1, pad_id=0, bos_id=2)
    config.initializer_range = 0.1  # larger than HF's 0.02, so the log-probs are not all near-uniform
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).requires_grad_(False)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A briefly pre-trained builtin:tiny-arith (tied embeddings), built in about 15 s: 200 steps, enough that
    some answers carry the "Final Answer:" format, so the default (agreement) reward is not all zeros and the
    tests' updates move the weights (at 40 steps no answer could be extracted)."""
    from engine.builtin.tiny_model import TinyArithRecipe, build_tiny_arith

    recipe = TinyArithRecipe(steps=200, batch_size=16)
    return build_tiny_arith(recipe, cache_dir=tmp_path_factory.mktemp("models"), log=lambda *a: None)


def run_script(args: list[str], timeout: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; on failure show its output in the test report."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def assert_weights_synced(history: list[dict]) -> None:
    """vLLM's log-probs matched the learner's at every step, and by the last step the policy had moved
    far enough from the base model that a sync doing nothing would have failed the first check (vLLM
    would then still sample from the base: its mismatch would be the reference drift)."""
    assert max(s["logprob_mismatch"] for s in history) <= 1e-3, [s["logprob_mismatch"] for s in history]
    assert history[-1]["reference_drift"] > 1e-2, [s["reference_drift"] for s in history]
