"""Sweeps: grid parsing and naming, and a real two-run sweep (one run fails at start-up) that is then
run again: the finished run is skipped, the failed one tried again, and the summary lists both."""

import csv
import socket
import sys

import pytest

from engine.base.errors import UserError
from engine.sweep import grid_runs, parse_grid, run_name
from tests.conftest import ROOT


def test_grid_parsing_and_names():
    assert parse_grid("train.lr=1e-4, 3e-4") == ("train.lr", ["1e-4", "3e-4"])
    runs = grid_runs([("algo.alpha", ["1", "2"]), ("reward.kind", ["gold", "majority"])])
    assert [r.name for r in runs] == ["algo.alpha=1_reward.kind=gold", "algo.alpha=1_reward.kind=majority",
                                      "algo.alpha=2_reward.kind=gold", "algo.alpha=2_reward.kind=majority"]
    assert run_name(["data.train=a/b c.jsonl"]) == "data.train=a-b-c.jsonl"
    for bad in ("train.lr", "train.lr=", "=1,2"):
        with pytest.raises(UserError, match="expected key=value1,value2"):
            parse_grid(bad)
    with pytest.raises(UserError, match="twice"):
        grid_runs([("train.lr", ["1"]), ("train.lr", ["2"])])


def test_sweep_rejects_a_bad_key_before_running(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "engine.sweep", "configs/default.yaml", "--grid", "train.stepz=1,2",
                           "--out", str(tmp_path / "sweep")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Did you mean 'train.steps'" in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_sweep_runs_records_failure_skips_finished_and_retries(tiny_model_dir, tmp_path, monkeypatch):
    import subprocess

    # A rendezvous inherited from a launcher or an earlier process group, its port taken: each run must
    # still start a process group of its own.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(busy.getsockname()[1]))

    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "engine.sweep", "configs/gold.yaml", "--grid",
               "data.train=builtin:arith,tests/data/missing.jsonl", f"model.path={tiny_model_dir}", "train.steps=1",
               "eval.problems=8", "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_tokens=24",
               "--out", str(out)]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr  # one run failed; the sweep went on
    rows = {r["run"]: r for r in csv.DictReader((out / "sweep_summary.csv").open())}
    good, bad = rows["data.train=builtin-arith"], rows["data.train=tests-data-missing.jsonl"]
    assert good["status"] == "finished" and 0 <= float(good["acc_t2"]) <= 1, good["detail"]
    assert bad["status"] == "failed" and "not found" in bad["detail"]
    assert "| data.train=builtin-arith | finished | builtin:arith |" in (out / "sweep_summary.md").read_text()
    # a sweep chooses settings: its runs evaluate on validation, not on the split results are reported on
    assert "evaluate on data.eval=builtin:arith-val, the validation split" in first.stdout
    assert "data:\n  train: builtin:arith\n  eval: builtin:arith-val\n" in (out / "data.train=builtin-arith" /
                                                                          "config.yaml").read_text()
    log = (out / "data.train=builtin-arith" / "train.log").read_text()  # the trainer's output, each line once
    assert log.count("[step 1/1]") == 1 and "RotaryEmbedding: Failed to load weights" in log, log[-2000:]
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "data.train=builtin-arith: skipped" in second.stdout
    assert "data.train=tests-data-missing.jsonl: unfinished earlier; running it again" in second.stdout
    rows = {r["run"]: r for r in csv.DictReader((out / "sweep_summary.csv").open())}
    assert rows["data.train=builtin-arith"]["acc_t2"] == good["acc_t2"]


def test_a_run_directory_of_another_sweep_is_not_reused(tmp_path):
    from engine.sweep import check_identity

    (tmp_path / "sweep_run.json").write_text('{"config": "a.yaml", "overrides": ["x=a/b"]}')
    check_identity(tmp_path, {"config": "a.yaml", "overrides": ["x=a/b"]})  # the same run: fine
    with pytest.raises(UserError, match="different sweep"):
        check_identity(tmp_path, {"config": "a.yaml", "overrides": ["x=a b"]})  # same directory name, other value


def test_a_sweep_evaluates_on_validation_unless_told(capsys):
    """The default recipe reports on builtin:arith-eval, so its sweeps evaluate on builtin:arith-val; an
    explicit data.eval is kept; a split with no known validation split gets a warning."""
    from argparse import Namespace

    from engine.sweep import choose_on_validation

    args = Namespace(config="configs/default.yaml", overrides=["train.steps=3"], grid=["train.lr=1,2"])
    choose_on_validation(args)
    assert args.overrides == ["train.steps=3", "data.eval=builtin:arith-val"]
    args = Namespace(config="configs/default.yaml", overrides=["data.eval=builtin:arith-eval"], grid=[])
    choose_on_validation(args)
    assert args.overrides == ["data.eval=builtin:arith-eval"]
    args = Namespace(config="configs/default.yaml", overrides=[], grid=["data.eval=a.jsonl,b.jsonl"])  # the grid's
    choose_on_validation(args)
    assert args.overrides == []
    args = Namespace(config="configs/gsm8k.yaml", overrides=[], grid=[])
    choose_on_validation(args)
    assert args.overrides == [] and "[warn] its runs evaluate on data.eval=" in capsys.readouterr().out
