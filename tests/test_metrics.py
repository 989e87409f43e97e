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
