"""algo.kind=dpo: preference rounds on the engine's own rollouts (RLSF, EVOLVE, PSRLM).

Each round r of dpo.rounds:
  1. the current policy's weights go to vLLM; the round's prompts are sampled with (train.seed, r);
  2. the round probe of pairs.kind, if any, measures this policy (engine/objectives/pairs/probes.py: PSRLM's judge accuracy;
     again after the last round); the pair builder (pairs.kind) turns this policy's rollouts into preference
     pairs, scored by the reward (engine/objectives/pairs/builders.py); every rank builds its share, all ranks gather them all;
  3. pairs whose responses are the same tokens are dropped, a seeded shuffle keeps dpo.pairs_per_round;
     with dpo.reference=previous each pair's log-probs under this policy (the round's reference) are scored;
     they are written to <output_dir>/pairs/round-NNN.jsonl (ids and texts, for reading);
  4. dpo.epochs passes of DPO updates, dpo.batch_pairs pairs each (engine/objectives/dpo_step.py), against
     that reference, or the run's starting model with dpo.reference=base;
  5. an evaluation (the last round's is the final one) and a checkpoint.
A round where no pair passes the filter is reported and skipped. A run stopped inside a round resumes at
the round and update it stopped at, training on the round's saved pairs: the same result as a straight run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch

from engine.base.errors import UserError
from engine.base.guard import CollapseGuard
from engine.base.schedule import shuffled_batches
from engine.loop.evaluation import run_eval
from engine.loop.lifecycle import exit_after_signal, finish, resume_or_start, write_checkpoint
from engine.loop.run import Run
from engine.objectives import register
from engine.objectives.dpo_step import collate_pairs, dpo_update, policy_logprobs
from engine.objectives.pairs.builders import PAIR_BUILDERS, PreferencePair, RoundInputs, informative
from engine.objectives.round_extras import log_builder_stats, probe_history, probe_policy, summed_stats
from engine.runtime.distributed import gather_objects, reduce_max
from engine.runtime.stop_signals import StopSignals
from rollout.service import share

DPO_SCALARS = ("loss", "margin", "chosen_logp", "rejected_logp", "pairs", "accuracy", "grad_norm", "lr")


@register("dpo", rows_per_update=lambda cfg: 2 * cfg.dpo.batch_pairs)  # a pair: its chosen and rejected
def train_rounds(run: Run) -> dict:
    cfg = run.cfg
    started, signals = time.time(), StopSignals()
    guard = CollapseGuard(0.0, 0)  # the preference loop keeps no guard; the checkpoint format has its slot
    state = resume_or_start(run, guard)
    before, history, alarms = state["before"], state["history"], state["alarms"]
    rounds = state.get("rounds", [])
    start_round, start_update = state.get("round", 0), state.get("round_update", 0)
    for rnd in range(start_round, cfg.dpo.rounds):
        resumed_inside = rnd == start_round and start_update > 0
        pairs = load_pairs(run, rnd) if resumed_inside else round_pairs(run, rnd, rounds, len(history))
        schedule = pair_schedule(len(pairs), cfg.dpo.batch_pairs, cfg.dpo.epochs, cfg.train.seed, rnd)
        for update in range(start_update if resumed_inside else 0, len(schedule)):
            started_step = time.time()
            stats = preference_step(run, [pairs[i] for i in share(schedule[update], run.rank, run.world)])
            stats.update(round=float(rnd), step_seconds=time.time() - started_step)
            history.append(stats)
            log_update(run, rnd, update, len(schedule), len(history), stats)
            loop_state = {"round": rnd, "round_update": update + 1, "rounds": rounds}
            stop = signals.requested()
            if stop or (cfg.train.save_every and len(history) % cfg.train.save_every == 0):
                write_checkpoint(run, len(history), before, history, alarms, guard, loop_state)
            if stop:
                exit_after_signal(run, stop, f"in round {rnd + 1}, after update {update + 1}/{len(schedule)}")
        if pairs and rnd + 1 < cfg.dpo.rounds:  # the last round's evaluation is the final one
            rounds[-1]["eval"] = run_eval(run, len(history))
        write_checkpoint(run, len(history), before, history, alarms, guard,
                         {"round": rnd + 1, "round_update": 0, "rounds": rounds})
        stop = signals.requested()  # a signal during sampling or the evaluation: stop at the round's end
        if stop and rnd + 1 < cfg.dpo.rounds:
            exit_after_signal(run, stop, f"after round {rnd + 1}")
    final_probe = probe_policy(run, cfg.dpo.rounds, len(history))  # the trained policy (M<rounds>)
    return finish(run, before, history, alarms, started, {"rounds": rounds, **probe_history(rounds, final_probe)})


def round_pairs(run: Run, rnd: int, rounds: list, version: int) -> list[PreferencePair]:
    """Sample with the current policy (`version` updates so far), build, gather, filter, cap and save the
    round's pairs; an empty round is reported (and trains nothing)."""
    cfg = run.cfg
    run.rollouts.push_weights(version)
    probed = probe_policy(run, rnd, version)  # the policy that builds this round's pairs (M<rnd>)
    prompts = random.Random(cfg.train.seed * 1_000_003 + 7_919 * (rnd + 1)).sample(run.train_problems,
                                                                                   cfg.dpo.prompts_per_round)
    started = time.time()
    inputs = RoundInputs(run.rollouts.engine, run.tokenizer, cfg, run.learner,
                         share(prompts, run.rank, run.world), rnd)
    built = [p for part in gather_objects(build_on_every_rank(cfg.pairs.kind, inputs)) for p in part]
    kept = informative(built)
    random.Random(cfg.train.seed * 1_000_003 + rnd).shuffle(kept)
    kept = kept[:cfg.dpo.pairs_per_round]
    if cfg.dpo.reference == "previous":
        kept = with_reference_logps(run, kept)
    kinds = {k: sum(p.kind == k for p in kept) for k in sorted({p.kind for p in kept})}
    record = {"round": rnd + 1, "pairs_built": len(built), "pairs_kept": len(kept), "kinds": kinds,
              "seconds": time.time() - started}
    builder_stats = summed_stats(inputs.stats)
    if builder_stats:  # the builder's own counts, e.g. PSRLM's steps/*
        record["builder"] = builder_stats
        log_builder_stats(run, builder_stats, rnd + 1)
    if probed is not None:
        record[probed[0]] = probed[1]
    rounds.append(record)
    save_pairs(run, rnd, kept)
    run.logger.scalars("pairs", {"built": len(built), "kept": len(kept)}, rnd + 1)  # x axis: the round
    if not kept:
        run.log(f"[round {rnd + 1}/{cfg.dpo.rounds}] no pair passed the filter ({len(built)} built from "
                f"{len(prompts)} prompts; pairs.kind={cfg.pairs.kind}, pairs.threshold={cfg.pairs.threshold}): "
                f"round skipped, the policy is unchanged")
    else:
        run.log(f"[round {rnd + 1}/{cfg.dpo.rounds}] {len(kept)} pairs {kinds} of {len(built)} built from "
                f"{len(prompts)} prompts in {record['seconds']:.1f}s -> {pairs_path(run, rnd)}")
    return kept


