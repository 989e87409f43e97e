"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

    <train.output_dir>/checkpoints/step-000040/
        deepspeed/        the DeepSpeed engine state (model, optimizer, scheduler), every rank's shard
        model/            the policy as a Hugging Face folder (safetensors, tokenizer, config.json)
        rng-rank<r>.pt    that rank's torch RNG state (vLLM's CPU sampler draws from it)
        cuda-rng-rank<r>.pt  on a GPU machine, that rank's CUDA RNG states (the GPU sampler's)
        rng-rank<r>.json  that rank's python and numpy RNG states
        meta.json         the step, stage and data position, the run's identity, the metrics so far,
                          the guard's history, the config

A checkpoint is written under `.tmp-step-...` and renamed into place once complete, so a crash while
writing leaves the previous one intact; directories without meta.json are never resumed from. A finished
run's <output_dir>/summary.json (write_summary) is written the same way: whole or not at all.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.base.errors import UserError
from engine.runtime.distributed import barrier, reduce_max

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, if any."""
    root = checkpoint_root(output_dir)
    done = [p for p in root.glob("step-*") if STEP_DIR.match(p.name) and (p / "meta.json").is_file()] \
        if root.is_dir() else []
    return max(done, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, a quota); the previous one is left as it was."""


def run_identity(output_dir: str | Path) -> dict:
    """Which run a checkpoint belongs to: its directory and, for a sweep's run, the sweep's record of it."""
    record = Path(output_dir) / "sweep_run.json"
    return {"output_dir": str(Path(output_dir).resolve()),
            "sweep": json.loads(record.read_text()) if record.is_file() else None}


def write_summary(output_dir: str | Path, summary: dict) -> Path:
    """<output_dir>/summary.json, whose presence marks the run finished (resume=auto then does nothing):
    written whole or not at all (a temporary file, then a rename)."""
    done = Path(output_dir) / "summary.json"
    done.with_suffix(".tmp").write_text(json.dumps(summary, indent=2))
    os.replace(done.with_suffix(".tmp"), done)
    return done


def save_checkpoint(run, step: int, meta: dict, keep: int) -> Path:
    """Every rank calls this (ZeRO shards and RNG states are per rank); rank 0 commits and prunes.
    If any rank fails to write, every rank raises CheckpointWriteError and the partial directory is removed."""
    root = checkpoint_root(run.cfg.train.output_dir)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    error = None
    if run.is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as err:
            error = err
    if reduce_max(float(error is not None)):  # also the barrier before anyone writes into tmp
        raise CheckpointWriteError(_write_failure(run, step, tmp, error))
    try:
        run.learner.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
        run.learner.save_weights(tmp / "model", run.tokenizer, run.is_main)
        save_rng(tmp, run.rank)
        if run.is_main:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except Exception as err:  # a full disk is an OSError, a RuntimeError (torch.save) or a SafetensorError
        error = err
    if reduce_max(float(error is not None)):  # all ranks agree, so none waits for a commit that never comes
        if run.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(run, step, tmp, error))
    if run.is_main:
        if final.exists():  # the same step saved again (a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted((p for p in root.glob("step-*") if STEP_DIR.match(p.name)),
                          key=lambda p: int(STEP_DIR.match(p.name).group(1)))[:-keep]:  # keep >= 1
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _write_failure(run, step: int, tmp: Path, error: BaseException | None) -> str:
    cause = f"{type(error).__name__}: {error}" if error is not None else "another rank failed to write its part"
    root = checkpoint_root(run.cfg.train.output_dir)
    previous = latest_checkpoint(run.cfg.train.output_dir)
    kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
    # torch.save reports a full disk as "unexpected pos ...": say how much room there is.
    space = f"{shutil.disk_usage(root).free / 2**20:.1f} MiB free there"
    if previous:
        size = sum(f.stat().st_size for f in previous.rglob("*") if f.is_file())
        space += f" and a checkpoint takes {size / 2**20:.1f} MiB"
    return (f"could not write the step-{step} checkpoint to {tmp} ({cause}); the partial directory was removed "
            f"and {kept}. {space}. Hint: free space under {root} (or lower train.keep_checkpoints="
            f"{run.cfg.train.keep_checkpoints}), then run the same command to resume.")


