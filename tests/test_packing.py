"""Padding-free forwards (engine.ops.packing): the packed layout and the micro-batch schedule by hand, the
padding share by hand, and a packed learner against a padded one on the same update (loss, gradients, KL,
per-token log-probs), with and without LoRA."""

import pytest
import torch
from omegaconf import OmegaConf

from engine.base.errors import UserError
from engine.ops.packing import first_fit_order, forward_slots, micro_batches, next_fit, pack, padding_share
from engine.runtime.distributed import init_distributed
from engine.update.algorithms import turn_weights
from engine.update.batch import TrainBatch
from engine.update.learner import Learner
from tests.conftest import random_policy_and_reference, rendezvous_restored

TOL = 1e-5  # float32: packed and padded differ only in the order of sums


def test_pack_lays_sequences_end_to_end_with_restarting_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 0, 0], [3, 4, 5, 6]])
    mask = (ids > 0).long()
    scored = mask.bool().clone()
    scored[:, 0] = False
    rows = pack(ids, mask, scored)
    # width 4: [5 6 7] alone (8 9 does not fit after it), [8 9 1 2], [3 4 5 6]
    assert rows.input_ids.tolist() == [[5, 6, 7, 0], [8, 9, 1, 2], [3, 4, 5, 6]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1], [0, 1, 2, 3]]
    assert rows.scored.int().tolist() == [[0, 1, 1, 0], [0, 1, 0, 1], [0, 1, 1, 1]]
    assert (rows.tokens, rows.cells) == (11, 12)
    # the scored tokens keep their row-major order
    assert rows.input_ids[rows.scored].tolist() == ids[scored].tolist()


def test_pack_refuses_a_scored_token_that_opens_its_sequence():
    ids = torch.tensor([[5, 6], [7, 8]])
    scored = torch.tensor([[False, True], [True, True]])
    with pytest.raises(ValueError, match="opens its sequence"):
        pack(ids, torch.ones_like(ids), scored)


