"""`python -m engine.evaluate`: any model folder scored with the trainer's evaluation code, a table on
stdout and the metrics (with standard errors) as JSON; bad input gets one `error:` line."""

import json
import math
import re
import subprocess
import sys

import pytest

from engine.loop.metrics import edit_distance_ratio, turn_shape_metrics
from tests.conftest import ROOT, run_script


def _table_levenshtein(first, second):
    """The textbook cell-by-cell table: the oracle for the bit-vector version."""
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def test_bit_vector_levenshtein_equals_the_table():
    import random

    from engine.loop.metrics import levenshtein

    assert levenshtein([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # drop the head, add a tail
    assert levenshtein([7] * 70, [7] * 65 + [8]) == 5  # past 64 tokens: one machine word is not enough
    rng = random.Random(0)
    for _ in range(2000):  # small alphabets: many matches, the hard case for the carries
        first = [rng.randrange(3) for _ in range(rng.randrange(0, 25))]
        second = [rng.randrange(3) for _ in range(rng.randrange(0, 25))]
        assert levenshtein(first, second) == _table_levenshtein(first, second), (first, second)
    first, second = [rng.randrange(40) for _ in range(300)], [rng.randrange(40) for _ in range(280)]
    assert levenshtein(first, second) == _table_levenshtein(first, second)


def test_edit_distance_ratio_by_hand():
    assert edit_distance_ratio([1, 2, 3], [1, 2, 3]) == 0.0  # a copy
    assert edit_distance_ratio([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)  # one deletion over 3 tokens
    assert edit_distance_ratio([1, 2], [3, 4, 5, 6]) == 1.0  # nothing kept: 2 substitutions + 2 insertions
    assert edit_distance_ratio([], []) == 0.0
    import torch

    m = turn_shape_metrics([torch.tensor([2, 4]), torch.tensor([3, 3])], [torch.tensor([0.0, 0.5])])
    assert (m["len_t1"], m["len_t2"], m["edit_ratio"]) == (3.0, 3.0, 0.25)
    assert m["se_len_t1"] == pytest.approx(1 / 2 ** 0.5) and m["se_len_t2"] == 0.0


def test_turn_shape_metrics_of_three_turns_by_hand():
    import torch

    m = turn_shape_metrics([torch.tensor([2, 4]), torch.tensor([3, 3]), torch.tensor([1, 5])],
                           [torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.5])])
    assert (m["len_t1"], m["len_t2"], m["len_t3"]) == (3.0, 3.0, 3.0)
    assert (m["edit_ratio"], m["edit_ratio_t3"]) == (0.25, 0.75)  # t1 -> t2, then t2 -> t3
    assert m["se_len_t3"] == pytest.approx(2 / 2 ** 0.5) and m["se_edit_ratio_t3"] == pytest.approx(0.25 / 2 ** 0.5)
    assert "edit_ratio_t2" not in m and "len_t4" not in m
    one = turn_shape_metrics([torch.tensor([2, 4])], [])  # one turn: a length, no edit ratio
    assert set(one) == {"len_t1", "se_len_t1"} and one["len_t1"] == 3.0


def test_table_rows_name_every_turn():
    from engine.evaluate import format_table, table_rows

    keys = [key for _, key in table_rows(2)]
    assert keys == ["acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "ece_t1", "ece_t2", "len_t1", "len_t2",
                    "edit_ratio"]
    rows = dict((key, label) for label, key in table_rows(3))
    assert rows["acc_t3"] == "Acc@t3" and rows["delta"] == "Δ(t1,t3)" and rows["edit_ratio_t3"] == "edit ratio t2→t3"
    assert rows["delta_i2c_t2"] == "Δ i→c (t1→t2)" and rows["delta_c2i_t3"] == "Δ c→i (t2→t3)"
    assert rows["edit_ratio"] == "edit ratio t1→t2" and "acc_t4" not in rows
    assert [key for _, key in table_rows(1)][:2] == ["acc_t1", "delta"] and "edit_ratio" not in dict(table_rows(1)).values()
    metrics = {"n": 4, "acc_t1": 0.25, "se_acc_t1": 0.1, "acc_t2": 0.5, "acc_t3": 0.75, "delta_i2c_t3": 0.25}
    table = format_table(metrics)
    assert "| Acc@t3 | 0.750 | nan |" in table and "| Δ i→c (t2→t3) | 0.250 | nan |" in table
    assert "| Acc@t1 | 0.250 | 0.100 |" in table and table.startswith("| metric (n=4) |")


def test_eval_confidence_is_the_sampled_answer_tokens_probability():
    """ECE reads p(answer tokens) from the log-probs vLLM returned with the sampled tokens (no forward pass):
    with the char tokenizer the answer "5" / "6" is the 15th sampled token of each turn, sampled at log-prob
    -0.1 * 15 (tests/test_episodes.py's completions); turn 1 is right (gold 5), turn 2 wrong."""
    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.evaluate import eval_metrics
    from tests.test_episodes import _episode

    tok = build_char_tokenizer()
    metrics = eval_metrics([_episode(tok, "2+3=?", "Final Answer: 5", "Final Answer: 6")], tok)
    p = math.exp(-1.5)
    assert metrics["acc_t1"] == 1.0 and metrics["acc_t2"] == 0.0
    assert metrics["ece_t1"] == pytest.approx(1 - p, abs=1e-6) and metrics["ece_t2"] == pytest.approx(p, abs=1e-6)


@pytest.mark.slow
def test_evaluate_cli_scores_a_model_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    proc = run_script([sys.executable, "-m", "engine.evaluate", "configs/default.yaml", f"model.path={tiny_model_dir}",
                       "eval.problems=16", "--json", str(out)], timeout=600)
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 16 and metrics["model"] == str(tiny_model_dir)
    for key in ("acc_t1", "acc_t2", "delta_i2c", "delta_c2i", "ece_t1", "ece_t2", "edit_ratio"):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[f"se_{key}"] >= 0.0, key
    assert metrics["delta"] == pytest.approx(metrics["delta_i2c"] - metrics["delta_c2i"])
    assert metrics["len_t1"] > 0 and "se_delta" in metrics
    assert "| Acc@t2 |" in proc.stdout and "| edit ratio t1→t2 |" in proc.stdout
    # progress: each turn is named before vLLM's bar (with its ETA) runs
    assert "[sample] turn 1/2: 16 answers to 16 prompts" in proc.stdout
    assert "[sample] turn 2/2: 16 corrections" in proc.stdout
    # the trainer's quiet terminal: no library chatter or benign warning; evaluate.log beside the JSON keeps all
    terminal = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in terminal if re.search(r"fail|error|warn|INFO", line, re.IGNORECASE)], terminal
    log = (tmp_path / "evaluate.log").read_text()
    assert f"[done] every line of this run: {tmp_path / 'evaluate.log'}" in proc.stdout
    assert "Enforce eager set" in log and "| Acc@t2 |" in log