def load_checkpoint(run, path: Path) -> dict:
    """Restore the learner and this rank's RNG states; returns meta. The caller pushes the restored weights
    to the rollout engine(s). (A dedicated worker's sampler RNG is not saved: such a resume is not bit-exact.)"""
    run.learner.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
    meta = json.loads((path / "meta.json").read_text())
    load_rng(path, run.rank)
    return meta


# What a resumed run may change: how long it runs, where it writes, how often it saves, what it evaluates and
# logs. Anything else (the model, seed, sampling, reward, algorithm, adapters...) would silently continue another
# run from this one's weights, so resuming with it is refused.
# reward.nonfinite and rollout.worker_timeout_s may change too (their errors' hints say to resume with them), and
# rollout.sync_bucket_mb, a transfer size that changes no number.
RESUME_MAY_CHANGE = ("train.steps", "train.output_dir", "train.resume", "train.save_every", "train.keep_checkpoints",
                     "reward.nonfinite", "rollout.worker_timeout_s", "rollout.sync_bucket_mb", "eval.", "log.")
OPEN_SECTIONS = ("reward.weights",)  # a section of the user's own keys: compared whole (a weight added or dropped)


def flat_config(tree, prefix: str = "") -> dict:
    """{"a.b.c": leaf} for a resolved config tree; a list, and an OPEN_SECTIONS mapping, is one leaf."""
    if not isinstance(tree, dict) or prefix[:-1] in OPEN_SECTIONS:
        return {prefix[:-1]: tree}
    return {key: leaf for name, sub in tree.items() for key, leaf in flat_config(sub, f"{prefix}{name}.").items()}


def resume_changes(now: dict, saved: dict) -> tuple[list[tuple[str, object, object]], list[str]]:
    """The settings that differ between this command's resolved config and its checkpoint's, outside
    RESUME_MAY_CHANGE, as (key, old, new); and the keys the checkpoint predates (not in its config)."""
    now, saved = flat_config(now), flat_config(saved)
    changed = [(key, saved[key], value) for key, value in now.items()
               if key in saved and saved[key] != value and not key.startswith(RESUME_MAY_CHANGE)]
    return changed, sorted(key for key in now if key not in saved)


def check_resume_config(cfg, saved: dict, path: Path) -> list[str]:
    """Refuse to resume the checkpoint at `path` (whose config is `saved`) with other settings than it was
    trained with, naming each changed key with its old and new value. Returns the keys the checkpoint predates."""
    from omegaconf import OmegaConf

    changed, predates = resume_changes(OmegaConf.to_container(cfg, resolve=True), saved)
    if changed:
        lines = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed)
        undo = " ".join(shlex.quote(f"{key}={json.dumps(old) if isinstance(old, (list, dict)) else old}")
                        for key, old, _ in changed)
        raise UserError(f"the checkpoint {path} was trained with other settings than this command's ({lines}): "
                        f"resuming would continue another run from its weights. Hint: pass {undo} to resume it, or "
                        f"start a new run in another train.output_dir. A resume may change only "
                        f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUME_MAY_CHANGE)}.")
    return predates


def save_rng(folder: Path, rank: int) -> None:
    torch.save(torch.get_rng_state(), folder / f"rng-rank{rank}.pt")
    if torch.cuda.is_available():  # vLLM's GPU sampler draws from it: without it a GPU resume is not exact
        torch.save(torch.cuda.get_rng_state_all(), folder / f"cuda-rng-rank{rank}.pt")
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    (folder / f"rng-rank{rank}.json").write_text(json.dumps({
        "python": [version, list(state), gauss_next],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }))


def load_rng(folder: Path, rank: int) -> None:
    torch.set_rng_state(torch.load(folder / f"rng-rank{rank}.pt", weights_only=True))
    cuda = folder / f"cuda-rng-rank{rank}.pt"
    if cuda.is_file() and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(torch.load(cuda, weights_only=True))
    states = json.loads((folder / f"rng-rank{rank}.json").read_text())
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
