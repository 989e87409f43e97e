"""End-to-end: real vLLM rollouts, a real DeepSpeed learner, weight sync, and short training runs."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import assert_weights_synced, run_script

pytestmark = pytest.mark.slow

TB_SCALARS = [
    "train/reward_t1", "train/reward_t2", "train/kl_t1", "train/kl_t2", "train/loss", "train/entropy",
    "train/no_answer_frac", "train/grad_norm", "train/lr", "train/grad_clipped", "rollout/logprob_mismatch",
    "rollout/reference_drift", "rollout/policy_lag",
    "perf/step_seconds", "perf/rollout_s", "perf/score_s", "perf/update_s", "perf/sync_s", "perf/tokens_per_s",
    "eval/acc_t1", "eval/acc_t2", "eval/delta", "eval/delta_i2c", "eval/delta_c2i", "eval/ece_t1", "eval/ece_t2",
    "eval/len_t1", "eval/len_t2", "eval/edit_ratio", "eval/se_acc_t2", "hparams/acc_t2", "hparams/delta",
]
RATES = ("train/acc_t1", "train/acc_t2", "train/no_answer_frac", "train/grad_clipped", "eval/acc_t1", "eval/acc_t2",
         "eval/delta_i2c", "eval/delta_c2i", "eval/ece_t1", "eval/ece_t2", "eval/edit_ratio", "hparams/acc_t2")
EVAL_KEYS = {"acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "n", "ece_t1", "ece_t2", "se_ece_t1",
             "se_delta_i2c", "len_t1", "len_t2", "edit_ratio", "se_edit_ratio"}


def _sync_result(proc) -> dict:
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# At temperature 0.7 vLLM reports, and the learner scores, the tempered policy's log-probs (logits / T).
@pytest.mark.parametrize("zero_stage, temperature", [(0, 1.0), (3, 0.7)])
def test_weight_sync_keeps_vllm_and_learner_in_step(tiny_model_dir, zero_stage, temperature):
    proc = run_script([sys.executable, "tests/scripts/sync_check.py", str(tiny_model_dir), str(zero_stage),
                       str(temperature)], timeout=600)
    result = _sync_result(proc)
    assert result["tied"] is True  # the case where a named_parameters() sync silently keeps the old head
    # updates 2 and 3 score rollouts that vLLM sampled after 1 and 2 syncs
    assert max(result["mismatch_per_update"][1:]) <= 1e-3, result
    # the weights really moved: without the sync, vLLM would be this far off
    assert result["drift_from_base"] > 1e-2, result
    # top-2 probabilities: vLLM (logprobs=2) and the learner's scoring pass agree on the same tokens
    assert result["top2_max_diff"] <= 1e-3, result
    # vLLM's log-probs are a plain full-logits forward's at the sampling temperature, not at T=1
    assert result["tempered_max_diff"] <= 1e-3, result
    if temperature != 1.0:
        assert result["raw_max_diff"] > 1e-2, result
    # a sync that leaves out the tied lm_head.weight leaves vLLM's head at the previous weights
    assert result["mismatch_without_lm_head"] > 1e-2, result


def _read_events(tb_dir):
    """TensorBoard's own reader over the run's event files: scalars, and the tags of text and hparams."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = {tag: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]
             if acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"}
    return scalars, texts, set(acc.PluginTagToContent("hparams"))


def for_turns(names, turns: int) -> list[str]:
    """The two-turn names above for episodes of `turns` turns: a name of turn 2 stands for each turn from 2 on
    (none with one turn), an edit ratio (t1 -> t2) for each consecutive pair (edit_ratio, edit_ratio_t3, ...).
    For two turns, the names themselves."""
    out = []
    for name in names:
        if name.endswith("_t2"):
            out += [f"{name[:-1]}{k}" for k in range(2, turns + 1)]
        elif name.endswith("edit_ratio"):
            out += ([name] if turns > 1 else []) + [f"{name}_t{k}" for k in range(3, turns + 1)]
        else:
            out.append(name)
    return out


