"""bench/peers.py at its smallest (a 2-layer model of the same 32k vocabulary, one warm-up and one timed step of 8-token completions),
so that the benchmark cannot rot: every row runs or records why it cannot, and the work is the same."""

import importlib.util
import json
import sys

import pytest

from tests.conftest import run_script


@pytest.mark.slow
def test_the_peer_benchmark_runs_its_smallest_configuration(tmp_path):
    from bench.peers import PROMPT_WORDS, PROMPTS, ROWS, SAMPLES

    result_path = tmp_path / "peers.json"
    proc = run_script([sys.executable, "-m", "bench.peers", "--tiny", "--steps", "1", "--warmup", "1", "--tokens", "8",
                       "--out", str(tmp_path / "out"), "--json", str(result_path)], timeout=900)
    result = json.loads(result_path.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == list(ROWS) and result["tokens"] == 8 and result["parameters"] > 2_000_000
    # every prompt through the chat template: PROMPT_WORDS words (one token each, but the first, after a
    # newline, takes 3 byte tokens) and 19 template tokens; a tokenizer that AutoTokenizer reloads
    # differently (e.g. dropping the words) would change this
    assert result["prompt_tokens"] == [PROMPT_WORDS + 21]
    episodes = PROMPTS * SAMPLES
    for name, turns in (("engine-1turn", 1), ("engine-2turn", 2)):
        row = rows[name]
        assert "error" not in row, row
        assert row["sampled_tokens"] == episodes * 8 * turns  # every completion forced to exactly --tokens
        assert row["episodes_per_s"] == pytest.approx(episodes / row["step_s"])
        assert row["generation_s"] > 0 and row["update_s"] > 0 and row["steps_timed"] == 1
        assert row["peak_rss_gib"] > 0.2  # the polled process tree: torch, vLLM and the model at least
        # real updates: TRL's length reward gives a gradient, and by the timed (second) step the policy has
        # moved off the reference
        assert row["grad_norm"] > 0 and row["reference_drift"] > 0, row
    for name in ("trl-transformers", "trl-vllm-colocate"):
        row = rows[name]
        if importlib.util.find_spec("trl") is None:  # the default set-up has no TRL: the row says so
            assert row["error"] == "ModuleNotFoundError: No module named 'trl'", row
        elif "error" not in row:
            assert row["sampled_tokens"] == episodes * 8
    assert "| selfcorrect-rl, 1 turn (rollout.turns=1) |" in proc.stdout