def with_reference_logps(run: Run, pairs: list[PreferencePair]) -> list[PreferencePair]:
    """dpo.reference=previous: the round's reference is the policy that built its pairs. Each pair's summed
    response log-probs under it, scored before the round's first update. Every rank scores an equal share
    (padded with the first pair: ZeRO-3's forwards are collective), then all gather."""
    if not pairs:
        return pairs
    per_rank = math.ceil(len(pairs) / run.world)
    mine = pairs[run.rank * per_rank:(run.rank + 1) * per_rank]
    padded = mine + [pairs[0]] * (per_rank - len(mine))
    logps = policy_logprobs(run.learner, collate_pairs(padded, run.tokenizer.pad_token_id),
                            run.cfg.rollout.temperature).tolist()
    own = [[logps[i], logps[per_rank + i]] for i in range(len(mine))]
    gathered = [x for part in gather_objects(own) for x in part]
    return [dataclasses.replace(p, reference_logps=ref) for p, ref in zip(pairs, gathered)]


def build_on_every_rank(kind: str, inputs: RoundInputs) -> list[PreferencePair]:
    """The builder's pairs for this rank's prompts; when it fails on any rank (a reward error, a bad
    option), every rank raises, rather than the others waiting in the gather."""
    try:
        pairs, failure = PAIR_BUILDERS[kind](inputs), None
    except UserError as err:
        pairs, failure = [], err
    if reduce_max(float(failure is not None)):
        raise failure or UserError(f"building round {inputs.round + 1}'s pairs failed on another rank; that "
                                   f"rank's error line says why.")
    return pairs


