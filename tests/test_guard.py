from engine.base.guard import CollapseGuard


def test_entropy_floor():
    guard = CollapseGuard(min_entropy=0.1, patience=0)
    assert guard.check_entropy(0.2) is None
    assert "0.0500" in guard.check_entropy(0.05)
    assert CollapseGuard(min_entropy=0.0, patience=0).check_entropy(0.0) is None  # off


def test_reward_up_accuracy_down_over_k_evals():
    guard = CollapseGuard(min_entropy=0.0, patience=2)
    assert guard.check_eval(0.50, 0.60) is None  # the first eval has nothing to compare with
    assert guard.check_eval(0.60, 0.55) is None  # one interval of divergence
    message = guard.check_eval(0.70, 0.50)  # two in a row
    assert message and "0.500 -> 0.700" in message and "0.600 -> 0.500" in message


def test_divergence_must_be_consecutive():
    guard = CollapseGuard(min_entropy=0.0, patience=2)
    for reward, acc in [(0.5, 0.6), (0.6, 0.55), (0.65, 0.58), (0.7, 0.57)]:
        assert guard.check_eval(reward, acc) is None  # accuracy rose once in between
    assert CollapseGuard(0.0, patience=0).check_eval(1.0, 0.0) is None
