"""`python -m engine.evaluate`: any model folder scored with the trainer's evaluation code, a table on
stdout and the metrics (with standard errors) as JSON; bad input gets one `error:` line."""

import json
import subprocess
import sys

import pytest

from engine.metrics import edit_distance_ratio, turn_shape_metrics
from tests.conftest import ROOT, run_script


def test_edit_distance_ratio_by_hand():
    assert edit_distance_ratio([1, 2, 3], [1, 2, 3]) == 0.0  # a copy
    assert edit_distance_ratio([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)  # one deletion over 3 tokens
    assert edit_distance_ratio([1, 2], [3, 4, 5, 6]) == 1.0  # nothing kept: 2 substitutions + 2 insertions
    assert edit_distance_ratio([], []) == 0.0
    import torch

    m = turn_shape_metrics(torch.tensor([2, 4]), torch.tensor([3, 3]), torch.tensor([0.0, 0.5]))
    assert (m["len_t1"], m["len_t2"], m["edit_ratio"]) == (3.0, 3.0, 0.25)
    assert m["se_len_t1"] == pytest.approx(1 / 2 ** 0.5) and m["se_len_t2"] == 0.0


@pytest.mark.slow
def test_evaluate_cli_scores_a_model_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    proc = run_script([sys.executable, "-m", "engine.evaluate", "configs/default.yaml", f"model.path={tiny_model_dir}",
                       "eval.problems=16", "--json", str(out)], timeout=600)
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 16 and metrics["model"] == str(tiny_model_dir)
    for key in ("acc_t1", "acc_t2", "delta_i2c", "delta_c2i", "ece_t1", "ece_t2", "edit_ratio"):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[f"se_{key}"] >= 0.0, key
    assert metrics["delta"] == pytest.approx(metrics["delta_i2c"] - metrics["delta_c2i"])
    assert metrics["len_t1"] > 0 and "se_delta" in metrics
    assert "| Acc@t2 |" in proc.stdout and "| edit ratio t1→t2 |" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["model.path=/nonexistent"], "model.path='/nonexistent' is not a folder with a config.json"),
    (["--json"], "--json needs a path"),
    (["eval.problemz=3"], "Did you mean 'eval.problems'"),
])
def test_evaluate_cli_errors(args, needle):
    proc = subprocess.run([sys.executable, "-m", "engine.evaluate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and f"error: " in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
