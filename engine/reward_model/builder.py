"""rm.pairs=builder: the reward model's pairs, sampled now from the base policy through vLLM and a registered
pair builder (pairs.kind, engine/objectives/pairs/builders.py), ranked by the reward rm.reward (gold-checked by default, or a
label-free reward such as confidence). Each rank builds its share of rm.prompts; every rank gets them all."""

from __future__ import annotations

import gc
import random
import time
from collections import Counter

from omegaconf import DictConfig

from engine.base.errors import UserError
from engine.config.loading import with_values
from engine.loop.inputs import Inputs, fit_to_model
from engine.objectives.dpo_rounds import build_on_every_rank
from engine.objectives.pairs.builders import RoundInputs, informative
from engine.reward_model.pairs import RMPair
from engine.runtime.distributed import gather_objects
from engine.tasks.data import Problem
from rollout.service import share
from rollout.vllm_engine import RolloutEngine


def builder_prompts(cfg: DictConfig, problems: list[Problem], tokenizer, model_config,
                    log) -> tuple[DictConfig, list[Problem]]:
    """rm.prompts training problems (a seeded sample), once those whose episode cannot fit the context are
    dropped or refused (data.overlong, engine/loop/inputs.py); and cfg with its context sized (fit_to_model)."""
    cfg, fitted = fit_to_model(cfg, Inputs(problems, problems[:1]), tokenizer, model_config, log)
    fitted = fitted.train
    if cfg.rm.prompts > len(fitted):
        raise UserError(f"rm.prompts={cfg.rm.prompts} is more than the {len(fitted)} problems in {cfg.data.train}. "
                        f"Hint: lower rm.prompts.")
    return cfg, random.Random(cfg.train.seed * 1_000_003 + 99_991).sample(fitted, cfg.rm.prompts)


def build_pairs(cfg: DictConfig, learner, tokenizer, model_path: str, prompts: list[Problem], rank: int,
                world: int, log) -> list[RMPair]:
    """Every rank's pairs (texts), in rank order; pairs of identical responses are dropped."""
    started = time.time()
    engine = RolloutEngine(model_path, max_model_len=cfg.rollout.max_model_len, seed=cfg.train.seed + rank,
                           dtype=cfg.model.dtype, kv_cache_gib=cfg.rollout.kv_cache_gib,
                           trust_remote_code=cfg.model.trust_remote_code)
    ranked_by = with_values(cfg, {"reward.kind": cfg.rm.reward})  # the builders read their reward from reward.kind
    inputs = RoundInputs(engine, tokenizer, ranked_by, learner, share(prompts, rank, world), round=0)
    built = [p for part in gather_objects(build_on_every_rank(cfg.pairs.kind, inputs)) for p in part]
    del inputs, engine  # the sampler is done: its KV cache and weights are not kept through training
    gc.collect()
    kept = [RMPair(p.prompt, p.chosen_text, p.rejected_text, origin=p.kind) for p in informative(built)]
    kinds = dict(sorted(Counter(p.origin for p in kept).items()))
    log(f"[pairs] {len(kept)} pairs {kinds} from {len(prompts)} prompts (pairs.kind={cfg.pairs.kind}, "
        f"rm.reward={cfg.rm.reward}) in {time.time() - started:.1f}s")
    if not kept:
        raise UserError(f"the {cfg.pairs.kind} builder made no pair from {len(prompts)} prompts ranked by "
                        f"rm.reward={cfg.rm.reward}: every prompt's responses scored the same. Hint: raise rm.prompts "
                        f"or rollout.n, or use another rm.reward or pairs.kind.")
    return kept