@pytest.mark.slow
def test_evaluate_cli_scores_three_turn_refinement_chains(tiny_model_dir, tmp_path):
    """rollout.turns=3 at evaluation (rollout.max_model_len unset: sized to the longest episode; shorter turns
    keep the test short): Acc@t1..t3, the t1 -> t3 delta and each consecutive move."""
    out = tmp_path / "eval.json"
    proc = run_script([sys.executable, "-m", "engine.evaluate", "configs/default.yaml", f"model.path={tiny_model_dir}",
                       "eval.problems=8", "rollout.turns=3", "rollout.max_tokens=40",
                       "rollout.correction_instruction=Check.", "--json", str(out)], timeout=600)
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 8 and metrics["turns"] == 3
    for key in ("acc_t1", "acc_t2", "acc_t3", "delta_i2c", "delta_c2i", "delta_i2c_t2", "delta_c2i_t2",
                "delta_i2c_t3", "delta_c2i_t3", "ece_t1", "ece_t2", "ece_t3", "edit_ratio", "edit_ratio_t3"):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[f"se_{key}"] >= 0.0, key
    assert "acc_t4" not in metrics and "len_t4" not in metrics and metrics["len_t3"] > 0
    assert metrics["delta"] == pytest.approx(metrics["acc_t3"] - metrics["acc_t1"])
    assert metrics["delta"] == pytest.approx(metrics["delta_i2c"] - metrics["delta_c2i"])
    for k in (2, 3):  # each consecutive move: Acc@tk - Acc@t(k-1) = i2c - c2i
        assert metrics[f"acc_t{k}"] - metrics[f"acc_t{k - 1}"] == pytest.approx(
            metrics[f"delta_i2c_t{k}"] - metrics[f"delta_c2i_t{k}"]), k
    assert "[context] rollout.max_model_len=" in proc.stdout and "3-turn episode" in proc.stdout
    assert "3 turns" in proc.stdout and "| Acc@t3 |" in proc.stdout and "| Δ(t1,t3) |" in proc.stdout
    assert "| edit ratio t2→t3 |" in proc.stdout and "| Δ i→c (t2→t3) |" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["model.path=/nonexistent"], "model.path='/nonexistent' is not a folder with a config.json"),
    (["--json"], "--json needs a path"),
    (["eval.problemz=3"], "Did you mean 'eval.problems'"),
])
def test_evaluate_cli_errors(args, needle):
    proc = subprocess.run([sys.executable, "-m", "engine.evaluate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and f"error: " in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
