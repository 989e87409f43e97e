"""The learner's gradient against one computed by hand.

The other learner tests compare the learner with itself (micro-batched vs full batch, naive vs chunked
head), so a wiring error both sides share passes them. Here the expected gradient comes from autograd
on the SCoRe objective written out below from its maths, on plain Hugging Face logits, without
engine.update.algorithms' loss functions or the fused head.

World size is 1 in this process, so the learner's world-size factor is 1 here; the 2-learner case
(each rank's loss scaled by world size over the global token count) is covered by a 2-rank test.
"""

import pytest
import torch

from engine.runtime.distributed import init_distributed
from engine.update.algorithms import turn_weights
from engine.update.batch import TrainBatch
from engine.update.learner import Learner
from tests.conftest import random_policy_and_reference, rendezvous_restored

BETA1, BETA2 = 0.3, 1.5  # distinct, so Stage I's beta2 on turn 1 shows up in the gradient
RTOL, ATOL = 1e-4, 1e-6
FAR = 1e-2  # a "different" gradient must be this far off in relative norm: 100x the tolerance

# Four episodes, T = 10. Layout per row: prompt, turn 1, correction instruction, turn 2, padding.
# The turns sit at different positions in each row; row 3 is right-padded after position 6.
LENGTHS = [10, 10, 9, 7]
TURN1 = [[2, 3, 4], [1, 2], [2, 3, 4, 5], [1, 2]]  # 11 tokens
TURN2 = [[6, 7, 8, 9], [4, 5, 6, 7, 8, 9], [7, 8], [4, 5, 6]]  # 15 tokens: a count distinct from turn 1's
ADV1 = torch.tensor([1.0, -0.5, 2.0, 0.25])
ADV2 = torch.tensor([-1.5, 0.75, 0.5, -2.0])  # swapping ADV1 and ADV2 moves the gradient
# Three-turn episodes, same rows: prompt, turn 1, instruction, turn 2, instruction, turn 3, padding.
TURNS3 = [
    [[1, 2, 3], [1], [1, 2], [1]],  # 7 tokens
    [[5, 6], [3, 4, 5, 6], [4], [3]],  # 8 tokens
    [[8, 9], [8, 9], [6, 7, 8], [5, 6]],  # 9 tokens: each turn's count distinct
]
ADV3 = torch.tensor([0.5, -1.0, 1.25, -0.75])
LAYOUTS = {1: [TURN2], 2: [TURN1, TURN2], 3: TURNS3}  # per number of turns, each turn's positions per row
ADVS = {1: [ADV2], 2: [ADV1, ADV2], 3: [ADV1, ADV2, ADV3]}
# log pi_rollout - log pi on the sampled tokens, in row-major order, cycled: the IS ratio is exp(-offset),
# so -1.5 and -1.0 give 4.5 and 2.7, above the cap of 2; the others give 1.2, 1, 0.74 and 0.45.
IS_OFFSETS = [-1.5, 0.3, -0.2, -1.0, 0.0, 0.8]
IS_CAP = 2.0