def _check_run_dir(run_dir, steps, turns=2):
    resolved = OmegaConf.load(run_dir / "config.yaml")  # the context the run sized (the recipes leave it unset)
    assert isinstance(resolved.rollout.max_model_len, int) and resolved.rollout.max_model_len > 0
    scalars, _, hparam_tags = _read_events(run_dir / "tb")
    missing = [t for t in for_turns(TB_SCALARS, turns) if t not in scalars]
    assert not missing, missing
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= hparam_tags
    assert all(math.isfinite(v) for values in scalars.values() for v in values)
    assert all(0.0 <= v <= 1.0 for tag in for_turns(RATES, turns) if tag in scalars for v in scalars[tag]), \
        "a rate outside [0, 1]"
    assert all(v > 0 for tag in ("perf/rollout_s", "perf/update_s", "perf/tokens_per_s", "train/lr")
               for v in scalars[tag])
    assert len(scalars["train/loss"]) == steps
    samples = [json.loads(l) for l in (run_dir / "samples.jsonl").read_text().splitlines()]
    per_turn = {f"turn{k}" for k in range(1, turns + 1)} | {f"reward_t{k}" for k in range(1, turns + 1)}
    assert samples and {"prompt"} | per_turn <= samples[0].keys()
    assert f"turn{turns + 1}" not in samples[0] and f"reward_t{turns + 1}" not in samples[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == steps
    for when in ("before", "after"):
        assert set(for_turns(EVAL_KEYS, turns)) <= summary["eval"][when].keys()
        assert f"acc_t{turns + 1}" not in summary["eval"][when]
    return scalars, summary


# This run's numbers, timings left out: the default rollout.turns=2 must give them to the last digit (same
# machine type; vLLM samples with the seed). Recorded on main before K-turn episodes (commit 00b0e2b); re-recorded
# once, when the fused head's float32 arithmetic changed (issue 16): the same samples and evaluation accuracies,
# every statistic within 2e-5 relative but logprob_mismatch (4.3e-6 -> 9.5e-6, rounding of a near-zero gap);
# and its ECE once more (issue 29), when evaluation took confidences from vLLM's logprobs: ECE moved by < 1e-8.
# Re-recorded when builtin:arith lost its validation problems (issue 30): the same evaluation before training
# (the eval split and the base model are unchanged: with the old train split this run still gave the old
# record to the last digit, after the base model went to 512 positions and the context became sized), other
# training prompts from there on. Re-recorded with the packed learner (issue 31, learner.packing=true by default):
# with learner.packing=false the run still gives the previous record to the last digit (plus perf/pad_frac);
# packed, the same samples, rewards, accuracies and evaluation accuracies, every other statistic within 5e-6
# relative but logprob_mismatch (5.0e-6 vs 7.2e-6, a near-zero gap).
K2_TRAJECTORY = Path(__file__).parent / "data" / "k2_trajectory.json"
TIMINGS = {"sync_s", "rollout_s", "score_s", "update_s", "idle_s", "step_seconds"}


def _trajectory(run_dir) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"history": [{k: v for k, v in h.items() if k not in TIMINGS} for h in summary["train"]["history"]],
            "eval_before": summary["eval"]["before"], "eval_after": summary["eval"]["after"],
            "samples": [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()][:8]}


def test_two_step_training_run(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script([
        sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
        "train.steps=2", "algo.stage1_steps=1", "eval.problems=24", "rollout.prompts_per_step=4",
        "log.text_every=1", "log.text_episodes=2", f"train.output_dir={run_dir}",
    ], timeout=600)
    scalars, summary = _check_run_dir(run_dir, steps=2)
    assert summary["eval"]["before"]["n"] == 24
    assert scalars["train/stage"] == [1.0, 2.0]
    assert len(scalars["train/acc_t1"]) == 2  # the data has answers
    assert_weights_synced(summary["train"]["history"])
    _, texts, _ = _read_events(run_dir / "tb")
    assert len(texts["episodes/text_summary"]) == 2 and "**y2** (r2 " in texts["episodes/text_summary"][0]
    # the progress line: step, stage, rewards, gold accuracy, KL, step time, ETA
    assert _trajectory(run_dir) == json.loads(K2_TRAJECTORY.read_text())  # rollout.turns=2 is today's run
    assert re.search(r"\[step 2/2\] stage 2 \| reward [\d.]+/[\d.]+ \| acc [\d.]+/[\d.]+ \| kl [\d.]+/[\d.]+ \| "
                     r"[\d.]+s \| eta 0m00s", proc.stdout), proc.stdout[-2000:]
    # quiet, honest output: nothing failed, so no terminal line says so, and no start-up chatter or warning
    # is left; train.log keeps every line, the hidden benign ones too (vLLM's "Failed to load weights" for
    # the rotary cache at each sync, its CPU warnings)
    terminal = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in terminal if re.search(r"fail|error|warn|INFO", line, re.IGNORECASE)], terminal
    log = (run_dir / "train.log").read_text()
    assert "[step 2/2] stage 2" in log and "RotaryEmbedding: Failed to load weights" in log
    assert "Enforce eager set" in log and "Loading weights" in log


