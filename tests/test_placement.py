"""Dedicated rollout workers: the layout, the bucketed weight stream, and real 2-rank launches (1 learner,
1 vLLM worker) in synchronous and asynchronous mode, and with the worker killed mid-run."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.base.errors import UserError
from engine.runtime.placement import plan_placement
from rollout.weight_sync import WeightSpec, plan_buckets, receive_weights, send_weights, weight_spec
from tests.conftest import ROOT, assert_weights_synced, run_script


def test_plan_places_workers_on_the_last_ranks():
    p = plan_placement("dedicated", 2, rank=3, world=5)
    assert p.learners == 3 and p.worker_ranks == [3, 4] and p.is_worker
    assert not plan_placement("dedicated", 2, rank=2, world=5).is_worker
    assert plan_placement("colocated", 2, rank=1, world=2).workers == 0
    with pytest.raises(UserError, match="needs 1 <= rollout.workers < the number of ranks; got rollout.workers=1 "
                                        "with 1 rank"):
        plan_placement("dedicated", 1, rank=0, world=1)


def test_buckets_fill_to_the_size_and_break_on_dtype():
    spec = WeightSpec(names=list("abcde"), shapes=[(4,), (2, 2), (10,), (1,), (3,)],
                      dtypes=["float32"] * 4 + ["bfloat16"])
    # bytes 16, 16, 40, 4 (fp32) then 6 (bf16); buckets of 32 bytes
    assert plan_buckets(spec, 32) == [[0, 1], [2], [3], [4]]
    assert plan_buckets(spec, 1000) == [[0, 1, 2, 3], [4]]


def test_weight_stream_round_trip_keeps_names_shapes_and_tied_head(tiny_model_dir):
    """Learner 0's buckets, received by a worker, are the full state_dict, tied lm_head included."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    sent = []
    send_weights(model, zero_stage=0, is_sender=True, broadcast=sent.append, bucket_bytes=100_000)
    pending = iter(sent)
    received = dict(receive_weights(weight_spec(model), 100_000, lambda t: t.copy_(next(pending))))
    state = model.state_dict()
    assert len(sent) > 3 and set(received) == set(state) and "lm_head.weight" in received
    for name, value in state.items():
        assert torch.equal(received[name], value), name


