"""bench/peers.py at its smallest (a 2-layer model of the same 32k vocabulary, one step of 8-token completions),
so that the benchmark cannot rot: every row runs or records why it cannot, and the work is the same."""

import importlib.util
import json
import sys

import pytest

from tests.conftest import run_script


@pytest.mark.slow
def test_the_peer_benchmark_runs_its_smallest_configuration(tmp_path):
    from bench.peers import PROMPTS, ROWS, SAMPLES

    result_path = tmp_path / "peers.json"
    proc = run_script([sys.executable, "-m", "bench.peers", "--tiny", "--steps", "1", "--warmup", "0", "--tokens", "8",
                       "--out", str(tmp_path / "out"), "--json", str(result_path)], timeout=900)
    result = json.loads(result_path.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == list(ROWS) and result["tokens"] == 8 and result["parameters"] > 2_000_000
    episodes = PROMPTS * SAMPLES
    for name, turns in (("engine-1turn", 1), ("engine-2turn", 2)):
        row = rows[name]
        assert "error" not in row, row
        assert row["sampled_tokens"] == episodes * 8 * turns  # every completion forced to exactly --tokens
        assert row["episodes_per_s"] == pytest.approx(episodes / row["step_s"])
        assert row["generation_s"] > 0 and row["update_s"] > 0 and row["steps_timed"] == 1
        assert row["peak_rss_gib"] > 0.2  # the polled process tree: torch, vLLM and the model at least
    for name in ("trl-transformers", "trl-vllm-colocate"):
        row = rows[name]
        if importlib.util.find_spec("trl") is None:  # the default set-up has no TRL: the row says so
            assert row["error"] == "ModuleNotFoundError: No module named 'trl'", row
        elif "error" not in row:
            assert row["sampled_tokens"] == episodes * 8
    assert "| selfcorrect-rl, 1 turn (rollout.turns=1) |" in proc.stdout
