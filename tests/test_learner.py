"""The learner's update against one big batch: micro-batching and gradient accumulation must not
change the loss or the gradient (a real DeepSpeed engine, in this process, world size 1); and the same
batch split over two learner ranks (tests/scripts/learner_ranks.py) logs the one-rank statistics."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from engine.runtime.distributed import init_distributed
from engine.update.algorithms import TurnWeights
from engine.update.batch import collate
from engine.update.learner import Learner
from tests.conftest import run_script
from tests.test_episodes import _episode


def _grad_norm_and_loss(model_dir, batch, adv1, adv2, micro_batch):
    learner = Learner(str(model_dir), zero_stage=0, lr=1e-3, grad_clip=1e6, episodes_per_rank=len(batch),
                      micro_batch_size=micro_batch)
    seen = []
    optimizer = learner.engine.optimizer
    step = optimizer.step

    def record_then_step(*args, **kwargs):  # the gradient DeepSpeed hands the optimizer
        seen.append(torch.cat([p.grad.flatten() for p in learner.engine.module.parameters()]).norm().item())
        return step(*args, **kwargs)

    optimizer.step = record_then_step
    stats = learner.update(batch, [adv1, adv2], TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1)), "k2")
    assert len(seen) == 1  # one optimizer step per update, however many micro-batches
    return seen[0], stats.loss, learner.grad_accum


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir):
    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x", "Final Answer: 55555", "9"]
    episodes = [_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(6)]
    batch = collate(episodes, tok.pad_token_id)
    adv1 = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5])
    adv2 = torch.tensor([-1.0, 0.5, 1.5, -0.25, 0.0, 1.0])
    norm_full, loss_full, accum_full = _grad_norm_and_loss(tiny_model_dir, batch, adv1, adv2, micro_batch=6)
    norm_micro, loss_micro, accum_micro = _grad_norm_and_loss(tiny_model_dir, batch, adv1, adv2, micro_batch=2)
    assert (accum_full, accum_micro) == (1, 3)
    assert norm_full > 0
    assert loss_micro == pytest.approx(loss_full, rel=1e-5)
    assert norm_micro == pytest.approx(norm_full, rel=1e-4)


def test_the_update_reports_the_entropy_the_scoring_pass_would(tiny_model_dir):
    """train/entropy without a scoring pass: the update's forward gives the same per-token mean (T = 1, same
    weights) over the sampled tokens, micro-batched or not."""
    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x"]
    batch = collate([_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(4)], tok.pad_token_id)
    advantages = [torch.tensor([1.0, -0.5, 0.25, 2.0]), torch.tensor([-1.0, 0.5, 1.5, -0.25])]
    for micro_batch in (4, 3):
        learner = Learner(str(tiny_model_dir), zero_stage=0, lr=1e-3, grad_clip=1.0, episodes_per_rank=4,
                          micro_batch_size=micro_batch)
        stats = learner.score(batch)  # before the step: the weights the update's forward sees
        sampled = batch.response_mask
        expected = ((stats.entropy * sampled).sum() / sampled.sum()).item()
        update = learner.update(batch, advantages, TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1)), "k2")
        assert update.entropy == pytest.approx(expected, rel=1e-4) and expected > 0.01


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_fused_head_matches_naive_logits_in_the_learner(tiny_model_dir, zero_stage):
    """The learner's loss and gradient norm are the same whether the head builds full logits (naive) or
    works in chunks, with the tiny model's tied embeddings, and under ZeRO-3 (head weight gathered)."""
    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = [_episode(tok, f"{i}+1=?", f"Final Answer: {i + 1}", f"Final Answer: {i}") for i in range(4)]
    batch = collate(episodes, tok.pad_token_id)
    adv1, adv2 = torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([-0.5, 2.0, 0.0, 1.0])
    seen = {}
    for impl in ("naive", "chunked"):
        learner = Learner(str(tiny_model_dir), zero_stage=zero_stage, lr=1e-3, grad_clip=1e6, episodes_per_rank=4,
                          micro_batch_size=2, logprob_impl=impl)
        assert learner.policy.config.tie_word_embeddings
        norms = []
        if zero_stage == 0:  # the gradient DeepSpeed hands the optimizer
            step = learner.engine.optimizer.step
            learner.engine.optimizer.step = lambda *a, **k: (norms.append(torch.cat(
                [p.grad.flatten() for p in learner.engine.module.parameters()]).norm().item()), step(*a, **k))[1]
        stats = learner.update(batch, [adv1, adv2], TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1)), "k2")
        norm = norms[0] if zero_stage == 0 else float(learner.engine.get_global_grad_norm())  # ZeRO-3's own norm
        seen[impl] = (stats.loss, norm, stats.logprob_mismatch)
    assert seen["chunked"][1] > 0
    assert seen["chunked"][0] == pytest.approx(seen["naive"][0], rel=1e-5, abs=1e-7)
    assert seen["chunked"][1] == pytest.approx(seen["naive"][1], rel=1e-5)
    assert seen["chunked"][2] == pytest.approx(seen["naive"][2], abs=1e-5)


