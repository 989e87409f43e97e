"""Label-free training reads no gold answer: the same run on right, wrong and absent answers is the same run."""

import json
import sys

import pytest

from engine.config.loading import load_config
from engine.tasks.arith import arith_problems
from rewards.registry import reward_needs
from tests.conftest import run_script

pytestmark = pytest.mark.slow

RUN_KEYS = ("reward_t1", "reward_t2", "loss", "kl_t1", "kl_t2", "grad_norm", "entropy", "no_answer_frac")


def _write(path, answers):
    problems = arith_problems("train")[:64]
    with path.open("w") as f:
        for p, a in zip(problems, answers(problems)):
            f.write(json.dumps({"prompt": p.prompt} if a is None else {"prompt": p.prompt, "answer": a}) + "\n")
    return path


def test_default_recipe_reads_no_gold_answer_in_training(tiny_model_dir, tmp_path):
    assert not reward_needs(load_config(["configs/default.yaml"]).reward.kind,
                            load_config(["configs/default.yaml"]).reward).needs_gold
    data = {
        "right": _write(tmp_path / "right.jsonl", lambda ps: [p.answer for p in ps]),
        "wrong": _write(tmp_path / "wrong.jsonl", lambda ps: [str(int(p.answer) + 7) for p in ps]),
        "none": _write(tmp_path / "none.jsonl", lambda ps: [None] * len(ps)),
    }
    histories = {}
    for name, path in data.items():
        run_dir = tmp_path / name
        run_script([sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
                    f"data.train={path}", "train.steps=3", "algo.stage1_steps=2", "eval.every=0", "eval.problems=8",
                    "rollout.prompts_per_step=4", "train.save_every=0", f"train.output_dir={run_dir}"], timeout=600)
        histories[name] = json.loads((run_dir / "summary.json").read_text())["train"]["history"]
    # the answers were loaded (the samples' gold accuracy is logged where there are answers: train/acc_* aside)
    assert "acc_t1" in histories["wrong"][0] and "acc_t1" not in histories["none"][0]
    for name in ("wrong", "none"):
        for step, (a, b) in enumerate(zip(histories["right"], histories[name])):
            assert {k: a[k] for k in RUN_KEYS} == {k: b[k] for k in RUN_KEYS}, (name, step)
    assert any(h["reward_t1"] > 0 for h in histories["right"])  # the comparison is not one of empty rewards