# (key, micro_batch_size, other Learner arguments). Token budgets on LENGTHS [10, 10, 9, 7]: packed at 19
# slots, [10] [10] [9 7] (three micro-batches of uneven sizes); padded at 20 slots, [10 10] [9 7].
LEARNERS = [(4, 4, {}), (2, 2, {}), ("packed", 2, {"packing": True}),
            ("packed-budget", 4, {"packing": True, "max_tokens_per_micro_batch": 19}),
            ("padded-budget", 4, {"max_tokens_per_micro_batch": 20})]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny Qwen2 (the project's tiny-model config, smaller), its reference moved away from it,
    and learners with micro-batches of 4 (one pass) and 2 (gradient accumulation over two)."""
    with rendezvous_restored():  # a module fixture runs outside conftest's per-test guard
        init_distributed()
        return _models_and_learners(tmp_path_factory)


def _models_and_learners(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("grad-model")
    policy, reference = random_policy_and_reference(model_dir)

    learners = {}
    for key, micro_batch, extra in LEARNERS:
        # grad_clip huge: clipping would rescale the gradient the optimizer sees.
        learner = Learner(str(model_dir), zero_stage=0, lr=1e-3, grad_clip=1e6, episodes_per_rank=4,
                          micro_batch_size=micro_batch, **extra)
        learner.reference.lm.load_state_dict(reference.state_dict())
        learners[key] = learner
    return policy, reference, learners


def make_batch(policy, temperature: float = 1.0, turns: int = 2) -> TrainBatch:
    B, T = len(LENGTHS), max(LENGTHS)
    ids = torch.arange(B * T).reshape(B, T) % 29 + 3  # hand-fixed, varied token ids in [3, 32)
    attention = torch.zeros(B, T, dtype=torch.long)
    masks = torch.zeros(B, turns, T)
    for row in range(B):
        attention[row, : LENGTHS[row]] = 1
        for k, positions in enumerate(LAYOUTS[turns]):
            masks[row, k, positions[row]] = 1.0
    assert masks.sum(dim=1).max() == 1  # no token in two turns
    ids[attention == 0] = 0  # pad id
    batch = TrainBatch(ids, attention, masks, torch.zeros(B, T))
    # Rollout log-probs: the policy's own, shifted by the hand-chosen offsets (a stale rollout).
    sampled = masks.sum(dim=1) > 0
    with torch.no_grad():
        lp = token_logprobs(policy, batch, temperature)
    offsets = torch.tensor(IS_OFFSETS).repeat(int(sampled.sum()) // len(IS_OFFSETS) + 1)[: int(sampled.sum())]
    batch.rollout_logprobs[sampled] = lp[sampled] + offsets
    return batch


def token_logprobs(model, batch: TrainBatch, temperature: float = 1.0):
    """[B, T] log-prob of each token given the ones before it (0 at position 0), from full logits / T."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


def expected_gradient(policy, reference, batch, advs, stage, kl_estimator, is_cap, temperature=1.0):
    """Autograd of the SCoRe loss, written out per token (N1, N2: the batch's turn-1 and turn-2 token counts):
        L = sum_turn1 [-a1 * w1 * rho * log pi + b1 * KL] / N1 + sum_turn2 [-a2 * rho * log pi + b2 * KL] / N2
    Stage I: no reward term on turn 1 (w1 = 0), turn 1 held to the reference by b1 = beta2, turn 2 by
    b2 = beta1. Stage II: w1 = 1, b1 = b2 = beta1. rho = min(pi / pi_rollout, cap) without gradient, or 1.
    pi and ref are the tempered policies softmax(logits / T), the ones vLLM samples from at temperature T.
    With K turns (advs: one advantage per turn) the sum runs over every turn k, each over its own count N_k;
    in Stage I every turn before the last is as turn 1 above (w = 0, beta2) and the last as turn 2 (w = 1,
    beta1); in Stage II every turn has w = 1 and beta1. One turn alone is the last: w = 1, beta1."""
    lp = token_logprobs(policy, batch, temperature)
    with torch.no_grad():
        ref = token_logprobs(reference, batch, temperature)
    d = lp - ref
    kl = 0.5 * d**2 if kl_estimator == "k2" else torch.exp(-d) - 1 + d  # Schulman's k2 / k3 of KL(pi || ref)
    w1, b1, b2 = (0.0, BETA2, BETA1) if stage == 1 else (1.0, BETA1, BETA1)
    rho = torch.ones_like(lp)
    if is_cap is not None:
        rho = torch.exp(lp.detach() - batch.rollout_logprobs).clamp(max=is_cap)
    assert len(advs) == batch.turns
    loss = 0.0
    for k, adv in enumerate(advs):
        last = k == len(advs) - 1
        w, b = (1.0, b2) if last else (w1, b1)  # the last turn as turn 2, every earlier one as turn 1
        m = batch.turn_mask(k)
        loss = loss + ((-adv[:, None] * w * rho * lp + b * kl) * m).sum() / m.sum()
    return torch.autograd.grad(loss, list(policy.parameters()))


def learner_gradient(learner, batch, advs, stage, kl_estimator, is_cap, temperature=1.0):
    """The gradient DeepSpeed hands the optimizer (at ZeRO 0, on p.grad); the step itself is skipped
    so the weights stay those of the saved model and the learner can be reused."""
    params = list(learner.policy.parameters())
    for p in params:
        p.grad = None  # nothing left over from a previous case
    seen = []
    learner.engine.optimizer.step = lambda *a, **k: seen.append([p.grad.detach().clone() for p in params])
    learner.update(batch, advs, turn_weights(stage, BETA1, BETA2, turns=len(advs)), kl_estimator, is_cap=is_cap,
                   temperature=temperature)
    assert len(seen) == 1  # one optimizer step per update, after the last micro-batch
    return seen[0]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def assert_close(got, want):
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=RTOL, atol=ATOL), f"max |diff| {(g - w).abs().max():.3g}"