@pytest.mark.parametrize("turns", [1, 3])  # 3 on the defaults: the unset context is sized to fit
def test_k_turn_training_run(tiny_model_dir, tmp_path, turns):
    """rollout.turns=1 (single-turn RL) and 3 (two corrections) train end to end: per-turn rewards, KL, gold
    accuracy, samples and evaluation metrics for turns 1..K and none beyond, and the weights in sync."""
    run_dir = tmp_path / "run"
    proc = run_script([
        sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
        f"rollout.turns={turns}", "train.steps=2", "algo.stage1_steps=1", "eval.problems=8",
        "rollout.prompts_per_step=4", "log.text_every=1", "log.text_episodes=2", f"train.output_dir={run_dir}",
    ], timeout=600)
    scalars, summary = _check_run_dir(run_dir, steps=2, turns=turns)
    ks = range(1, turns + 1)
    assert scalars["train/stage"] == [1.0, 2.0]
    history = summary["train"]["history"]
    for step in history:
        for name in ("reward", "kl", "acc"):
            assert all(math.isfinite(step[f"{name}_t{k}"]) for k in ks), (name, step)
            assert f"{name}_t{turns + 1}" not in step, name
    # the first update scores the base model against itself; after it the policy has moved on every turn
    assert [history[0][f"kl_t{k}"] for k in ks] == [0.0] * turns
    assert all(history[1][f"kl_t{k}"] > 0 for k in ks), history[1]
    assert_weights_synced(history)
    after = summary["eval"]["after"]
    assert after["n"] == 8 and all(0.0 <= after[f"acc_t{k}"] <= 1.0 for k in ks)
    assert after["delta"] == pytest.approx(after[f"acc_t{turns}"] - after["acc_t1"])
    if turns > 2:  # each consecutive move, evaluated and logged
        moves = [f"delta_{kind}_t{k}" for k in range(2, turns + 1) for kind in ("i2c", "c2i")]
        assert all(0.0 <= after[key] <= 1.0 for key in moves) and all(f"eval/{key}" in scalars for key in moves)
    _, texts, _ = _read_events(run_dir / "tb")
    assert f"**y{turns}** (r{turns} " in texts["episodes/text_summary"][0]
    assert f"**y{turns + 1}**" not in texts["episodes/text_summary"][0]
    # the progress line: K rewards, K gold accuracies and K KLs, each separated by '/'
    each = "/".join([r"[\d.]+"] * turns)
    assert re.search(rf"\[step 2/2\] stage 2 \| reward {each} \| acc {each} \| kl {each} \| [\d.]+s \| eta 0m00s",
                     proc.stdout), proc.stdout[-2000:]
    assert re.search(r"\[eval\] step 2: " + " ".join(f"acc_t{k} [\\d.]+" for k in ks) + " delta", proc.stdout)


