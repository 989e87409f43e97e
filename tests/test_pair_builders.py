"""Pair builders on hand-made episodes: which responses pair up, in which context, with which weight."""

import json
import math

import pytest

from engine.objectives.dpo_rounds import pair_schedule
from engine.objectives.pairs.builders import confidence_ranked, informative, refinement_and_direct
from engine.tasks.data import Problem
from rollout.episodes import Episode
from rollout.vllm_engine import Completion


def _c(ids):
    return Completion(token_ids=list(ids), logprobs=[0.0] * len(ids), text=" ".join(map(str, ids)), finished=True)


def _chain(group, prompt, turns):
    """An episode of len(turns) turns; turn k's context is the previous context, its answer and [99]."""
    contexts = [list(prompt)]
    for answer in turns[:-1]:
        contexts.append(contexts[-1] + list(answer) + [99])
    return Episode(Problem(f"q{group}", None), group, contexts, [_c(t) for t in turns])


def test_evolve_refinement_pairs_follow_the_reward_along_each_chain():
    ep = _chain(0, [1, 2], [[10], [11], [12]])
    pairs = refinement_and_direct([ep], rewards=[[0.2], [0.9], [0.4]], direct=False)
    # turn 2 (0.9) beats turn 1 (0.2), in turn 2's context; turn 3 (0.4) loses to turn 2, in turn 3's context
    assert [(p.chosen_ids, p.rejected_ids, p.context_ids) for p in pairs] == [
        ([11], [10], [1, 2, 10, 99]),
        ([11], [12], [1, 2, 10, 99, 11, 99]),
    ]
    assert [(p.chosen_score, p.rejected_score, p.weight, p.kind) for p in pairs] == [
        (0.9, 0.2, 1.0, "refine"), (0.9, 0.4, 1.0, "refine")]


def test_evolve_equal_rewards_give_no_pair_and_direct_pairs_stay_within_a_prompt():
    episodes = [_chain(0, [1], [[10], [10]]), _chain(0, [1], [[20], [21]]), _chain(1, [2], [[30], [31]])]
    rewards = [[0.5, 0.1, 0.9], [0.5, 0.1, 0.9]]  # no refinement changes its reward
    pairs = refinement_and_direct(episodes, rewards, direct=True)
    # only prompt 0 has two samples: its turn-1 answers pair by reward, in the prompt's context
    assert [(p.kind, p.chosen_ids, p.rejected_ids, p.context_ids) for p in pairs] == [("direct", [10], [20], [1])]


def test_rlsf_pairs_need_a_confident_winner_and_weigh_the_gap():
    episodes = [_chain(0, [1], [[10]]), _chain(0, [1], [[11]]), _chain(0, [1], [[12]]),
                _chain(1, [2], [[20]]), _chain(1, [2], [[21]])]
    confidence = [0.95, 0.5, 0.92, 0.8, 0.3]  # prompt 1 has no trace at the threshold
    pairs = confidence_ranked(episodes, confidence, threshold=0.9)
    got = [(p.chosen_ids, p.rejected_ids, round(p.weight, 6)) for p in pairs]
    assert got == [([10], [11], round(math.exp(0.45), 6)), ([10], [12], round(math.exp(0.03), 6)),
                   ([12], [11], round(math.exp(0.42), 6))]
    assert all(p.context_ids == [1] and p.kind == "confidence" for p in pairs)
    assert confidence_ranked(episodes, confidence, threshold=1.0) == []  # an empty round


def test_identical_responses_are_filtered():
    pairs = refinement_and_direct([_chain(0, [1], [[10, 1], [10, 1]])], rewards=[[0.1], [0.7]], direct=False)
    assert len(pairs) == 1 and informative(pairs) == []  # same tokens, different rewards: no signal to learn


def test_pair_schedule_fills_the_last_batch_and_covers_every_pair_each_epoch():
    updates = pair_schedule(pairs=5, batch_pairs=2, epochs=2, seed=0, rnd=0)
    assert len(updates) == 6 and all(len(u) == 2 for u in updates)
    for epoch in (updates[:3], updates[3:]):
        flat = [i for u in epoch for i in u]
        assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and flat[5] == flat[0]  # the filler is the epoch's first pair
    assert updates == pair_schedule(5, 2, 2, seed=0, rnd=0)  # seeded: a resumed run sees the same order
    assert updates[:3] != pair_schedule(5, 2, 2, seed=0, rnd=1)[:3]
    assert pair_schedule(0, 2, 2, 0, 0) == []


def test_threshold_outside_the_unit_interval_is_a_startup_error_naming_the_key():
    import pytest

    from engine.config.loading import ConfigError, load_config

    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=rf"pairs.threshold={bad} is outside \[0, 1\]"):
            load_config(["configs/rlsf_dpo.yaml", f"pairs.threshold={bad}"])
    assert load_config(["configs/rlsf_dpo.yaml", "pairs.threshold=1.0"]).pairs.threshold == 1.0


def test_a_round_saved_without_reference_logps_resumes_only_against_the_base_model(tmp_path):
    """A round's pairs file written before dpo.reference existed has no reference log-probs: resuming
    inside it with dpo.reference=previous is an error naming the file and the setting that finishes it;
    with dpo.reference=base it loads."""
    from types import SimpleNamespace

    from engine.base.errors import UserError
    from engine.config.loading import load_config
    from engine.objectives.dpo_rounds import load_pairs
    from engine.objectives.pairs.builders import PreferencePair

    old = PreferencePair(kind="direct", prompt="1+1=?", context_ids=[1], chosen_ids=[2], rejected_ids=[3],
                         chosen_text="2", rejected_text="3", chosen_score=1.0, rejected_score=0.0, weight=1.0).to_json()
    del old["reference_logps"]
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "round-001.jsonl").write_text(json.dumps(old) + "\n")

    def run(reference):
        cfg = load_config([f"train.output_dir={tmp_path}", f"dpo.reference={reference}"])
        return SimpleNamespace(cfg=cfg, log=lambda _: None)

    with pytest.raises(UserError, match=r"round-001.jsonl: its pairs have no reference log-probs.*dpo.reference=base"):
        load_pairs(run("previous"), 0)
    assert load_pairs(run("base"), 0)[0].reference_logps is None
