"""Learner -> rollout-worker weights in the dedicated layout. Learner 0 broadcasts the policy's
weights in buckets over the fan-out group; under ZeRO-3 the learners gather one module's parameters
at a time, so no rank ever holds the whole model twice. Workers stream the buckets into vLLM."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import deepspeed
import torch

from engine.models import DTYPES, dtype_name


@dataclass(frozen=True)
class WeightSpec:
    names: list[str]  # state_dict names, tied ones included (lm_head.weight)
    shapes: list[tuple[int, ...]]
    dtypes: list[str]


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


def module_weights(model) -> list[tuple[torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]]:
    """Per module (in order), its own parameters under their state_dict names. A tied weight appears
    under each module that holds it, as vLLM expects every state_dict name."""
    layers = []
    for prefix, module in model.named_modules(remove_duplicate=False):
        own = [(f"{prefix}.{name}" if prefix else name, p)
               for name, p in module.named_parameters(recurse=False, remove_duplicate=False)]
        if own:
            layers.append((module, own))
    return layers


def weight_spec(model) -> WeightSpec:
    entries = [(name, p) for _, own in module_weights(model) for name, p in own]
    # Under ZeRO-3 a parameter's data is a placeholder; ds_shape keeps the real shape.
    shapes = [tuple(getattr(p, "ds_shape", p.shape)) for _, p in entries]
    return WeightSpec([n for n, _ in entries], shapes, [dtype_name(p.dtype) for _, p in entries])


def send_weights(model, zero_stage: int, is_sender: bool, broadcast, bucket_bytes: int) -> None:
    """Every learner calls this (ZeRO-3 gathers are collective); learner 0 (`is_sender`) fills each
    bucket and hands it to `broadcast` (a flat tensor)."""
    spec = weight_spec(model)
    buckets = iter(plan_buckets(spec, bucket_bytes))
    bucket, ready = next(buckets, None), []
    for module, own in module_weights(model):
        params = [p for _, p in own]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero_stage == 3):
            if is_sender:
                ready += [p.detach().reshape(-1).to("cpu", copy=True) for p in params]
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
