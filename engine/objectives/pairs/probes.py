"""Round probes (keyed by pairs.kind): a measurement of the current policy that algo.kind=dpo takes at the
start of every round and after the last one, e.g. PSRLM's judge accuracy. Its metrics go into the round's
record, the summary and TensorBoard under the probe's name, with the model's round (M0 = 0) as x."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ProbeInputs:
    engine: object  # rollout.vllm_engine.RolloutEngine holding the policy to measure
    tokenizer: object
    cfg: object
    rank: int  # a probe shares its work over the learner ranks and sums their counts
    world: int


@dataclass(frozen=True)
class RoundProbe:
    name: str  # the record key and TensorBoard prefix, e.g. "judge"
    measure: Callable[[ProbeInputs], dict[str, float] | None]  # None: nothing to measure with this config


ROUND_PROBES: dict[str, RoundProbe] = {}


def register_probe(kind: str, probe: RoundProbe) -> None:
    ROUND_PROBES[kind] = probe
