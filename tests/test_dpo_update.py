"""The learner's DPO update against DPO written out by hand on plain Hugging Face logits.

The update goes through the fused log-prob head in two passes (sequence log-probs, then the linearised
per-token loss); here the expected gradient is autograd of the weighted DPO loss on full logits, so a
wrong coefficient, a swapped pair or a dropped weight shows up as a different gradient."""

import pytest
import torch
import torch.nn.functional as F

from engine.objectives.dpo_step import collate_pairs, dpo_update
from engine.objectives.pairs.builders import PreferencePair
from engine.runtime.distributed import init_distributed
from engine.update.batch import TrainBatch
from engine.update.learner import Learner
from tests.conftest import random_policy_and_reference, rendezvous_restored

BETA = 0.5
WEIGHTS = torch.tensor([2.0, 0.5])  # unequal: dropping the weights moves the gradient
RTOL, ATOL = 1e-4, 1e-6


def _pair(context, chosen, rejected, weight):
    return PreferencePair("direct", "p", context, chosen, rejected, "", "", 1.0, 0.0, weight)


# Two pairs with contexts and responses of different lengths (padding inside the batch).
PAIRS = [_pair([3, 4, 5], [6, 7, 8, 1], [9, 10, 1], 2.0), _pair([11, 12], [13, 14, 1], [15, 16, 17, 18, 1], 0.5)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with rendezvous_restored():  # a module fixture runs outside conftest's per-test guard
        init_distributed()
        model_dir = tmp_path_factory.mktemp("dpo-model")
        policy, reference = random_policy_and_reference(model_dir)

        def learner(micro_batch: int, packing: bool = False) -> Learner:
            made = Learner(str(model_dir), zero_stage=0, lr=1e-2, grad_clip=1e6, episodes_per_rank=4,
                           micro_batch_size=micro_batch, packing=packing)
            made.reference.lm.load_state_dict(reference.state_dict())
            return made
        # Built here, while the rendezvous variables DeepSpeed reads are set: micro-batches of 4 and 1, and one
        # that takes real steps.
        return policy, reference, {"4": learner(4), "1": learner(1), "steps": learner(4),
                                   "packed": learner(4, packing=True)}


def sequence_logprobs(model, batch: TrainBatch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return (logp * batch.turn_masks[:, 0, 1:]).sum(-1)


def expected_gradient(policy, reference, batch, weights, swap=False):
    policy.zero_grad()
    lp = sequence_logprobs(policy, batch)
    with torch.no_grad():
        ref = sequence_logprobs(reference, batch)
    chosen, rejected = (1, 0) if swap else (0, 1)
    rows = lambda which: slice(which * 2, which * 2 + 2)  # noqa: E731
    margin = BETA * ((lp[rows(chosen)] - ref[rows(chosen)]) - (lp[rows(rejected)] - ref[rows(rejected)]))
    loss = (weights * -F.logsigmoid(margin)).sum() / weights.sum()
    return torch.autograd.grad(loss, list(policy.parameters())), loss.item()


def learner_gradient(learner, batch, weights):
    params = list(learner.policy.parameters())
    for p in params:
        p.grad = None
    seen = []
    learner.engine.optimizer.step = lambda *a, **k: seen.append([p.grad.detach().clone() for p in params])
    stats = dpo_update(learner, batch, weights, BETA)
    assert len(seen) == 1
    return seen[0], stats


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


# Short chosen and long rejected responses: packed, the two chosen rows (4 and 5 tokens) share a row of 9.
PACKABLE = [_pair([3, 4], [6, 1], [9, 10, 11, 12, 13, 14, 1], 2.0),
            _pair([11, 12], [13, 14, 1], [15, 16, 17, 18, 19, 1], 0.5)]


# one pass; four micro-batches (chosen and rejected apart); one pass on packed rows
@pytest.mark.parametrize("micro_batch", [4, 1, "packed"])
def test_dpo_gradient_matches_hand_computed(setup, micro_batch):
    policy, reference, learners = setup
    if micro_batch == "packed":
        batch = collate_pairs(PACKABLE, pad_id=0)
        assert batch.attention_mask.sum(1).tolist() == [4, 5, 9, 8]
    else:
        batch = collate_pairs(PAIRS, pad_id=0)
        assert batch.turn_masks[:, 0].sum(-1).tolist() == [4, 3, 3, 5]  # rows: chosen 1, chosen 2, rejected 1, 2
    got, stats = learner_gradient(learners[str(micro_batch)], batch, WEIGHTS)
    want, loss = expected_gradient(policy, reference, batch, WEIGHTS)
    assert flat(want).norm() > 1e-3
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=RTOL, atol=ATOL), f"max |diff| {(g - w).abs().max():.3g}"
    assert stats.loss == pytest.approx(loss, rel=1e-5) and stats.pairs == 2
    # Teeth: unweighted pairs, or chosen and rejected swapped, give a gradient far from the learner's.
    for variant in (expected_gradient(policy, reference, batch, torch.ones(2))[0],
                    expected_gradient(policy, reference, batch, WEIGHTS, swap=True)[0]):
        assert (flat(got) - flat(variant)).norm() / flat(variant).norm() > 1e-2


def test_dpo_steps_raise_the_margin(setup):
    """The gradient's sign: repeated updates on the same pairs make the chosen responses more likely
    relative to the rejected ones (a sign error would lower the margin)."""
    _, _, learners = setup
    learner = learners["steps"]
    batch = collate_pairs(PAIRS, pad_id=0)
    first = dpo_update(learner, batch, WEIGHTS, BETA)
    for _ in range(3):
        last = dpo_update(learner, batch, WEIGHTS, BETA)
    assert last.margin > first.margin + 0.05 and last.loss < first.loss
    assert last.accuracy == 1.0
