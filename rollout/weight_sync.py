"""Learner -> rollout-engine weights. The colocated engine takes the learner's full state dict; in the
dedicated layout learner 0 broadcasts the policy's weights in buckets over the fan-out group. Under ZeRO-3
the learners gather one module's parameters at a time, so no rank ever holds the whole model twice. Workers
stream the buckets into vLLM. A LoRA policy is sent merged, under the plain model's names."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

import deepspeed
import torch
from torch import Tensor, nn

from engine.models.lora import is_lora_layer, merged_weights
from engine.models.paths import DTYPES, dtype_name


@dataclass(frozen=True)
class WeightSpec:
    names: list[str]  # state_dict names, tied ones included (lm_head.weight)
    shapes: list[tuple[int, ...]]
    dtypes: list[str]


@dataclass
class WeightGroup:
    """One module's weights: gathered together under ZeRO-3, sent under the names vLLM loads."""
    params: list[nn.Parameter]  # what to gather
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    values: Callable[[], list[Tensor]]  # the tensors under `names`, while `params` are gathered


def plan_buckets(spec: WeightSpec, bucket_bytes: int) -> list[list[int]]:
    """Consecutive entries grouped until a bucket would pass `bucket_bytes` or the dtype changes;
    an entry larger than a bucket gets one of its own."""
    buckets, current, size = [], [], 0
    for i, (shape, dtype) in enumerate(zip(spec.shapes, spec.dtypes)):
        nbytes = torch.Size(shape).numel() * DTYPES[dtype].itemsize
        if current and (size + nbytes > bucket_bytes or dtype != spec.dtypes[current[0]]):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def _group(prefix: str, own: list[tuple[str, nn.Parameter]], extra: list[nn.Parameter], values) -> WeightGroup:
    params = [p for _, p in own]
    return WeightGroup(params + extra, [f"{prefix}.{n}" if prefix else n for n, _ in own],
                       # Under ZeRO-3 a parameter's data is a placeholder; ds_shape keeps the real shape.
                       [tuple(getattr(p, "ds_shape", p.shape)) for p in params],
                       [dtype_name(p.dtype) for p in params], values)


def weight_groups(model: nn.Module) -> list[WeightGroup]:
    """Per module (in order), its own parameters under their state_dict names. A tied weight appears under
    each module that holds it, as vLLM expects every state_dict name. A LoRA layer is one group: its merged
    weight (and base bias) under the plain layer's names; its inner modules are skipped."""
    groups, lora_prefixes = [], []
    for prefix, module in model.named_modules(remove_duplicate=False):
        if any(prefix.startswith(p + ".") for p in lora_prefixes):
            continue
        if is_lora_layer(module):
            lora_prefixes.append(prefix)
            groups.append(_group(prefix, *merged_weights(module)))
            continue
        own = list(module.named_parameters(recurse=False, remove_duplicate=False))
        if own:
            groups.append(_group(prefix, own, [], lambda own=own: [p.detach() for _, p in own]))
    return groups


def weight_spec(model) -> WeightSpec:
    groups = weight_groups(model)
    return WeightSpec([n for g in groups for n in g.names], [s for g in groups for s in g.shapes],
                      [d for g in groups for d in g.dtypes])


def gathered_state_dict(model, zero_stage: int) -> dict[str, Tensor]:
    """Every weight in full under vLLM's names (tied ones included, LoRA merged), one module gathered at a
    time under ZeRO-3 (then copied out of the gather buffer)."""
    state = {}
    for group in weight_groups(model):
        with deepspeed.zero.GatheredParameters(group.params, modifier_rank=None, enabled=zero_stage == 3):
            values = [v.detach() for v in group.values()]
            state.update(zip(group.names, [v.clone() for v in values] if zero_stage == 3 else values))
    return state


def send_weights(model, zero_stage: int, is_sender: bool, broadcast, bucket_bytes: int) -> None:
    """Every learner calls this (ZeRO-3 gathers are collective); learner 0 (`is_sender`) fills each
    bucket and hands it to `broadcast` (a flat tensor)."""
    spec = weight_spec(model)
    buckets = iter(plan_buckets(spec, bucket_bytes))
    bucket, ready = next(buckets, None), []
    for group in weight_groups(model):
        with deepspeed.zero.GatheredParameters(group.params, modifier_rank=None, enabled=zero_stage == 3):
            if is_sender:
                ready += [v.detach().reshape(-1).to("cpu", copy=True) for v in group.values()]
        while is_sender and bucket is not None and len(ready) >= len(bucket):
            broadcast(torch.cat(ready[:len(bucket)]))
            ready = ready[len(bucket):]
            bucket = next(buckets, None)


def receive_weights(spec: WeightSpec, bucket_bytes: int, broadcast) -> Iterator[tuple[str, torch.Tensor]]:
    """The worker's side: (name, tensor) pairs, one bucket at a time, for vLLM's reload_weights."""
    for bucket in plan_buckets(spec, bucket_bytes):
        numels = [torch.Size(spec.shapes[i]).numel() for i in bucket]
        flat = torch.empty(sum(numels), dtype=DTYPES[spec.dtypes[bucket[0]]])
        broadcast(flat)
        for i, part in zip(bucket, flat.split(numels)):
            yield spec.names[i], part.view(spec.shapes[i])
