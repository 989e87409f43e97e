"""ZeRO-3 that really shards: the learner reports and checks how its parameters are split, and scoring with
uneven shares per rank (an evaluation of 5 problems on 2 ranks, micro-batches of 2) finishes, where each
forward is a collective that gathers the sharded weights."""

import json
import sys

import pytest
import torch
from torch import nn

from engine.update.learner import PartitionReport, check_partitioned, partition_report
from tests.conftest import run_script
from tests.test_learner import _wide_model


def test_whole_parameters_past_the_threshold_on_several_ranks_are_an_error():
    report = PartitionReport(parameters=3, partitioned=1, elements=400_100, local_elements=300_100,
                             whole=[("lm.model.embed_tokens.weight", 200_000), ("lm.model.norm.weight", 100)])
    with pytest.raises(RuntimeError, match=r"not partitioning the policy over 2 ranks: 1 parameter.* past "
                                           r"deepspeed\.param_persistence_threshold=100000.*embed_tokens\.weight "
                                           r"\(200000 elements\)"):
        check_partitioned(report, world=2, threshold=100_000, what="policy")
    check_partitioned(report, world=1, threshold=100_000, what="policy")  # one rank: nothing to split
    check_partitioned(report, world=2, threshold=200_000, what="policy")  # both at or under the threshold
    with pytest.raises(RuntimeError, match="2 parameter"):
        check_partitioned(report, world=2, threshold=0, what="policy")
    with pytest.raises(RuntimeError, match="no ZeRO-3 parameters at all"):
        check_partitioned(PartitionReport(), world=2, threshold=0, what="reference")
    # a single element cannot be split, whatever the threshold
    check_partitioned(PartitionReport(parameters=1, elements=1, local_elements=1, whole=[("scale", 1)]), world=2,
                      threshold=0, what="policy")


def test_the_report_counts_shards_and_parameters_kept_whole():
    """DeepSpeed's attributes, set by hand: a 12-element weight of which this rank holds 6, a 3-element bias
    kept whole (persistent; its shard is there too), and a parameter ZeRO-3 does not manage."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(1, 1, bias=False))
    weight, bias = model[0].weight, model[0].bias
    weight.ds_numel, weight.ds_tensor, weight.ds_persist = 12, torch.empty(6), False
    bias.ds_numel, bias.ds_tensor, bias.ds_persist = 3, torch.empty(2), True
    report = partition_report(model)
    assert (report.parameters, report.partitioned, report.elements, report.local_elements) == (2, 1, 15, 9)
    assert report.whole == [("0.bias", 3)] and report.local_share == pytest.approx(0.6)
    assert report.line("policy") == ("[zero3] policy: 1 of 2 parameters partitioned; this rank holds 60% of "
                                     "0.0M elements")


@pytest.mark.slow
@pytest.mark.timeout(300)  # a hang fails here (the script also ends its ranks after 150 s)
def test_two_ranks_really_shard_and_uneven_scoring_finishes(tmp_path):
    """A model whose large matrices are past DeepSpeed's default persistence threshold, on 2 ranks: each rank
    holds a shard of every such matrix of the policy and of the reference; rank 0 scores 3 rows (2 micro-batches)
    while rank 1 scores 2 (1), and an evaluation of 1 problem leaves rank 1 without any: both finish, and a
    share's rows score as they do in the whole batch."""
    from engine.runtime.distributed import free_port

    model = _wide_model(tmp_path / "wide")
    proc = run_script(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                       "tests/scripts/zero3_ranks.py", model, "100000"], timeout=280)
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert result["world"] == 2
    for rank, reports in enumerate(result["reports"]):
        for what in ("policy", "reference"):
            report = reports[what]
            # q/o projections and the MLP (10 matrices of 147k-393k elements); the rest is under 1e5
            assert report["partitioned"] == 10 and report["parameters"] == 26, (rank, what, report)
            assert all(n <= 100_000 for _, n in report["whole"]), (rank, what, report["whole"])
            assert report["local_elements"] < 0.6 * report["elements"], (rank, what, report)
    assert "[zero3] policy: 10 of 26 parameters partitioned" in proc.stdout
    assert result["share_error"] <= 1e-5
    assert (result["n_uneven"], result["n_lone"]) == (5, 1) and result["finite"]
