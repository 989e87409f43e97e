"""The learner: a DeepSpeed engine (ZeRO 0-3) around the policy, a frozen reference model beside
it, and one SCoRe policy-gradient update per training step."""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
from torch import Tensor
from torch.profiler import record_function
from transformers import AutoModelForCausalLM

from engine.models.lora import AdaptersOff, adapter_state, add_adapters, trainable
from engine.models.paths import DTYPES
from engine.ops.logprobs import Wanted
from engine.ops.packing import forward_slots, micro_batches, padding_share
from engine.ops.scoring import ScoringModel, check_packing, flat, grid, sampling_temperature
from engine.ops.token_stats import TokenStats, token_stats
from engine.runtime.distributed import all_ranks_sum, reduce_max, world_size
from engine.update.algorithms import TurnWeights, kl_per_token, token_coefficients, token_loss, truncated_is_weights
from engine.update.batch import TrainBatch
from rollout.weight_sync import gathered_state_dict


@dataclass
class UpdateStats:
    loss: float
    kl_turns: list[float]  # per turn, the mean per-token KL(policy || reference) on its tokens of all ranks
    logprob_mismatch: float  # max |vLLM log-prob - learner log-prob| over sampled tokens
    # max |policy log-prob - reference log-prob| over sampled tokens: what the mismatch would be if the
    # weight sync did nothing (vLLM would still hold the base model)
    reference_drift: float
    grad_norm: float  # global gradient norm before clipping
    lr: float
    # mean entropy (nats) of the policy at the sampling temperature over the sampled tokens of all ranks, from
    # the update's own forward (train/entropy)
    entropy: float = float("nan")
    pad_frac: float = 0.0  # token slots of the update's forwards that held padding, over all its slots


def _engine_config(zero_stage: int, micro_batch: int, dtype: str, zero3: dict | None = None) -> dict:
    """What the policy's and the reference's DeepSpeed engines share. `zero3`: extra ZeRO-3 settings
    (DeepSpeed's stage3_* names), ignored at other stages."""
    zero = {"stage": zero_stage, **((zero3 or {}) if zero_stage == 3 else {})}
    config = {"train_micro_batch_size_per_gpu": micro_batch, "zero_optimization": zero,
              "steps_per_print": 2**31 - 1}
    if dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
    return config


def deepspeed_config(zero_stage: int, micro_batch: int, grad_accum: int, lr: float, grad_clip: float,
                     dtype: str, zero3: dict | None = None) -> dict:
    return {
        **_engine_config(zero_stage, micro_batch, dtype, zero3),
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        # torch's AdamW: DeepSpeed's fused Adam needs a GPU.
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": 0.0, "torch_adam": True}},
    }


def reference_config(micro_batch: int, dtype: str, zero3: dict | None = None) -> dict:
    """The frozen reference at ZeRO-3: an engine with no optimizer whose parameters are sharded like the
    policy's and gathered one module at a time in its forward."""
    return _engine_config(3, micro_batch, dtype, zero3)


DEEPSPEED_PERSISTENCE_THRESHOLD = 100_000  # DeepSpeed's stage3_param_persistence_threshold default


def zero3_settings(section) -> dict:
    """The config's deepspeed section's bounds on ZeRO-3's gathered parameters and gradient buckets, and the
    size up to which a parameter stays whole on every rank, in DeepSpeed's names."""
    return {"stage3_max_live_parameters": section.max_live_parameters,
            "stage3_max_reuse_distance": section.max_reuse_distance,
            "stage3_prefetch_bucket_size": section.prefetch_bucket_size,
            "reduce_bucket_size": section.reduce_bucket_size,
            # a section built by hand (bench/zero3_memory.py) may leave it out: DeepSpeed's default
            "stage3_param_persistence_threshold": getattr(section, "param_persistence_threshold",
                                                          DEEPSPEED_PERSISTENCE_THRESHOLD)}