def test_pack_refuses_a_row_with_a_gap_and_takes_left_padding():
    ids = torch.tensor([[5, 6, 7], [8, 9, 4]])
    with pytest.raises(ValueError, match="contiguous"):
        pack(ids, torch.tensor([[1, 1, 1], [1, 0, 1]]), torch.zeros(2, 3, dtype=torch.bool))
    rows = pack(ids, torch.tensor([[1, 1, 1], [0, 1, 1]]), torch.tensor([[0, 1, 1], [0, 0, 1]]).bool())
    assert rows.input_ids.tolist() == [[5, 6, 7], [9, 4, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]


def test_first_fit_order_makes_next_fit_build_first_fit_rows():
    lengths = [3, 6, 2, 4, 5]  # width 6: first-fit decreasing gives [6], [5], [4, 2], [3]
    order = first_fit_order(lengths)
    assert order == [1, 4, 3, 2, 0]
    assert [[order[j] for j in row] for row in next_fit([lengths[i] for i in order], 6)] == [[1], [4], [3, 2], [0]]
    # in the given order a row closes when the next does not fit: 3 | 6 | 2 + 4 | 5
    assert next_fit(lengths, 6) == [[0], [1], [2, 3], [4]]
    assert next_fit([4, 2, 2, 1, 3], 4) == [[0], [1, 2], [3, 4]]
    assert next_fit([0, 3], 3) == [[0, 1]]  # an empty row first


def test_micro_batches_by_rows_or_by_token_budget():
    lengths = [3, 2, 4, 1, 4]
    assert micro_batches(lengths, 2, None, packing=False) == [[0, 1], [2, 3], [4]]
    # packed: each group ordered longest first for first-fit rows
    assert micro_batches(lengths, 2, None, packing=True) == [[0, 1], [2, 3], [4]]
    # budget 6 packed (first-fit rows x longest): 4 | 4 | 3, then 2 + 1 in a second row of 3
    assert micro_batches(lengths, 2, 6, packing=True) == [[2], [4], [0, 1, 3]]
    # budget 22 packed: 10 | 6 + 6 would be 3 rows of 10, so 10 + 6 (2 rows x 10 = 20), then 6 alone
    assert micro_batches([10, 6, 6], 3, 22, packing=True) == [[0, 1], [2]]
    # budget 8 padded (rows x longest): 4 + 4 | 3 + 3 (the 2 counts as 3) | the 1 would make 9
    assert micro_batches(lengths, 2, 8, packing=False) == [[2, 4], [0, 1], [3]]
    assert micro_batches([9, 2], 2, 5, packing=True) == [[0], [1]]  # longer than the budget: alone


def test_padding_share_by_hand():
    lengths = [4, 1, 2, 3]  # 10 tokens
    assert forward_slots(lengths, packing=False, width=6) == 24  # padded to a batch width of 6
    assert padding_share(24, 10) == pytest.approx(14 / 24)
    # packed at width 4, in order: [4], [1 2], [3] -> 3 rows x 4
    assert forward_slots(lengths, packing=True, width=6) == 12
    assert padding_share(12, 10) == pytest.approx(2 / 12)
    assert padding_share(0, 0) == 0.0


# Six episodes of varied lengths, so packing puts several in a row: prompt, turn 1, instruction, turn 2.
LENGTHS = [14, 5, 9, 4, 12, 6]
TURN1 = [[3, 4, 5], [2], [2, 3], [1], [3, 4, 5, 6], [2, 3]]
TURN2 = [[8, 9, 10, 11, 12, 13], [3, 4], [5, 6, 7, 8], [2, 3], [8, 9, 10, 11], [4, 5]]
ADVS = [torch.tensor([1.0, -0.5, 2.0, 0.25, -1.0, 0.5]), torch.tensor([-1.5, 0.75, 0.5, -2.0, 1.0, 0.3])]


def make_batch() -> TrainBatch:
    B, T = len(LENGTHS), max(LENGTHS) + 2  # two columns of padding on every row: the batch's own width
    ids = torch.arange(B * T).reshape(B, T) % 29 + 3
    attention = torch.zeros(B, T, dtype=torch.long)
    masks = torch.zeros(B, 2, T)
    for row in range(B):
        attention[row, : LENGTHS[row]] = 1
        masks[row, 0, TURN1[row]] = 1.0
        masks[row, 1, TURN2[row]] = 1.0
    ids[attention == 0] = 0
    return TrainBatch(ids, attention, masks, torch.zeros(B, T))


LORA = OmegaConf.create({"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["all-linear"]})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packing-model")
    _policy, reference = random_policy_and_reference(folder)
    return folder, reference


def run_update(model, lora, **learner_args):
    """One update from the saved weights: its stats, the gradient the optimizer got, and the per-token
    log-probs of the batch under the policy before the step."""
    model_dir, reference = model
    with rendezvous_restored():
        init_distributed()
        torch.manual_seed(0)
        learner = Learner(str(model_dir), zero_stage=0, lr=1e-3, grad_clip=1e6, episodes_per_rank=len(LENGTHS),
                          lora=lora, **learner_args)
        if lora is None:  # a reference away from the policy, so the KL term is not 0 = 0
            learner.reference.lm.load_state_dict(reference.state_dict())
        else:  # B = 0 at start: move the adapters away from the reference (the base)
            with torch.no_grad():
                for name, p in learner.policy.named_parameters():
                    if "lora_B" in name:
                        p.copy_(0.1 * torch.randn_like(p))
        batch = make_batch()
        logprobs = learner.score(batch).logprob
        params = [p for p in learner.policy.parameters() if p.requires_grad]
        seen = []
        learner.engine.optimizer.step = lambda *a, **k: seen.append([p.grad.detach().clone() for p in params])
        stats = learner.update(batch, ADVS, turn_weights(2, 0.3, 1.5, turns=2), "k3")
        assert len(seen) == 1
        return stats, torch.cat([g.flatten() for g in seen[0]]), logprobs


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_packed_update_equals_padded(model_dir, lora):
    padded, padded_grad, padded_lp = run_update(model_dir, lora, micro_batch_size=3)
    packed, packed_grad, packed_lp = run_update(model_dir, lora, micro_batch_size=3, packing=True)
    assert padded_grad.norm() > 1e-3
    assert (packed_grad - padded_grad).abs().max() < TOL
    assert packed.loss == pytest.approx(padded.loss, abs=TOL)
    assert packed.kl_turns == pytest.approx(padded.kl_turns, abs=TOL)
    assert min(padded.kl_turns) > 1e-4  # the reference differs from the policy: the KL is tested, not 0 = 0
    assert packed.entropy == pytest.approx(padded.entropy, abs=TOL)
    assert (packed_lp - padded_lp).abs().max() < TOL
    assert padded_lp.abs().sum() > 1
    # padded: 6 rows x the batch's 16 columns; packed per micro-batch of 3 (longest first): [14] [9 5]
    # -> 2 x 14, and [12] [6 4] -> 2 x 12
    assert padded.pad_frac == pytest.approx(1 - 50 / 96)
    assert packed.pad_frac == pytest.approx(1 - 50 / 52)


def test_token_budget_update_equals_the_row_count_one(model_dir):
    whole, whole_grad, _ = run_update(model_dir, None, micro_batch_size=6)
    budget, budget_grad, _ = run_update(model_dir, None, micro_batch_size=6, packing=True,
                                        max_tokens_per_micro_batch=16)
    assert (budget_grad - whole_grad).abs().max() < TOL
    assert budget.loss == pytest.approx(whole.loss, abs=TOL)
    assert budget.kl_turns == pytest.approx(whole.kl_turns, abs=TOL)


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_gradient_checkpointing_recomputes_layers_and_keeps_the_update(model_dir, lora, monkeypatch):
    """learner.gradient_checkpointing: the same update, with each decoder layer run again in the backward."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    calls = []
    original = Qwen2DecoderLayer.forward
    monkeypatch.setattr(Qwen2DecoderLayer, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    plain, plain_grad, _ = run_update(model_dir, lora, micro_batch_size=3, packing=True)
    plain_calls, calls[:] = len(calls), []
    saved, saved_grad, _ = run_update(model_dir, lora, micro_batch_size=3, packing=True, gradient_checkpointing=True)
    # the update's 2 micro-batches run each layer once more in their backward; the scoring passes do not
    layers = 2
    assert len(calls) == plain_calls + 2 * layers
    assert (saved_grad - plain_grad).abs().max() < TOL
    assert saved.loss == pytest.approx(plain.loss, abs=TOL)
    assert saved.kl_turns == pytest.approx(plain.kl_turns, abs=TOL)


def test_a_model_that_ignores_packed_positions_is_refused(model_dir, monkeypatch):
    """If the attention let packed sequences see each other, packing would change the loss: an error."""
    model_dir, _ = model_dir
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    with rendezvous_restored():
        init_distributed()
        with pytest.raises(UserError, match="learner.packing=false"):
            Learner(str(model_dir), zero_stage=0, lr=1e-3, grad_clip=1.0, episodes_per_rank=2, micro_batch_size=2,
                    packing=True)
