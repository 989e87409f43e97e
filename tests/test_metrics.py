import math

import pytest
import torch

from engine.metrics import correction_metrics


def test_correction_metrics_by_hand():
    # 4 problems: wrong->right, right->right, right->wrong, wrong->wrong
    c1 = torch.tensor([0, 1, 1, 0])
    c2 = torch.tensor([1, 1, 0, 0])
    m = correction_metrics(c1, c2)
    assert m["acc_t1"] == 0.5 and m["acc_t2"] == 0.5 and m["n"] == 4
    assert m["delta"] == 0.0 and m["delta_i2c"] == 0.25 and m["delta_c2i"] == 0.25
    assert m["se_acc_t1"] == pytest.approx(math.sqrt(0.25 / 4))
    # diffs [1, 0, -1, 0]: population std sqrt(0.5), over sqrt(4)
    assert m["se_delta"] == pytest.approx(math.sqrt(0.5) / 2)


def test_delta_is_i2c_minus_c2i():
    g = torch.Generator().manual_seed(0)
    c1 = torch.randint(0, 2, (100,), generator=g)
    c2 = torch.randint(0, 2, (100,), generator=g)
    m = correction_metrics(c1, c2)
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])
    assert m["delta"] == pytest.approx(m["acc_t2"] - m["acc_t1"])


def test_ece_by_hand():
    from engine.metrics import expected_calibration_error

    # bin [0.9, 1.0]: confidences 0.95, 1.0 with 1 of 2 right -> |0.5 - 0.975| = 0.475, weight 2/4
    # bin [0.2, 0.3): confidences 0.25, 0.25 with 0 of 2 right -> |0 - 0.25| = 0.25, weight 2/4
    conf = torch.tensor([0.95, 1.0, 0.25, 0.25])
    correct = torch.tensor([1, 0, 0, 0])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.475 + 0.5 * 0.25)
    # perfectly calibrated: confidence equals accuracy in each bin
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.0)


def test_calibration_metrics_per_turn_by_hand():
    from engine.metrics import calibration_metrics

    # turn 1: four answers at confidence 0.875, all right -> every bootstrap resample has ECE 0.125, so se 0
    conf1, correct1 = torch.full((4,), 0.875), torch.ones(4)
    # turn 2: bin [0.3, 0.4) at 0.35 with 0 of 2 right -> 0.35; bin [0.8, 0.9) at 0.85 with 2 of 2 -> 0.15;
    # each weighs 2/4 -> 0.25 (one bin over all four would give |0.5 - 0.6| = 0.1)
    conf2, correct2 = torch.tensor([0.35, 0.35, 0.85, 0.85]), torch.tensor([0, 0, 1, 1])
    m = calibration_metrics(conf1, conf2, correct1, correct2)
    assert m["ece_t1"] == pytest.approx(0.125) and m["ece_t2"] == pytest.approx(0.25)
    assert m["se_ece_t1"] == 0.0 and m["se_ece_t2"] > 0.0


def test_calibration_standard_error_shrinks_with_more_data():
    from engine.metrics import calibration_metrics

    g = torch.Generator().manual_seed(1)
    conf = torch.rand(800, generator=g)
    correct = (torch.rand(800, generator=g) < conf).float()
    m = calibration_metrics(conf[:50], conf, correct[:50], correct)
    # a bootstrap standard error falls about as 1/sqrt(n): 16 times the data, roughly a quarter of the error
    assert 0 < m["se_ece_t2"] < m["se_ece_t1"] / 2 < 0.1