def _launch(model_dir, run_dir, *extra):
    from engine.runtime.distributed import free_port

    return ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "engine/train.py",
            "configs/default.yaml", f"model.path={model_dir}", "rollout.placement=dedicated", "rollout.workers=1",
            "eval.problems=8", "eval.every=2", "rollout.prompts_per_step=4", "train.steps=3", "train.save_every=0",
            f"train.output_dir={run_dir}", *extra]


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_dedicated_sync_and_async_runs(tiny_model_dir, tmp_path):
    """W=2: learner rank 0, vLLM worker rank 1. Synchronous: vLLM's log-probs match the learner's after
    every weight sync. rollout.async=true with max_staleness=0 is the synchronous run; with 1 it overlaps."""
    sync = _summary_after(run_script(_launch(tiny_model_dir, tmp_path / "sync"), timeout=900), tmp_path / "sync")
    assert sync["train"]["steps"] == 3 and sync["eval"]["after"]["n"] == 8
    assert_weights_synced(sync["train"]["history"])
    assert all(s["idle_s"] > 0 for s in sync["train"]["history"])  # the learner waited for the worker
    assert all(s["policy_lag"] == 0 for s in sync["train"]["history"])

    zero = _summary_after(run_script(_launch(tiny_model_dir, tmp_path / "async0", "rollout.async=true",
                                             "rollout.max_staleness=0"), timeout=900), tmp_path / "async0")
    for a, b in zip(sync["train"]["history"], zero["train"]["history"]):
        for key in ("loss", "reward_t1", "reward_t2", "kl_t1", "kl_t2", "grad_norm", "logprob_mismatch"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert zero["eval"]["after"] == sync["eval"]["after"]

    stale_dir = tmp_path / "async1"
    stale_run = _launch(tiny_model_dir, stale_dir, "rollout.async=true", "train.save_every=2")
    stale = _summary_after(run_script(stale_run, timeout=900), stale_dir)
    mismatch = stale["train"]["logprob_mismatch_per_step"]
    assert stale["train"]["steps"] == 3 and mismatch[0] <= 1e-3  # step 0's batch came from the first weights
    assert mismatch[1] > 1e-3  # batch 1 was sampled before update 0 landed: one update stale
    # Batch 0 and batch 1 are requested at the start (weights v0); batch 2 after update 1 (v1).
    assert [s["policy_lag"] for s in stale["train"]["history"]] == [0, 1, 1]

    # Resume from the step-2 checkpoint: the workers (fresh, holding the base model) must get v2 before
    # batch 2 is requested; sampled by the base model, that batch would lag 2 updates > max_staleness.
    shutil.rmtree(stale_dir / "checkpoints" / "step-000003")
    (stale_dir / "summary.json").unlink()
    resumed = run_script(_launch(tiny_model_dir, stale_dir, "rollout.async=true", "train.save_every=2"),
                         timeout=900)  # the same run, on a fresh port
    assert "[resume] continuing from" in resumed.stdout
    lags = [s["policy_lag"] for s in _summary_after(resumed, stale_dir)["train"]["history"]]
    assert lags == [0, 1, 0]  # steps 0-1 from the checkpoint; batch 2 sampled by the restored v2


def _summary_after(proc, run_dir):
    assert "Traceback" not in proc.stderr
    return _summary(run_dir)


@pytest.mark.slow
def test_a_killed_worker_stops_the_learners_with_a_checkpoint(tiny_model_dir, tmp_path):
    import psutil

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_launch(tiny_model_dir, run_dir, "train.steps=50", "eval.every=0",
                                    "rollout.worker_timeout_s=60"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (run_dir / "samples.jsonl").is_file():  # a step has finished
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    ranks = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children(recursive=True)
             if "engine/train.py" in " ".join(p.cmdline())}
    ranks[1].send_signal(signal.SIGKILL)  # the rollout worker
    killed = time.time()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and time.time() - killed < 60, out[-4000:]
    assert "error: rollout worker rank 1 stopped answering" in out, out[-4000:]
    from engine.runtime.checkpoint import latest_checkpoint

    saved = latest_checkpoint(run_dir)
    assert saved is not None and json.loads((saved / "meta.json").read_text())["step"] >= 1


@pytest.mark.slow
def test_two_nodes_on_one_machine(tiny_model_dir, tmp_path):
    """The multi-node launch of docs/architecture.md, as two 'nodes' on 127.0.0.1: node 0 holds the learner,
    node 1 the rollout worker; each is its own `deepspeed --no_ssh --node_rank N` launcher."""
    from engine.runtime.distributed import free_port

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    run_dir = tmp_path / "run"
    args = ["engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}", "rollout.placement=dedicated",
            "rollout.workers=1", "eval.problems=8", "eval.every=0", "rollout.prompts_per_step=4", "train.steps=2",
            f"train.output_dir={run_dir}"]
    launchers = [subprocess.Popen(["deepspeed", "--hostfile", str(hostfile), "--no_ssh", f"--node_rank={node}",
                                   "--master_addr", "127.0.0.1", "--master_port", str(port), *args],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for node in (0, 1)]
    outputs = [p.communicate(timeout=900)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = _summary(run_dir)
    assert summary["train"]["steps"] == 2
    assert_weights_synced(summary["train"]["history"])


@pytest.mark.slow
def test_two_learners_zero3_and_one_worker(tiny_model_dir, tmp_path):
    """W=3: ZeRO-3 shards over learner ranks 0 and 1 only; the weights reach the worker (rank 2) gathered
    module by module, and vLLM's log-probs then match the learners' after every sync."""
    from engine.runtime.distributed import free_port

    command = _launch(tiny_model_dir, tmp_path / "run", "deepspeed.zero_stage=3", "eval.every=0")
    command[2] = "3"  # --num_gpus
    command[4] = str(free_port())
    run_script(command, timeout=900)
    summary = _summary(tmp_path / "run")
    assert summary["train"]["steps"] == 3 and summary["eval"]["after"]["n"] == 8
    assert_weights_synced(summary["train"]["history"])
