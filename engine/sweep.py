"""Ablation sweeps: the same recipe with knobs changed, every combination in its own run directory.

    python -m engine.sweep CONFIG --grid key=v1,v2 [--grid key=...] [key=value ...] [--out DIR]
                           [--launcher python|deepspeed] [--num_gpus N]

Runs are sequential. Running the same command again skips finished runs (those with a summary.json)
and runs the unfinished and failed ones again in place, where each resumes from its last checkpoint. A failed run is recorded as failed and the sweep goes
on. `sweep_summary.csv` and `sweep_summary.md` get one row per run (its overrides and final eval
metrics) and are rewritten after every run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.base.errors import UserError, run_cli
from engine.config.loading import load_config
from engine.runtime.distributed import RENDEZVOUS_VARS
from engine.tasks.data import VALIDATION

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "ece_t1", "ece_t2", "edit_ratio")


@dataclass
class SweepRun:
    name: str
    overrides: list[str]  # the grid's key=value for this run
    status: str = "pending"  # pending | finished | failed | skipped (finished earlier)
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""  # why it failed, or how long it took


def parse_grid(spec: str) -> tuple[str, list[str]]:
    """`key=v1,v2` -> (key, [v1, v2])."""
    key, sep, values = spec.partition("=")
    options = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not options:
        raise UserError(f"--grid {spec!r}: expected key=value1,value2,... Hint: --grid train.lr=1e-4,3e-4")
    return key.strip(), options


def grid_runs(grids: list[tuple[str, list[str]]]) -> list[SweepRun]:
    keys = [k for k, _ in grids]
    if len(set(keys)) != len(keys):
        raise UserError(f"--grid names a key twice: {keys}")
    runs = []
    for values in itertools.product(*(options for _, options in grids)):
        overrides = [f"{k}={v}" for k, v in zip(keys, values)]
        runs.append(SweepRun(run_name(overrides), overrides))
    return runs


def run_name(overrides: list[str]) -> str:
    """A directory name from the overrides: `algo.alpha=1,train.lr=3e-4` -> `algo.alpha=1_train.lr=3e-4`."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", "_".join(overrides)) or "base"


def train_command(args, overrides: list[str], run_dir: Path) -> list[str]:
    script = [str(ROOT / "engine" / "train.py"), args.config, *args.overrides, *overrides,
              f"train.output_dir={run_dir}"]
    if args.launcher == "deepspeed":
        from engine.runtime.distributed import free_port

        return ["deepspeed", "--num_gpus", str(args.num_gpus), "--master_port", str(free_port()), *script]
    return [sys.executable, *script]


def identity(args, run: SweepRun) -> dict:
    """What makes a run directory's results this combination's: the recipe and every override."""
    return {"config": args.config, "overrides": [*args.overrides, *run.overrides], "launcher": args.launcher,
            "num_gpus": args.num_gpus}


def check_identity(run_dir: Path, expected: dict) -> None:
    """A run directory left by a different sweep (other shared overrides, or a name that two values map
    to) must not be skipped as if it were this combination's."""
    recorded = run_dir / "sweep_run.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != expected:
        raise UserError(f"{run_dir} holds a run of a different sweep ({recorded.read_text().strip()}). "
                        f"Hint: give this sweep its own --out.")


def execute(args, run: SweepRun, out: Path) -> None:
    """Run one combination to the end; record finished or failed with the reason."""
    run_dir = out / run.name
    if (run_dir / "summary.json").is_file():
        run.status, run.metrics = "skipped", final_metrics(run_dir)
        run.detail = "finished earlier"
        return
    if run_dir.exists():  # unfinished or failed: the same command resumes from its last checkpoint
        print(f"[sweep] {run.name}: unfinished earlier; running it again (it resumes from its last checkpoint)",
              flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep_run.json").write_text(json.dumps(identity(args, run)) + "\n")
    print(f"[sweep] {run.name}: running (log: {run_dir / 'train.log'})", flush=True)
    started = time.time()
    with (run_dir / "train.log").open("a") as log:  # appended across resumes; the trainer adds no filter
        code = subprocess.run(train_command(args, run.overrides, run_dir), cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, env=job_env()).returncode
    minutes = (time.time() - started) / 60
    if code == 0 and (run_dir / "summary.json").is_file():
        run.status, run.metrics, run.detail = "finished", final_metrics(run_dir), f"{minutes:.1f} min"
    else:
        run.status, run.detail = "failed", f"exit {code}: {last_error(run_dir / 'train.log')}"


def job_env() -> dict[str, str]:
    """Each run is its own job: it must not join (or collide with) a process group this process inherited."""
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}


