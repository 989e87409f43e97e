"""What the DPO rounds record besides pairs: the pair builder's own counts (RoundInputs.stats, e.g. PSRLM's
steps/*) and the round probe of pairs.kind (engine/objectives/pairs/probes.py, e.g. PSRLM's judge accuracy), measured on the
policy at the start of every round and after the last one."""

from __future__ import annotations

from engine.objectives.pairs import psrlm  # noqa: F401  (registers pairs.kind=psrlm and its round probe)
from engine.objectives.pairs.probes import ROUND_PROBES, ProbeInputs
from engine.runtime.distributed import gather_objects


def summed_stats(stats: dict[str, float]) -> dict[str, float]:
    """Every rank's builder counts, summed (a count missing on a rank is 0 there)."""
    parts = gather_objects(stats)
    return {key: sum(part.get(key, 0.0) for part in parts) for key in sorted({k for part in parts for k in part})}


def log_builder_stats(run, stats: dict[str, float], x: int) -> None:
    """"steps/no_delimiter" -> TensorBoard tag steps/no_delimiter at the round."""
    groups: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        prefix, _, name = key.rpartition("/")
        groups.setdefault(prefix or "builder", {})[name] = value
    for prefix, values in groups.items():
        run.logger.scalars(prefix, values, x)


def probe_policy(run, model_round: int, version: int) -> tuple[str, dict] | None:
    """The probe of pairs.kind on the policy after `version` updates, M<model_round> (M0 = the base), logged
    with x = model_round; None when pairs.kind has no probe or the config turns it off."""
    probe = ROUND_PROBES.get(run.cfg.pairs.kind)
    if probe is None:
        return None
    run.rollouts.push_weights(version)
    metrics = probe.measure(ProbeInputs(run.rollouts.engine, run.tokenizer, run.cfg, run.rank, run.world))
    if metrics is None:
        return None
    run.logger.scalars(probe.name, metrics, model_round)
    run.log(f"[{probe.name}] M{model_round}: " + " ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return probe.name, {"model": model_round, **metrics}


def probe_history(rounds: list[dict], final: tuple[str, dict] | None) -> dict:
    """Summary section: the probe's metrics per model, M0 .. M<rounds> (from the round records and the
    final probe)."""
    if final is None:
        return {}
    name, metrics = final
    return {name: [r[name] for r in rounds if name in r] + [metrics]}