def relative_distance(a, b) -> float:
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


@pytest.mark.parametrize("stage, kl_estimator, is_cap, micro_batch, temperature, turns", [
    (1, "k2", None, 4, 1.0, 2),
    (2, "k2", None, 4, 1.0, 2),
    (2, "k2", IS_CAP, 4, 1.0, 2),
    (2, "k3", IS_CAP, 2, 1.0, 2),  # two micro-batches: gradient accumulation and per-batch token counts
    (1, "k2", IS_CAP, 2, 1.0, 2),
    (2, "k2", IS_CAP, 2, 0.7, 2),  # sampled at T = 0.7: scored as logits / 0.7
    (1, "k2", None, 2, 1.0, 3),  # three turns: turns 1 and 2 held by beta2 without a reward term
    (2, "k3", IS_CAP, 4, 1.0, 3),
    (1, "k2", IS_CAP, 2, 1.0, 1),  # one turn: single-turn RL, the same in both stages
    # padding-free: packed rows, and micro-batches by token budget (their gradient is the full batch's)
    (2, "k3", IS_CAP, "packed", 0.7, 2),
    (1, "k2", None, "packed-budget", 1.0, 3),
    (2, "k2", IS_CAP, "packed-budget", 1.0, 2),
    (2, "k3", None, "padded-budget", 1.0, 2),
])
def test_learner_gradient_matches_hand_computed(setup, stage, kl_estimator, is_cap, micro_batch, temperature,
                                                turns):
    policy, reference, learners = setup
    batch = make_batch(policy, temperature, turns)
    advs = ADVS[turns]
    assert [p.shape for p in learners[micro_batch].policy.parameters()] == [p.shape for p in policy.parameters()]

    got = learner_gradient(learners[micro_batch], batch, advs, stage, kl_estimator, is_cap, temperature)
    want = expected_gradient(policy, reference, batch, advs, stage, kl_estimator, is_cap, temperature)
    assert flat(want).norm() > 1e-3
    assert_close(got, want)

    # Teeth: each wiring error below would move the gradient far beyond the tolerance.
    def variant(**change):
        args = dict(advs=advs, stage=stage, kl_estimator=kl_estimator, is_cap=is_cap,
                    temperature=temperature) | change
        return expected_gradient(policy, reference, batch, **args)

    if turns > 1:
        # swapped turn advantages (rotated: with three turns in Stage I only the last one's counts)
        assert relative_distance(got, variant(advs=advs[1:] + advs[:1])) > FAR
        assert relative_distance(got, variant(stage=3 - stage)) > FAR  # the other stage's weights
        swapped_masks = TrainBatch(batch.input_ids, batch.attention_mask, batch.turn_masks.roll(1, dims=1),
                                   batch.rollout_logprobs)
        assert relative_distance(got, expected_gradient(policy, reference, swapped_masks, advs, stage,
                                                        kl_estimator, is_cap, temperature)) > FAR  # masks swapped
    else:
        assert relative_distance(got, variant(advs=[-advs[0]])) > FAR  # the advantage's sign
        assert relative_distance(got, variant(stage=3 - stage)) < 1e-6  # one turn: no Stage I hold
    if temperature != 1.0:
        assert relative_distance(got, variant(temperature=1.0)) > FAR  # scored at T = 1
    if is_cap is None:
        assert relative_distance(got, variant(is_cap=IS_CAP)) > FAR  # IS weights applied though not asked
    else:
        ratios = torch.exp(-torch.tensor(IS_OFFSETS))
        assert (ratios > is_cap).any() and (ratios < 1).any()  # the cap binds on some tokens
        assert relative_distance(got, variant(is_cap=None)) > FAR  # IS weights dropped
        assert relative_distance(got, variant(is_cap=float("inf"))) > FAR  # the cap dropped