@dataclass
class PartitionReport:
    """How a ZeRO-3 module's parameters are split on this rank (DeepSpeed's `ds_numel`: a parameter's full
    size; `ds_tensor`: this rank's shard; `ds_persist`: kept whole on every rank, at or under the persistence
    threshold)."""
    parameters: int = 0  # parameters ZeRO-3 manages
    partitioned: int = 0  # of them, those this rank holds only a shard of
    elements: int = 0  # their full sizes, summed
    local_elements: int = 0  # what this rank keeps of them: a shard, or the whole of a parameter kept whole
    whole: list[tuple[str, int]] = field(default_factory=list)  # (name, full size) of those kept whole

    @property
    def local_share(self) -> float:
        return self.local_elements / max(self.elements, 1)

    def line(self, what: str) -> str:
        return (f"[zero3] {what}: {self.partitioned} of {self.parameters} parameters partitioned; this rank holds "
                f"{self.local_share:.0%} of {self.elements / 1e6:.1f}M elements")


def partition_report(module: torch.nn.Module) -> PartitionReport:
    """This rank's share of `module`'s ZeRO-3 parameters (parameters without ZeRO-3's attributes are left out)."""
    report = PartitionReport()
    for name, p in module.named_parameters():
        if not hasattr(p, "ds_tensor") or p.ds_tensor is None:
            continue
        full, shard = p.ds_numel, p.ds_tensor.numel()
        split = shard < full and not getattr(p, "ds_persist", False)
        report.parameters += 1
        report.partitioned += split
        report.elements += full
        report.local_elements += shard if split else full  # a persistent parameter keeps its full data too
        if not split:
            report.whole.append((name, full))
    return report


def check_partitioned(report: PartitionReport, world: int, threshold: int, what: str) -> None:
    """With more than one rank, every parameter past the persistence threshold must be a shard; else ZeRO-3
    is not partitioning (each rank would hold the whole model) and the run stops here."""
    if world < 2:
        return
    # a 1-element parameter cannot be split, whatever the threshold
    unsplit = [(name, n) for name, n in report.whole if n > max(threshold, 1)]
    if report.parameters == 0 or unsplit:
        shown = ", ".join(f"{name} ({n} elements)" for name, n in unsplit[:3]) or "no ZeRO-3 parameters at all"
        raise RuntimeError(
            f"ZeRO-3 is not partitioning the {what} over {world} ranks: {len(unsplit)} parameter(s) past "
            f"deepspeed.param_persistence_threshold={threshold} are whole on this rank: {shown}")