def pair_schedule(pairs: int, batch_pairs: int, epochs: int, seed: int, rnd: int) -> list[list[int]]:
    """Indices of the pairs of each update (engine/base/schedule.py): per epoch a seeded shuffle, seeded by the
    round too, cut into batches of batch_pairs, a last partial batch filled from the start of the epoch's order."""
    return shuffled_batches(pairs, batch_pairs, [seed * 1_000_003 + 104_729 * (rnd + 1) + epoch
                                                 for epoch in range(epochs)])


def preference_step(run: Run, pairs: list[PreferencePair]) -> dict[str, float]:
    """One DPO update on this rank's pairs of the batch."""
    cfg = run.cfg
    batch = collate_pairs(pairs, run.tokenizer.pad_token_id)
    reference = None
    if cfg.dpo.reference == "previous":  # rows: the chosen responses, then the rejected ones
        reference = torch.tensor([p.reference_logps[0] for p in pairs] + [p.reference_logps[1] for p in pairs])
    stats = dpo_update(run.learner, batch, torch.tensor([p.weight for p in pairs]), cfg.dpo.beta,
                       temperature=cfg.rollout.temperature, reference_lp=reference)
    return {name: float(getattr(stats, name)) for name in DPO_SCALARS}


def log_update(run: Run, rnd: int, update: int, updates: int, step: int, stats: dict) -> None:
    run.logger.scalars("dpo", {k: stats[k] for k in DPO_SCALARS}, step)
    run.logger.scalars("perf", {"step_seconds": stats["step_seconds"]}, step)
    run.log(f"[round {rnd + 1}/{run.cfg.dpo.rounds} update {update + 1}/{updates}] dpo loss {stats['loss']:.4f} "
            f"margin {stats['margin']:+.4f} acc {stats['accuracy']:.2f} logp {stats['chosen_logp']:.2f}/"
            f"{stats['rejected_logp']:.2f} | {stats['step_seconds']:.1f}s")


def pairs_path(run: Run, rnd: int) -> Path:
    return Path(run.cfg.train.output_dir) / "pairs" / f"round-{rnd + 1:03d}.jsonl"


def save_pairs(run: Run, rnd: int, pairs: list[PreferencePair]) -> None:
    if not run.is_main:
        return
    path = pairs_path(run, rnd)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p.to_json()) + "\n" for p in pairs))
    tmp.replace(path)


def load_pairs(run: Run, rnd: int) -> list[PreferencePair]:
    path = pairs_path(run, rnd)
    pairs = [PreferencePair(**json.loads(line)) for line in path.read_text().splitlines()]
    if run.cfg.dpo.reference == "previous" and any(p.reference_logps is None for p in pairs):
        raise UserError(f"{path}: its pairs have no reference log-probs (written before dpo.reference existed, "
                        f"when every round trained against the base model), so round {rnd + 1} cannot resume "
                        f"with dpo.reference=previous. Hint: pass dpo.reference=base to finish that run as it began.")
    run.log(f"[resume] round {rnd + 1}: training on its {len(pairs)} saved pairs ({path})")
    return pairs