def final_metrics(run_dir: Path) -> dict[str, float]:
    after = json.loads((run_dir / "summary.json").read_text())["eval"]["after"]
    return {k: after[k] for k in METRICS if k in after}


def last_error(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:") or "Error" in l]
    return (errors or lines or ["no output"])[-1][:300]


def write_summary(out: Path, runs: list[SweepRun], grid_keys: list[str]) -> None:
    header = ["run", "status", *grid_keys, *METRICS, "detail"]
    rows = []
    for run in runs:
        values = dict(o.split("=", 1) for o in run.overrides)
        rows.append([run.name, run.status, *(values[k] for k in grid_keys),
                     *(f"{run.metrics[m]:.4f}" if m in run.metrics else "" for m in METRICS), run.detail])
    with (out / "sweep_summary.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    (out / "sweep_summary.md").write_text("\n".join(lines) + "\n")


def choose_on_validation(args) -> None:
    """Unless the command sets data.eval, a recipe that reports on a split with a known validation split
    (VALIDATION) is evaluated on that one: numbers that pick the settings must not come from the set the
    chosen recipe is then reported on."""
    reported = load_config([args.config, *args.overrides]).data.eval
    if any(o.startswith("data.eval=") for o in [*args.overrides, *args.grid]):
        print(f"[sweep] its runs evaluate on data.eval={reported} (set on the command line)", flush=True)
    elif reported in VALIDATION:
        args.overrides.append(f"data.eval={VALIDATION[reported]}")
        print(f"[sweep] its runs evaluate on data.eval={VALIDATION[reported]}, the validation split, not on "
              f"{reported}, where the chosen recipe is reported. Hint: pass data.eval=... to choose the split.",
              flush=True)
    else:
        print(f"[warn] its runs evaluate on data.eval={reported}: choose settings on a validation split, not on "
              f"the one the chosen recipe is reported on (pass data.eval=<validation data>).", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--out", help="sweep directory (default runs/sweep-<config name>)")
    parser.add_argument("--launcher", choices=("python", "deepspeed"), default="python")
    parser.add_argument("--num_gpus", type=int, default=1, help="ranks per run with --launcher deepspeed")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the --grid flags
    if not args.grid:
        parser.error("give at least one --grid key=v1,v2")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"expected key=value overrides after CONFIG, got {bad}")
    return args


def main(argv: list[str] | None = None) -> list[SweepRun]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grids = [parse_grid(g) for g in args.grid]
    runs = grid_runs(grids)
    # Runs start from the repository root: paths given relative to the caller's directory are resolved first.
    out = Path(args.out or f"runs/sweep-{Path(args.config).stem}").resolve()
    args.config = str(Path(args.config).resolve())
    choose_on_validation(args)
    for run in runs:  # every combination's config must be valid before the first run starts
        load_config([args.config, *args.overrides, *run.overrides, f"train.output_dir={out / run.name}"])
        check_identity(out / run.name, identity(args, run))
    out.mkdir(parents=True, exist_ok=True)
    print(f"[sweep] {len(runs)} runs into {out}", flush=True)
    for i, run in enumerate(runs, 1):
        execute(args, run, out)
        shown = " ".join(f"{k} {run.metrics[k]:.3f}" for k in ("acc_t1", "acc_t2", "delta") if k in run.metrics)
        print(f"[sweep] {i}/{len(runs)} {run.name}: {run.status} {shown} {run.detail}".rstrip(), flush=True)
        write_summary(out, runs, [k for k, _ in grids])
    failed = [r.name for r in runs if r.status == "failed"]
    print(f"[sweep] done: {len(runs) - len(failed)} finished, {len(failed)} failed; "
          f"summary in {out / 'sweep_summary.md'}", flush=True)
    return runs


if __name__ == "__main__":
    run_cli(lambda: 1 if any(r.status == "failed" for r in main()) else 0)
