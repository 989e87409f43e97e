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


def test_calibration_metrics_have_standard_errors():
    from engine.metrics import calibration_metrics

    g = torch.Generator().manual_seed(1)
    conf = torch.rand(200, generator=g)
    correct = (torch.rand(200, generator=g) < conf).float()
    m = calibration_metrics(conf, conf, correct, correct)
    assert m["ece_t1"] == m["ece_t2"] and 0 < m["se_ece_t1"] < 0.1
