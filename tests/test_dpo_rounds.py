"""algo.kind=dpo end to end: preference rounds on real vLLM rollouts and a real DeepSpeed learner."""

import json
import math
import re
import shutil
import sys

import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow

DPO_TAGS = ("dpo/loss", "dpo/margin", "dpo/chosen_logp", "dpo/rejected_logp", "dpo/pairs")
SMALL = ["dpo.rounds=2", "dpo.prompts_per_round=8", "dpo.batch_pairs=4", "dpo.pairs_per_round=12",
         "eval.problems=16", "train.lr=1e-4"]


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _train(tiny_model_dir, run_dir, *overrides, recipe="configs/evolve.yaml"):
    return run_script([sys.executable, "engine/train.py", recipe, f"model.path={tiny_model_dir}",
                       f"train.output_dir={run_dir}", *SMALL, *overrides], timeout=600)


def test_evolve_rounds_train_and_save_their_pairs(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "evolve"
    # 40-token turns and a one-word request: answers fit and the test stays short
    proc = _train(tiny_model_dir, run_dir, "rollout.turns=3", "rollout.max_tokens=40",
                  "rollout.correction_instruction=Check.", "dpo.reference=base")
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["pairs_kept"] > 0 for r in rounds)
    from transformers import AutoTokenizer

    from rollout.episodes import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "eval" in rounds[0]  # every round but the last is evaluated; the last is the final evaluation
    assert {"acc_t1", "acc_t2", "acc_t3"} <= summary["eval"]["after"].keys()  # 3-turn chains
    for r in rounds:
        lines = (run_dir / "pairs" / f"round-{r['round']:03d}.jsonl").read_text().splitlines()
        pairs = [json.loads(line) for line in lines]
        assert len(pairs) == r["pairs_kept"] <= 12
        assert {p["kind"] for p in pairs} <= {"refine", "direct"}
        assert all(p["chosen_ids"] != p["rejected_ids"] and p["chosen_text"] is not None for p in pairs)
        assert all(p["chosen_score"] != p["rejected_score"] for p in pairs)
        # a refinement pair's responses sit in a later turn's context: longer than the prompt alone, which is
        # a direct pair's whole context
        for p in pairs:
            prompt_alone = encode_prompt(tokenizer, p["prompt"])
            if p["kind"] == "direct":
                assert p["context_ids"] == prompt_alone
            else:
                assert len(p["context_ids"]) > len(prompt_alone) and p["context_ids"][:len(prompt_alone)] == prompt_alone
    scalars = _scalars(run_dir / "tb")
    updates = sum(math.ceil(r["pairs_kept"] / 4) for r in rounds)
    assert all(len(scalars[tag]) == updates for tag in DPO_TAGS), {t: len(scalars.get(t, [])) for t in DPO_TAGS}
    assert all(math.isfinite(v) for tag in DPO_TAGS for v in scalars[tag])
    assert scalars["dpo/pairs"] == [4.0] * updates
    assert scalars["dpo/loss"][0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    # dpo.reference=base: round 2 trains against the base model, not M1 (round 1 moved the policy: its
    # evaluation differs from the base model's), so round 2 starts with margins away from 0 (see the next test)
    first_of_round2 = math.ceil(rounds[0]["pairs_kept"] / 4)
    assert rounds[0]["eval"] != summary["eval"]["before"]
    assert abs(scalars["dpo/margin"][first_of_round2]) > 1e-5
    assert summary["eval"]["after"] != summary["eval"]["before"]  # the trained weights reached vLLM
    assert "[round 2/2 update" in proc.stdout


def test_an_empty_round_is_reported_and_skipped(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "empty"
    # a disparity of 1 is out of reach (p(top2) > 0): no trace passes the threshold
    proc = _train(tiny_model_dir, run_dir, "pairs.threshold=1.0", recipe="configs/rlsf_dpo.yaml")
    assert proc.stdout.count("no pair passed the filter") == 2, proc.stdout[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["pairs_kept"] for r in summary["rounds"]] == [0, 0] and summary["train"]["steps"] == 0
    assert (run_dir / "pairs" / "round-001.jsonl").read_text() == ""
    # no update ran: the policy the run ends with is the base model, weight for weight
    import torch
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "step-000000" / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert final.keys() == base.keys() and [k for k in base if not torch.equal(final[k], base[k])] == []


def test_kill_and_resume_inside_a_round_matches_a_straight_run(tiny_model_dir, tmp_path):
    """A straight run checkpoints after every update; dropping every checkpoint after update 2 (inside round
    1, of 3 updates) and the summary, the same command resumes there and must end with the same numbers."""
    run_dir = tmp_path / "rlsf"
    args = ("train.save_every=1", "train.keep_checkpoints=100", "pairs.threshold=0.3")
    _train(tiny_model_dir, run_dir, *args, recipe="configs/rlsf_dpo.yaml")
    straight = json.loads((run_dir / "summary.json").read_text())
    updates_round1 = math.ceil(straight["rounds"][0]["pairs_kept"] / 4)
    assert updates_round1 >= 2 and straight["rounds"][1]["pairs_kept"] > 0, straight["rounds"]
    # dpo.reference=previous (the default): round 2 trains against M1, the policy round 1 made, so its first
    # update starts at policy == reference (margin 0, loss log 2) although round 1 moved the policy
    first_of_round2 = straight["train"]["history"][updates_round1]
    assert first_of_round2["round"] == 1.0 and straight["rounds"][0]["eval"] != straight["eval"]["before"]
    assert first_of_round2["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first_of_round2["margin"] == pytest.approx(0.0, abs=1e-4)
    pairs2 = (run_dir / "pairs" / "round-002.jsonl").read_text()
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 1:
            shutil.rmtree(ckpt)
    (run_dir / "summary.json").unlink()
    (run_dir / "pairs" / "round-002.jsonl").unlink()
    proc = _train(tiny_model_dir, run_dir, *args, recipe="configs/rlsf_dpo.yaml")
    assert "[resume] round 1: training on its" in proc.stdout
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "pairs" / "round-002.jsonl").read_text() == pairs2  # round 2 sampled the same way
    timing = {"step_seconds"}
    for a, b in zip(straight["train"]["history"], resumed["train"]["history"], strict=True):
        for key in a.keys() - timing:
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for key, value in straight["eval"]["after"].items():
        assert resumed["eval"]["after"][key] == pytest.approx(value, abs=1e-6), key


def test_two_ranks_zero3_dpo(tiny_model_dir, tmp_path):
    from engine.runtime.distributed import free_port

    run_dir = tmp_path / "dpo2r"
    # threshold 0: the tiny model's matrices are split too (at the default all stay whole)
    proc = run_script(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "engine/train.py",
                       "configs/evolve.yaml", f"model.path={tiny_model_dir}", f"train.output_dir={run_dir}",
                       "deepspeed.zero_stage=3", "deepspeed.param_persistence_threshold=0", *SMALL, "dpo.rounds=1"],
                      timeout=900)
    for what in ("policy", "reference"):
        counts = re.search(rf"\[zero3\] {what}: (\d+) of (\d+) parameters partitioned", proc.stdout)
        assert counts and counts[1] == counts[2], proc.stdout[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = summary["rounds"][0]["pairs_kept"]
    assert kept > 0 and summary["train"]["steps"] == math.ceil(kept / 4)
    history = summary["train"]["history"]
    assert history[0]["pairs"] == 4.0 and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in history)
    assert summary["eval"]["after"]["n"] == 16  # both ranks' shares gathered
    assert summary["eval"]["after"] != summary["eval"]["before"]