def test_scoring_model_keeps_the_autograd_path(tiny_model_dir):
    """Statistics from the model's fused head stay differentiable (they are the head's own outputs, not
    copies) and match the full-logits head; the gradient reaches the tied embedding."""
    from transformers import AutoModelForCausalLM

    from engine.ops.logprobs import HeadStats, Wanted
    from engine.ops.scoring import ScoringModel

    ids = torch.tensor([[257, 40, 41, 42, 43], [257, 44, 45, 256, 256]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    results = {}
    for impl in ("naive", "chunked"):
        model = ScoringModel(AutoModelForCausalLM.from_pretrained(tiny_model_dir), impl)
        stats = HeadStats(*model(ids, mask, Wanted(entropy=True)))
        (stats.logprob.sum() + stats.entropy.sum()).backward()
        grad = model.lm.get_input_embeddings().weight.grad
        results[impl] = (stats.logprob.detach(), grad.norm().item())
    assert results["chunked"][0].shape == (6,)  # 4 + 2 tokens have a predecessor
    assert torch.allclose(results["chunked"][0], results["naive"][0], atol=1e-5)
    assert results["chunked"][1] == pytest.approx(results["naive"][1], rel=1e-5) and results["naive"][1] > 0


def _ranks_result(model_dir, ranks: int, zero_stage: int, shard_reference: bool = True, extra=()) -> dict:
    from engine.runtime.distributed import free_port

    script = ["tests/scripts/learner_ranks.py", str(model_dir), str(zero_stage), str(int(shard_reference)), *extra]
    port = free_port()
    command = ([sys.executable, *script] if ranks == 1 else
               ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(port), *script])
    proc = run_script(command, timeout=600)
    # DeepSpeed's CPU all-reduce leaves ~70 MB per rank in /dev/shm unless engine.runtime.distributed removes it
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _wide_model(folder) -> str:
    """A random 2-layer Qwen2 whose matrices are past ZeRO-3's persistence threshold (1e5 elements), so
    they are really sharded (the tiny model's are all below it: every rank keeps them whole)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.builtin.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_two_learners_log_the_one_rank_statistics_and_shard_the_reference(tmp_path):
    """The same 8 episodes on one rank and split over two (ZeRO-3): the logged loss and KL (each rank's
    value, then the mean over ranks, as train_step logs them) and the gradient norm are the one-rank ones;
    each of the two ranks holds about half of the frozen reference, as of the policy. With
    deepspeed.shard_reference=false each rank holds all of it, and the statistics are the same. So are they
    packed with a token budget that gives the second rank's longer rows one more micro-batch than the first's
    (the first runs a throwaway pass: both ranks' backwards take part in every gradient reduction)."""
    model = _wide_model(tmp_path / "wide")
    one, two = _ranks_result(model, 1, 3), _ranks_result(model, 2, 3)
    whole = _ranks_result(model, 2, 3, shard_reference=False)
    budget = _ranks_result(model, 2, 3, extra=["--packing", "--max-tokens", "250"])
    assert budget["micro_batches"] == [2, 3]
    for key in ("loss", "kl_t1", "kl_t2"):
        assert budget["logged"][key] == pytest.approx(one["logged"][key], rel=1e-4), key
    assert budget["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    assert one["logged"]["kl_t1"] > 0.01 and one["logged"]["kl_t2"] > 0.01  # the update moved the policy
    for key in ("loss", "kl_t1", "kl_t2"):
        assert two["logged"][key] == pytest.approx(one["logged"][key], rel=1e-4), key
        assert whole["logged"][key] == pytest.approx(one["logged"][key], rel=1e-4), key
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    assert two["reference_bytes"] <= 0.6 * two["full_bytes"]  # a shard (plus the small persistent vectors)
    assert two["reference_bytes"] == two["policy_bytes"]
    assert whole["reference_bytes"] == whole["full_bytes"] and whole["policy_bytes"] == two["policy_bytes"]
    assert one["reference_bytes"] == one["full_bytes"]  # one rank: nothing to split


def test_one_rank_keeps_a_plain_reference_and_zero3_settings_reach_deepspeed(tiny_model_dir):
    """A world of one builds no ZeRO-3 engine around the reference (it would split nothing and cost about
    1 GiB of gather buffers at 65M parameters); the deepspeed.* ZeRO-3 keys reach the policy's engine."""
    import deepspeed

    from engine.config.loading import load_config
    from engine.ops.scoring import ScoringModel
    from engine.update.learner import deepspeed_config, zero3_settings

    cfg = load_config(["configs/default.yaml", "deepspeed.max_live_parameters=12345",
                       "deepspeed.max_reuse_distance=0", "deepspeed.prefetch_bucket_size=777",
                       "deepspeed.reduce_bucket_size=4096", "deepspeed.param_persistence_threshold=123"])
    assert cfg.deepspeed.shard_reference is True
    init_distributed()
    learner = Learner(str(tiny_model_dir), zero_stage=3, lr=1e-3, grad_clip=1e6, episodes_per_rank=4,
                      micro_batch_size=2, zero3=zero3_settings(cfg.deepspeed))
    assert isinstance(learner.reference, ScoringModel) and not isinstance(learner.reference, deepspeed.DeepSpeedEngine)
    zero = learner.engine._config.zero_config
    assert (zero.max_live_parameters, zero.max_reuse_distance, zero.prefetch_bucket_size,
            zero.reduce_bucket_size, zero.param_persistence_threshold) == (12345, 0, 777, 4096, 123)
    assert learner.partition.parameters == len(list(learner.policy.parameters()))  # one rank: the whole of each
    assert learner.partition.local_share == 1.0
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = collate([_episode(tok, f"{i}+2=?", f"Final Answer: {i + 2}", f"Final Answer: {i}") for i in range(4)],
                    tok.pad_token_id)
    adv = [torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([0.0, 1.0, -1.0, 0.5])]
    weights = TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1))
    learner.update(batch, adv, weights, "k2")
    assert min(learner.update(batch, adv, weights, "k2").kl_turns) > 0  # the reference stayed at the base model
    # ZeRO 0-2 take none of the stage-3 keys
    assert "stage3_max_live_parameters" not in deepspeed_config(0, 2, 1, 1e-3, 1.0, "float32",
                                                                zero3_settings(cfg.deepspeed))["zero_optimization"]


def test_a_bfloat16_learner_reports_the_gradient_norm_of_float32(tiny_model_dir):
    """DeepSpeed's bfloat16 optimizer keeps the gradients in its own float32 buffers, so p.grad may be empty
    (the norm read 0 from it): the same update in bfloat16 and float32 gives norms within 5%."""
    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = ["Final Answer: 5", "1+2=3. Final Answer: 13", "Final Answer: 7", "x"]
    batch = collate([_episode(tok, f"{i}+{i}=?", answers[i], answers[-1 - i]) for i in range(4)], tok.pad_token_id)
    advantages = [torch.tensor([1.0, -0.5, 0.25, 2.0]), torch.tensor([-1.0, 0.5, 1.5, -0.25])]
    norms = {}
    for dtype in ("float32", "bfloat16"):
        learner = Learner(str(tiny_model_dir), zero_stage=0, lr=1e-3, grad_clip=1e6, episodes_per_rank=4,
                          micro_batch_size=2, dtype=dtype)
        norms[dtype] = learner.update(batch, advantages, TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1)), "k2").grad_norm
    assert norms["float32"] > 0
    assert norms["bfloat16"] == pytest.approx(norms["float32"], rel=0.05), norms
