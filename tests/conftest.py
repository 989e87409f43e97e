import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _no_rendezvous_leak():
    """A test that starts a process group in this process (init_distributed sets MASTER_PORT and friends
    for a world of one) must not hand that rendezvous to the processes later tests start."""
    from engine.distributed import RENDEZVOUS_VARS

    before = {k: os.environ.get(k) for k in RENDEZVOUS_VARS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A briefly pre-trained builtin:tiny-arith (tied embeddings), built in about 15 s: 200 steps, enough that
    some answers carry the "Final Answer:" format, so the default (agreement) reward is not all zeros and the
    tests' updates move the weights (at 40 steps no answer could be extracted)."""
    from engine.tiny_model import TinyArithRecipe, build_tiny_arith

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
