import math

import pytest
import torch

from engine.loop.metrics import correction_metrics


def test_correction_metrics_by_hand():
    # 4 problems: wrong->right, right->right, right->wrong, wrong->wrong
    c1 = torch.tensor([0, 1, 1, 0])
    c2 = torch.tensor([1, 1, 0, 0])
    m = correction_metrics([c1, c2])
    assert m["acc_t1"] == 0.5 and m["acc_t2"] == 0.5 and m["n"] == 4
    assert m["delta"] == 0.0 and m["delta_i2c"] == 0.25 and m["delta_c2i"] == 0.25
    assert m["se_acc_t1"] == pytest.approx(math.sqrt(0.25 / 4))
    # diffs [1, 0, -1, 0]: population std sqrt(0.5), over sqrt(4)
    assert m["se_delta"] == pytest.approx(math.sqrt(0.5) / 2)


def test_delta_is_i2c_minus_c2i():
    g = torch.Generator().manual_seed(0)
    c1 = torch.randint(0, 2, (100,), generator=g)
    c2 = torch.randint(0, 2, (100,), generator=g)
    m = correction_metrics([c1, c2])
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])
    assert m["delta"] == pytest.approx(m["acc_t2"] - m["acc_t1"])


def test_correction_metrics_of_three_turns_by_hand():
    # 4 problems over turns 1, 2, 3: wrong-right-right, right-right-wrong, right-wrong-right, wrong-wrong-right
    c1 = torch.tensor([0, 1, 1, 0])
    c2 = torch.tensor([1, 1, 0, 0])
    c3 = torch.tensor([1, 0, 1, 1])
    m = correction_metrics([c1, c2, c3])
    assert (m["acc_t1"], m["acc_t2"], m["acc_t3"], m["n"]) == (0.5, 0.5, 0.75, 4)
    assert m["se_acc_t3"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    # t1 -> t3: problems 0 and 3 wrong then right, problem 1 right then wrong
    assert m["delta"] == 0.25 and m["delta_i2c"] == 0.5 and m["delta_c2i"] == 0.25
    # diffs [1, -1, 0, 1]: mean 1/4, population variance 3/4 - 1/16 = 11/16, over sqrt(4)
    assert m["se_delta"] == pytest.approx(math.sqrt(11 / 16) / 2)
    assert m["se_delta_i2c"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    assert m["se_delta_c2i"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    # consecutive moves: t1 -> t2 fixes problem 0 and breaks problem 2; t2 -> t3 fixes 2 and 3 and breaks 1
    assert m["delta_i2c_t2"] == 0.25 and m["delta_c2i_t2"] == 0.25
    assert m["delta_i2c_t3"] == 0.5 and m["delta_c2i_t3"] == 0.25
    assert m["se_delta_i2c_t3"] == pytest.approx(math.sqrt(0.5 * 0.5 / 4))
    assert m["se_delta_c2i_t2"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert "acc_t4" not in m and "delta_i2c_t4" not in m and "delta_i2c_t1" not in m
    # two turns have no per-move keys: their one move is delta_i2c / delta_c2i
    assert not any(key.endswith("_t2") and key.startswith(("delta", "se_delta")) for key in correction_metrics([c1, c2]))


def test_correction_metrics_of_one_turn():
    m = correction_metrics([torch.tensor([1, 0, 1, 1])])
    assert m["acc_t1"] == 0.75 and m["n"] == 4 and "acc_t2" not in m
    assert m["delta"] == 0.0 and m["delta_i2c"] == 0.0 and m["delta_c2i"] == 0.0 and m["se_delta"] == 0.0


def test_calibration_metrics_of_three_turns():
    from engine.loop.metrics import calibration_metrics

    conf, correct = torch.full((4,), 0.875), torch.ones(4)  # ECE 0.125 with se 0, as turn 1 below
    m = calibration_metrics([conf, conf * 0 + 0.5, conf], [correct, torch.tensor([1, 0, 1, 0]), correct * 0])
    assert m["ece_t1"] == pytest.approx(0.125) and m["ece_t2"] == pytest.approx(0.0)
    assert m["ece_t3"] == pytest.approx(0.875) and m["se_ece_t3"] == 0.0 and "ece_t4" not in m


def test_ece_by_hand():
    from engine.loop.metrics import expected_calibration_error

    # bin [0.9, 1.0]: confidences 0.95, 1.0 with 1 of 2 right -> |0.5 - 0.975| = 0.475, weight 2/4
    # bin [0.2, 0.3): confidences 0.25, 0.25 with 0 of 2 right -> |0 - 0.25| = 0.25, weight 2/4
    conf = torch.tensor([0.95, 1.0, 0.25, 0.25])
    correct = torch.tensor([1, 0, 0, 0])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.475 + 0.5 * 0.25)
    # perfectly calibrated: confidence equals accuracy in each bin
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.0)


def test_calibration_metrics_per_turn_by_hand():
    from engine.loop.metrics import calibration_metrics

    # turn 1: four answers at confidence 0.875, all right -> every bootstrap resample has ECE 0.125, so se 0
    conf1, correct1 = torch.full((4,), 0.875), torch.ones(4)
    # turn 2: bin [0.3, 0.4) at 0.35 with 0 of 2 right -> 0.35; bin [0.8, 0.9) at 0.85 with 2 of 2 -> 0.15;
    # each weighs 2/4 -> 0.25 (one bin over all four would give |0.5 - 0.6| = 0.1)
    conf2, correct2 = torch.tensor([0.35, 0.35, 0.85, 0.85]), torch.tensor([0, 0, 1, 1])
    m = calibration_metrics([conf1, conf2], [correct1, correct2])
    assert m["ece_t1"] == pytest.approx(0.125) and m["ece_t2"] == pytest.approx(0.25)
    assert m["se_ece_t1"] == 0.0 and m["se_ece_t2"] > 0.0


def test_calibration_standard_error_shrinks_with_more_data():
    from engine.loop.metrics import calibration_metrics

    g = torch.Generator().manual_seed(1)
    conf = torch.rand(800, generator=g)
    correct = (torch.rand(800, generator=g) < conf).float()
    m = calibration_metrics([conf[:50], conf], [correct[:50], correct])
    # a bootstrap standard error falls about as 1/sqrt(n): 16 times the data, roughly a quarter of the error
    assert 0 < m["se_ece_t2"] < m["se_ece_t1"] / 2 < 0.1


def test_samples_and_episode_text_carry_every_turn(tmp_path):
    import json

    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.loop.metrics import RunLogger
    from tests.test_episodes import _chain

    tok = build_char_tokenizer()
    episodes = [_chain(tok, "2+3=?", ["Final Answer: 6", "Final Answer: 4", "Final Answer: 5"]),
                _chain(tok, "1+1=?", ["a", "b", "c"])]
    rewards = [torch.tensor([0.0, 0.25]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.125])]
    logger = RunLogger(tmp_path, enabled=True)
    texts = []
    logger.writer.close()
    logger.writer = type("Writer", (), {"add_text": lambda self, tag, text, step: texts.append((tag, text, step)),
                                        "flush": lambda self: None, "close": lambda self: None})()
    logger.samples(3, episodes, rewards, limit=1)
    lines = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "prompt": "2+3=?", "answer": "5", "turn1": "Final Answer: 6",
                      "turn2": "Final Answer: 4", "turn3": "Final Answer: 5", "reward_t1": 0.0, "reward_t2": 0.5,
                      "reward_t3": 1.0}]
    logger.episodes_text(3, episodes, rewards, limit=2)
    ((tag, text, step),) = texts
    assert tag == "episodes" and step == 3
    assert "**y3** (r3 1.000) `Final Answer: 5`" in text and "**y3** (r3 0.125) `c`" in text
    assert "**y2** (r2 0.000) `b`" in text and "**y4**" not in text and text.count("**prompt**") == 2