def test_self_reward_trains_on_prompts_without_answers(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    guard_file = tmp_path / "guard.jsonl"  # 3 labelled problems: the guard's evaluation must be of these
    guard_file.write_text("".join(json.dumps({"prompt": f"{a}+{a}=?", "answer": str(2 * a)}) + "\n"
                                  for a in (21, 32, 43)))
    proc = run_script([
        sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
        "data.train=tests/data/prompts_only.jsonl", "reward.kind=confidence", "train.steps=2",
        "eval.problems=8", "rollout.prompts_per_step=4", f"train.output_dir={run_dir}",
        "guard.min_entropy=100",  # an entropy floor no model meets: the guard warns every step
        "guard.patience=1", "eval.every=1",  # and the evaluation watch still sees the step-1 evaluation
        f"guard.data={guard_file}",
    ], timeout=600)
    scalars, summary = _check_run_dir(run_dir, steps=2)
    assert len(summary["train"]["guard_alarms"]) == 2 and "guard.min_entropy=100" in summary["train"]["guard_alarms"][0]
    meta = json.loads((run_dir / "checkpoints" / "step-000002" / "meta.json").read_text())
    assert len(meta["guard_history"]) == 1  # an entropy alarm must not hide the evaluation from the guard
    # the guard's accuracy comes from guard.data (validation), said at start-up, not from data.eval
    assert meta["guard_history"][0][1] == pytest.approx(scalars["guard/accuracy"][0])
    assert len(scalars["guard/accuracy"]) == 1 and len(scalars["eval/acc_t2"]) == 3  # before, step 1, after
    assert (f"[guard] guard.patience=1 reads gold labels: every eval.every=1 steps it evaluates 8 problems of "
            f"guard.data={guard_file}") in proc.stdout
    # evaluations of data.eval (8 problems) before, at step 1 and after; the guard's (3) once, at step 1
    assert proc.stdout.count("[sample] turn 1/2: 8 answers to 8 prompts") == 3, proc.stdout[-3000:]
    assert proc.stdout.count("[sample] turn 1/2: 3 answers to 3 prompts") == 1, proc.stdout[-3000:]
    assert len(scalars["train/entropy"]) == 2 and all(e > 0 for e in scalars["train/entropy"])
    assert all(0.0 <= f <= 1.0 for f in scalars["train/no_answer_frac"])
    assert "train/acc_t1" not in scalars  # no answers in the data: no gold accuracy to show


def test_two_ranks_zero3(tiny_model_dir, tmp_path):
    """The launch from the issue, on a small model and eval set: 2 CPU ranks, ZeRO-3, 3 steps so the
    last mismatch is measured after 2 updates. A persistence threshold of 0 splits even the tiny model's
    matrices (at the default every one stays whole). 5 evaluation problems split 3 / 2 over the ranks (the
    evaluation runs no learner forward; uneven scoring forwards are tested in tests/test_zero3_partition.py), and
    micro-batches of 2 give the update several collective forwards per rank."""
    run_dir = tmp_path / "run2r"
    from engine.runtime.distributed import free_port

    proc = run_script([
        "deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "engine/train.py", "configs/default.yaml",
        "train.steps=3", "deepspeed.zero_stage=3", "deepspeed.param_persistence_threshold=0",
        f"model.path={tiny_model_dir}", "eval.problems=5", "train.micro_batch_size=2",
        "rollout.prompts_per_step=4", f"train.output_dir={run_dir}",
    ], timeout=900)
    _, summary = _check_run_dir(run_dir, steps=3)
    assert_weights_synced(summary["train"]["history"])
    assert summary["eval"]["after"]["n"] == 5  # both ranks' shards gathered
    for what in ("policy", "reference"):  # every parameter of more than one element is a shard on each rank
        counts = re.search(rf"\[zero3\] {what}: (\d+) of (\d+) parameters partitioned", proc.stdout)
        assert counts and counts[1] == counts[2], proc.stdout[-3000:]


def test_guard_stop_saves_the_policy_and_ends_early(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_script([
        sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}", "train.steps=3",
        "eval.problems=8", "rollout.prompts_per_step=4", f"train.output_dir={run_dir}",
        "guard.min_entropy=100", "guard.action=stop",
    ], timeout=600)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 1 and len(summary["train"]["guard_alarms"]) == 1
    saved = run_dir / "checkpoints" / "guard-stop-step1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(saved)
    assert AutoTokenizer.from_pretrained(saved).eos_token == "<|im_end|>"
    assert model.config.tie_word_embeddings
