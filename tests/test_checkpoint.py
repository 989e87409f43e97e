"""Checkpoints and exact resume: a run killed with SIGKILL mid-way and started again with the same
command continues from its last complete checkpoint and reproduces the uninterrupted run's per-step
losses and rewards; starting a finished run again does nothing."""

import json
import signal
import subprocess
import sys
import time

import pytest

from engine.base.errors import UserError
from tests.conftest import ROOT, run_script


def assert_model_folder_is_the_saved_state(checkpoint, base_dir):
    """The checkpoint's Hugging Face folder holds exactly the weights of its DeepSpeed state (what a resume
    restores), and they are trained weights, not those of the base model the run started from."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = AutoModelForCausalLM.from_pretrained(checkpoint / "model").state_dict()
    saved = torch.load(checkpoint / "deepspeed" / "state" / "mp_rank_00_model_states.pt", weights_only=False,
                       map_location="cpu")["module"]
    saved = {k.removeprefix("lm."): v for k, v in saved.items()}  # the engine wraps the policy as `lm`
    assert folder.keys() == saved.keys()
    assert [k for k in folder if not torch.equal(folder[k], saved[k])] == []  # names any tensor that differs
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    assert not all(torch.equal(folder[k], base[k]) for k in folder)  # the updates moved the weights


def test_checkpoint_model_folder_holds_the_trained_weights(tiny_model_dir, tmp_path):
    """In-process, world size 1: one update, then save_checkpoint; no training run is launched."""
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from engine.runtime.checkpoint import save_checkpoint
    from engine.runtime.distributed import init_distributed
    from engine.update.algorithms import TurnWeights
    from engine.update.batch import collate
    from engine.update.learner import Learner
    from tests.test_episodes import _episode

    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = [_episode(tok, f"{i}+1=?", f"Final Answer: {i + 1}", f"Final Answer: {i}") for i in range(2)]
    learner = Learner(str(tiny_model_dir), zero_stage=0, lr=1e-2, grad_clip=1e6, episodes_per_rank=2,
                      micro_batch_size=2)
    learner.update(collate(episodes, tok.pad_token_id), [torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])],
                   TurnWeights(pg=(1.0, 1.0), kl=(0.0, 0.0)), "k2")
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path), "keep_checkpoints": 1}})
    run = SimpleNamespace(cfg=cfg, learner=learner, tokenizer=tok, rank=0, is_main=True)
    checkpoint = save_checkpoint(run, step=1, meta={"step": 1}, keep=1)
    assert_model_folder_is_the_saved_state(checkpoint, tiny_model_dir)


def _command(model_dir, run_dir, save_every):
    return [sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={model_dir}", "train.steps=5",
            "algo.stage1_steps=3", "eval.problems=8", "eval.every=2", "rollout.prompts_per_step=4",
            f"train.save_every={save_every}", "train.keep_checkpoints=2", f"train.output_dir={run_dir}"]


def _history(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["train"]["history"]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    run_script(_command(tiny_model_dir, straight, save_every=0), timeout=600)
    assert not (straight / "checkpoints").exists()

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(tiny_model_dir, killed, save_every=1), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step-000002" / "meta.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()

    resumed = run_script(_command(tiny_model_dir, killed, save_every=1), timeout=600)
    assert "[resume] continuing from" in resumed.stdout
    want, got = _history(straight), _history(killed)
    assert len(got) == len(want) == 5
    for step, (a, b) in enumerate(zip(want, got), 1):
        for key in ("loss", "reward_t1", "reward_t2", "kl_t1", "kl_t2", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (step, key)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["eval"]["after"] == json.loads((straight / "summary.json").read_text())["eval"]["after"]
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert kept == ["step-000004", "step-000005"]  # keep_checkpoints=2, no temporary directories left
    assert_model_folder_is_the_saved_state(killed / "checkpoints" / "step-000005", tiny_model_dir)
    samples = [json.loads(l)["step"] for l in (killed / "samples.jsonl").read_text().splitlines()]
    assert samples == sorted(samples) and len(set(samples)) == 5  # the killed run's extra lines were dropped

    again = run_script(_command(tiny_model_dir, killed, save_every=1), timeout=120)
    assert "already finished" in again.stdout


@pytest.mark.parametrize("resume", ["never"])
def test_resume_never_refuses_a_directory_with_checkpoints(tmp_path, resume):
    step = tmp_path / "run" / "checkpoints" / "step-000003"
    step.mkdir(parents=True)
    (step / "meta.json").write_text("{}")
    proc = subprocess.run([sys.executable, "engine/train.py", f"train.output_dir={tmp_path / 'run'}",
                           f"train.resume={resume}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "holds checkpoints of an earlier run" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_resume_refuses_changed_settings_and_names_each(tmp_path):
    """A checkpoint resumes only with the settings it was trained with, up to RESUME_MAY_CHANGE (length,
    output, saving, eval.*, log.*); each other change is named with its old and new value."""
    from omegaconf import OmegaConf

    from engine.config.loading import load_config
    from engine.runtime.checkpoint import check_resume_config

    base = ["configs/default.yaml", "model.path=/models/a"]
    saved = OmegaConf.to_container(load_config(base), resolve=True)
    allowed = ["train.steps=500", "train.output_dir=/elsewhere", "train.save_every=3", "train.keep_checkpoints=5",
               "eval.problems=7", "eval.every=0", "log.level=debug", "log.text_every=9"]
    assert check_resume_config(load_config([*base, *allowed]), saved, tmp_path) == []
    for override, named in [("model.path=/models/b", "model.path: '/models/a' -> '/models/b'"),
                            ("train.seed=1", "train.seed: 0 -> 1"), ("rollout.n=8", "rollout.n: 4 -> 8"),
                            ("reward.kind=gold", "reward.kind: 'confidence' -> 'gold'"),
                            ("algo.stage1_steps=3", "algo.stage1_steps: "), ("train.lr=0.5", "train.lr: "),
                            ("rollout.temperature=0.3", "rollout.temperature: ")]:
        with pytest.raises(UserError, match="trained with other settings") as err:
            check_resume_config(load_config([*base, override]), saved, tmp_path)
        assert named in str(err.value) and f"pass {override.split('=')[0]}=" in str(err.value), str(err.value)
    with pytest.raises(UserError) as err:  # every change at once, not the first only
        check_resume_config(load_config([*base, "train.seed=3", "rollout.n=2", "eval.problems=9"]), saved, tmp_path)
    assert "train.seed: 0 -> 3; rollout.n: 4 -> 2)" in str(err.value) and "eval.problems" not in str(err.value)
    mixed = [*base, "reward.kind=mix", "reward.weights.gold=0.5"]  # a weight added or dropped is a change
    with pytest.raises(UserError, match=r"reward\.weights: \{'gold': 0\.5\} -> \{'gold': 0\.5, 'majority': 1\.0\}"):
        check_resume_config(load_config([*mixed, "reward.weights.majority=1.0"]),
                            OmegaConf.to_container(load_config(mixed), resolve=True), tmp_path)
    assert check_resume_config(load_config([*base, "reward.nonfinite=skip"]), saved, tmp_path) == []  # its hint
    del saved["rollout"]["n"]  # a checkpoint from before a setting existed: not checked, but reported
    assert check_resume_config(load_config(base), saved, tmp_path) == ["rollout.n"]


def test_the_trainer_checks_the_checkpoints_settings_before_any_set_up(tmp_path):
    """engine/train.py refuses, at start-up and without a traceback, a resume with another seed and model."""
    from omegaconf import OmegaConf

    from engine.config.loading import load_config

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000003"
    step.mkdir(parents=True)
    saved = OmegaConf.to_container(load_config([f"train.output_dir={run}", "model.path=/models/a"]), resolve=True)
    (step / "meta.json").write_text(json.dumps({"step": 3, "config": saved}))
    proc = subprocess.run([sys.executable, "engine/train.py", f"train.output_dir={run}", "model.path=/models/b",
                           "train.seed=2", "train.steps=9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.path: '/models/a' -> '/models/b'; train.seed: 0 -> 2)" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_the_cuda_rng_is_saved_and_restored_where_there_is_a_gpu(tmp_path, monkeypatch):
    """On a GPU machine vLLM samples with the CUDA RNG: a resume restores it with the CPU states (here a
    stand-in CUDA RNG: this machine has none), so the resumed rollouts continue the same stream."""
    import torch

    from engine.runtime.checkpoint import load_rng, save_rng

    device_states = {"now": [torch.tensor([1, 2, 3], dtype=torch.uint8)]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: device_states["now"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: device_states.update(now=list(states)))
    save_rng(tmp_path, 0)
    device_states["now"] = [torch.tensor([9, 9, 9], dtype=torch.uint8)]  # the stream moved on after the save
    load_rng(tmp_path, 0)
    assert device_states["now"][0].tolist() == [1, 2, 3]


def test_latest_checkpoint_ignores_incomplete_and_temporary_directories(tmp_path):
    from engine.runtime.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    for name, complete in (("step-000002", True), ("step-000010", False), (".tmp-step-000012", True),
                           ("guard-stop-step11", True), ("step-000009", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "meta.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-000009"  # step 10 has no meta.json: a crash mid-write
    assert latest_checkpoint(tmp_path / "elsewhere") is None


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_then_the_run_resumes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = _command(tiny_model_dir, run_dir, save_every=0)  # no periodic checkpoints: only the signal's
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (run_dir / "samples.jsonl").is_file():  # the first step has finished
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "[signal] SIGTERM: stopped after step" in out and "Traceback" not in out
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and (saved[0] / "meta.json").is_file()
    resumed = run_script(command, timeout=600)
    assert f"[resume] continuing from {saved[0]}" in resumed.stdout
    assert len(_history(run_dir)) == 5


def test_resume_with_an_unset_context_takes_the_checkpoints(tmp_path):
    """rollout.max_model_len left unset is sized at start-up and recorded; a resume without it continues
    with the checkpoint's value (not a fresh size, not a refusal), and another explicit value is refused."""
    from omegaconf import OmegaConf

    from engine.config.loading import load_config
    from engine.loop.run import check_resumable

    base = ["configs/default.yaml", f"train.output_dir={tmp_path}"]
    saved = OmegaConf.to_container(load_config([*base, "rollout.max_model_len=300"]), resolve=True)
    step = tmp_path / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 2, "config": saved}))
    assert load_config(base).rollout.max_model_len is None
    assert check_resumable(load_config(base)).rollout.max_model_len == 300
    assert check_resumable(load_config([*base, "rollout.max_model_len=300"])).rollout.max_model_len == 300
    with pytest.raises(UserError, match="rollout.max_model_len: 300 -> 400"):
        check_resumable(load_config([*base, "rollout.max_model_len=400"]))