class Learner:
    """`logprob_impl` (auto | naive | chunked | triton) picks the fused head's implementation for every
    scoring pass: the policy's loss, the reference's log-probs and the self-reward statistics."""

    def __init__(self, model_path: str, zero_stage: int, lr: float, grad_clip: float, episodes_per_rank: int,
                 micro_batch_size: int, dtype: str = "float32", logprob_impl: str = "auto",
                 trust_remote_code: bool = False, with_reference: bool = True, shard_reference: bool = True,
                 zero3: dict | None = None, lora=None, packing: bool = False,
                 max_tokens_per_micro_batch: int | None = None, gradient_checkpointing: bool = False):
        """with_reference=False: no frozen reference (a trainer with no KL term, train_rm); update() needs one.
        shard_reference=False keeps a full reference on every rank at ZeRO-3 (no gathers in its forward); so
        does a world of one, where there is nothing to split. zero3: see zero3_settings. lora: the config's
        model.lora section; with r > 0 only adapters train and the reference is the policy without them.
        packing: forwards on the sequences packed side by side (engine.ops.packing), after checking on this model
        that packed sequences do not see each other (engine.ops.scoring.check_packing). max_tokens_per_micro_batch:
        an update's micro-batches hold up to this many token slots, longest rows first, instead of
        micro_batch_size rows each. gradient_checkpointing: keep only each decoder layer's input through the
        forward and recompute the layer in the backward (transformers' gradient_checkpointing_enable,
        non-reentrant, so LoRA's frozen inputs need no grad hook): about a third more compute for activations
        that no longer grow with depth."""
        def load():
            return AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype],
                                                        trust_remote_code=trust_remote_code)

        lm = load()
        if gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.adapters = add_adapters(lm, lora) if lora is not None and lora.r > 0 else None  # PEFT's wrapper
        policy = ScoringModel(lm, logprob_impl, packing)
        self.packing, self.max_tokens = packing, max_tokens_per_micro_batch
        self.vocab_size = policy.lm.get_output_embeddings().out_features
        self.micro_batch = min(micro_batch_size, episodes_per_rank)
        self.grad_accum = math.ceil(episodes_per_rank / self.micro_batch)
        self.zero_stage = zero_stage
        config = deepspeed_config(zero_stage, self.micro_batch, self.grad_accum, lr, grad_clip, dtype, zero3)
        self.engine, *_ = deepspeed.initialize(model=policy, config=config,
                                               model_parameters=trainable(policy))
        self.device = self.engine.device
        self.partition = self._partition("policy", self.engine)
        if packing:
            check_packing(self.engine)
        self.reference = None
        self.reference_partition = None
        if not with_reference:
            return
        if self.adapters is not None:  # the same weights: no second copy
            self.reference = AdaptersOff(self.engine.module)
            return
        reference = ScoringModel(load(), logprob_impl, packing).eval()
        reference.requires_grad_(False)
        # Sharded over the learners like the policy, not a full copy each. On one rank a ZeRO-3 engine would
        # split nothing and cost its gather buffers (about 1 GiB more at 65M parameters, bench/zero3_memory).
        if zero_stage == 3 and shard_reference and world_size() > 1:
            self.reference, *_ = deepspeed.initialize(model=reference,
                                                      config=reference_config(self.micro_batch, dtype, zero3))
            self.reference.eval()
            self.reference_partition = self._partition("reference", self.reference)
        else:
            self.reference = reference.to(self.device)

    def _partition(self, what: str, engine) -> PartitionReport | None:
        """At ZeRO-3: this rank's share of the engine's parameters, checked (see check_partitioned) and logged on
        rank 0."""
        if self.zero_stage != 3:
            return None
        report = partition_report(engine.module)
        check_partitioned(report, world_size(), engine._config.zero_config.param_persistence_threshold, what)
        if engine.global_rank == 0:
            print(report.line(what), flush=True)
        return report

    def update(self, batch: TrainBatch, advantages: list[Tensor], weights: TurnWeights, kl_estimator: str,
               is_cap: float | None = None, temperature: float = 1.0) -> UpdateStats:
        """One optimizer step over the whole batch (per-turn advantages, each [B]), in micro-batches with
        gradient accumulation. Policy and reference are scored at the sampling temperature (logits / T): the
        policy vLLM sampled from."""
        if self.reference is None:
            raise RuntimeError("this Learner was built with with_reference=False (train_rm): update() needs the "
                               "frozen reference for its KL term")
        with self.scoring_temperature(temperature):
            return self._update(batch, advantages, weights, kl_estimator, is_cap)

    @contextmanager
    def scoring_temperature(self, temperature: float):
        """Policy and reference score logits / temperature inside (once each: a LoRA reference is the policy)."""
        with ExitStack() as stack:
            for lm in {id(m): m for m in (self.policy, self.reference_lm)}.values():
                stack.enter_context(sampling_temperature(lm, temperature))
            yield

    def _update(self, batch: TrainBatch, advantages: list[Tensor], weights: TurnWeights, kl_estimator: str,
                is_cap: float | None) -> UpdateStats:
        self.engine.train()
        batch = batch.to(self.device)
        # Token counts over all ranks: DeepSpeed averages gradients across ranks, so each rank's loss
        # is scaled by world size over the global count to make the result one token mean.
        turns = range(batch.turns)
        turn_tokens = all_ranks_sum([batch.turn_mask(k).sum().item() for k in turns])
        scale = world_size()
        pg_coef, kl_coef = token_coefficients(batch.turn_masks, [a.to(self.device) for a in advantages], weights,
                                              turn_tokens)
        loss_sum = mismatch = drift = entropy_sum = 0.0
        kl_sums = [0.0] * batch.turns
        grad_norm = None  # the last micro-batch's (accumulate)
        groups = self.micro_batch_rows(batch)
        slots = tokens = 0
        for i, rows in enumerate(groups):
            # a rank with fewer micro-batches than another (token budgets) runs throwaway ones at zero weight
            throwaway = rows is None
            index = torch.tensor([0] if throwaway else rows, device=self.device)
            # in batch order, and as wide as the batch, unless packed or budgeted (then as wide as its longest)
            mb = batch.select(index) if self.packing or self.max_tokens else batch.slice(rows[0], rows[-1] + 1)
            mask = mb.attention_mask
            width = mask.shape[1]
            sampled = mb.response_mask > 0  # the loss's tokens: the head scores only these
            self.engine.set_gradient_accumulation_boundary(i == len(groups) - 1)
            with torch.no_grad(), record_function("update/reference_forward"):
                ref_lp = self.reference(mb.input_ids, mask, scored=sampled)[0]
            pg, kl = flat(pg_coef[index, :width], sampled), flat(kl_coef[index, :width], sampled)
            if throwaway:
                pg, kl = pg * 0, kl * 0
            rollout_lp = flat(mb.rollout_logprobs, sampled)

            def per_token_loss(lp: Tensor, _entropy, rows: slice) -> Tensor:
                coef = pg[rows]
                if is_cap is not None:  # stale episodes (asynchronous rollouts): truncated importance sampling
                    coef = coef * truncated_is_weights(lp.detach(), rollout_lp[rows].to(lp.dtype), is_cap)
                return token_loss(lp, ref_lp[rows], coef, kl[rows], kl_estimator)

            # The fused head takes the loss's gradient in its forward (no [tokens x vocab] logits).
            # entropy rides along: an elementwise pass over each logits chunk the head builds anyway
            with record_function("update/policy_forward"):
                loss, lp, _lse, entropy, *_ = self.engine(mb.input_ids, mask, wanted=Wanted(entropy=True),
                                                          per_token_loss=per_token_loss, scored=sampled)
            # Our loss is already a token mean over the whole batch: no extra 1/grad_accum scaling.
            grad_norm = self.accumulate(loss * scale)
            if throwaway:
                continue
            lengths = mb.lengths
            slots += forward_slots(lengths, self.packing, width)
            tokens += sum(lengths)
            entropy_sum += entropy.float().sum().item()
            lp, ref_lp = grid(lp.float(), sampled), grid(ref_lp.float(), sampled)
            kl_tokens = kl_per_token(lp, ref_lp, kl_estimator)
            if sampled.any():
                mismatch = max(mismatch, (lp - mb.rollout_logprobs).abs()[sampled].max().item())
                drift = max(drift, (lp - ref_lp).abs()[sampled].max().item())
            loss_sum += loss.item() * scale
            for k in turns:
                kl_sums[k] += (kl_tokens * mb.turn_mask(k)).sum().item()
        # Sums over all ranks over the global token counts: every rank reports the batch's token mean.
        kl_sums = all_ranks_sum(kl_sums)
        entropy_sum = all_ranks_sum([entropy_sum])[0]
        return UpdateStats(loss=loss_sum, kl_turns=[kl / max(n, 1) for kl, n in zip(kl_sums, turn_tokens)],
                           logprob_mismatch=mismatch, reference_drift=drift,
                           grad_norm=self.update_grad_norm(grad_norm),
                           lr=self.engine.get_lr()[0], entropy=entropy_sum / max(sum(turn_tokens), 1),
                           pad_frac=padding_share(*all_ranks_sum([slots, tokens])))

    def micro_batch_rows(self, batch: TrainBatch) -> list[list[int] | None]:
        """The update's micro-batches as row indices (engine.ops.packing.micro_batches); under token budgets a
        rank with fewer than another gets None (a throwaway pass) until all have as many: every rank's
        backward takes part in the gradient's reduction at the last one."""
        groups = micro_batches(batch.lengths, self.micro_batch, self.max_tokens, self.packing)
        if self.max_tokens is not None and world_size() > 1:
            groups += [None] * (int(reduce_max(len(groups))) - len(groups))
        return groups

    def accumulate(self, loss: Tensor) -> float | None:
        """One micro-batch's backward (`loss` already scaled for the whole update) and DeepSpeed's step, which
        applies the optimizer at the accumulation boundary (the caller sets it before the forward). Returns the
        gradient norm read just before that step (ZeRO 0, float32), else None; see update_grad_norm."""
        with record_function("update/backward"):
            self.engine.backward(loss, scale_wrt_gas=False)
        norm = self._grad_norm_before_step() if self.engine.is_gradient_accumulation_boundary() else None
        with record_function("update/optimizer_step"):
            self.engine.step()
        return norm

    def update_grad_norm(self, norm_before_step: float | None) -> float:
        """The update's gradient norm: the one `accumulate` read at the boundary, else the global norm that
        ZeRO 1-3's (or bfloat16's) optimizer computed; nan when DeepSpeed has none."""
        norm = self.engine.get_global_grad_norm() if norm_before_step is None else norm_before_step
        return float("nan") if norm is None else float(norm)

    def _grad_norm_before_step(self) -> float | None:
        """At ZeRO 0 every rank holds the full, already averaged gradients. In bfloat16, DeepSpeed's optimizer
        keeps them in its own float32 buffers (p.grad may be empty) and computes the norm itself."""
        if self.zero_stage != 0 or self.engine.bfloat16_enabled():
            return None
        grads = [p.grad.float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return torch.stack(grads).norm().item() if grads else 0.0

    def score(self, batch: TrainBatch) -> TokenStats:
        """The current policy's per-token statistics over the batch (no gradient), on the CPU. Every rank must
        call it (each with its own batch, of any size, even with no rows) when ZeRO-3 shards over several."""
        return self.score_ids(batch.input_ids, batch.attention_mask)

    def score_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> TokenStats:
        self.engine.eval()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        passes = math.ceil(len(input_ids) / self.micro_batch)
        if self.zero_stage == 3 and world_size() > 1:
            # Each forward gathers the sharded weights with every rank: ranks with fewer rows (an evaluation's
            # uneven shares) run throwaway forwards until all have run as many.
            passes = int(reduce_max(passes))
        return token_stats(self.engine, input_ids.to(self.device), mask.to(self.device), self.micro_batch,
                           self.vocab_size, passes=passes)

    @property
    def reference_lm(self):
        """The reference's Hugging Face model (inside its DeepSpeed engine at ZeRO-3; the policy's with LoRA)."""
        if isinstance(self.reference, AdaptersOff):
            return self.reference.scoring_model.lm
        return getattr(self.reference, "module", self.reference).lm

    @property
    def policy(self):
        """The Hugging Face model inside the engine (its parameters are ZeRO-3 shards at stage 3)."""
        return self.engine.module.lm

    def save_weights(self, folder, tokenizer, is_main: bool) -> None:
        """The policy as a Hugging Face folder (weights, config, tokenizer) that vLLM or `model.path` can
        load; LoRA adapters are merged into it and also saved alone under <folder>/adapter (PEFT's format).
        Every rank must call it (ZeRO-3 gathers); rank 0 writes."""
        state = self.full_state_dict()
        adapters = None
        if self.adapters is not None:
            with deepspeed.zero.GatheredParameters(trainable(self.policy), enabled=self.zero_stage == 3):
                adapters = adapter_state(self.adapters)
        if is_main:
            self.policy.save_pretrained(folder, state_dict=state)  # merged: the plain architecture's folder
            tokenizer.save_pretrained(folder)
            if adapters is not None:
                self.adapters.save_pretrained(Path(folder) / "adapter", state_dict=adapters)

    def full_state_dict(self) -> dict[str, Tensor]:
        """Every weight in full, including tied ones (lm_head.weight), for the rollout engine (LoRA merged,
        under the plain model's names). Under ZeRO-3 the shards are gathered on every rank first."""
        if self.adapters is not None:
            return gathered_state_dict(self.policy, self.zero_stage)
        module = self.policy
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().clone() for k, v in module.state_dict().items()}
        return {k: v.detach() for k, v in module.state_dict().items()}
