"""The run configuration: YAML files + `key=value` overrides merged onto the schema (engine/config/schema.py),
then checked. Every user-facing error names the offending key and, for typos, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import re
import string
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from engine.base.errors import UserError
from engine.config.schema import Config, base_config  # noqa: F401  (re-exported: callers import them from here)
from engine.tasks.judge import JUDGE_FIELDS, JUDGE_LABELS, PUNCTUATION

CHOICES = {
    "algo.kind": ("pg", "dpo"),
    "pairs.kind": ("rlsf", "evolve", "psrlm"),
    "algo.kl_estimator": ("k1", "k2", "k3"),
    "algo.advantage": ("reinforce", "rloo", "grpo"),
    "deepspeed.zero_stage": (0, 1, 2, 3),
    "model.dtype": ("float32", "bfloat16"),
    "reward.metric": ("disparity", "prob", "neg_entropy", "agreement"),
    "reward.scope": ("answer", "response"),
    "reward.reduction": ("mean", "min", "geomean"),
    "reward.vote_weight": ("uniform", "confidence"),
    "reward.vote_metric": ("prob", "disparity"),
    "algo.turn1_credit": ("own", "trajectory"),
    "algo.token_baseline": ("turn_mean", "position"),
    "guard.action": ("warn", "stop"),
    "learner.logprob_impl": ("auto", "naive", "chunked", "triton"),
    "train.resume": ("auto", "never"),
    "data.overlong": ("error", "skip"),
    "rollout.placement": ("colocated", "dedicated"),
    "reward.nonfinite": ("error", "skip"),
    "log.level": ("info", "debug"),
    "dpo.reference": ("previous", "base"),
}
OPEN_SECTIONS = ("reward.weights",)  # user-named keys live here
POSITIVE = ("train.keep_checkpoints", "rollout.turns", "train.steps", "rollout.n", "rollout.prompts_per_step", "rollout.max_tokens",
            "eval.problems", "train.micro_batch_size", "rollout.max_model_len", "rollout.kv_cache_gib",
            "rollout.workers", "rollout.worker_timeout_s", "rollout.sync_bucket_mb", "rollout.is_cap",
            "reward.probe_min_tokens", "dpo.beta", "dpo.rounds", "dpo.prompts_per_round", "dpo.pairs_per_round",
            "dpo.batch_pairs", "dpo.epochs", "pairs.branches", "reward.rewrite_max_tokens",
            "rm.prompts", "rm.epochs", "rm.batch_size", "rm.lr", "steps.max_steps", "steps.candidates",
            "steps.max_step_tokens", "judge.max_tokens")
NON_NEGATIVE = ("eval.every", "train.save_every", "algo.stage1_steps", "algo.beta1", "algo.beta2", "algo.alpha",
                "train.lr", "rollout.temperature", "eval.temperature", "train.grad_clip", "eval.samples_logged",
                "guard.min_entropy", "guard.patience", "reward.probe_tokens", "log.text_every", "log.text_episodes",
                "rollout.max_staleness", "rollout.min_tokens", "rm.heldout_pairs", "rm.save_every", "rm.eval_every", "judge.eval_pairs",
                "deepspeed.max_live_parameters", "deepspeed.max_reuse_distance", "deepspeed.prefetch_bucket_size",
                "model.lora.r", "deepspeed.param_persistence_threshold")
POSITIVE += ("deepspeed.reduce_bucket_size", "learner.max_tokens_per_micro_batch")
# null: derived at start-up (engine/loop/inputs.py), or off (a token budget)
OPTIONAL = ("rollout.max_model_len", "learner.max_tokens_per_micro_batch")


class ConfigError(UserError):
    """A user-facing configuration mistake; the message names the key and gives a hint."""


def staleness(cfg: DictConfig) -> int:
    """How many updates a batch may be generated behind the policy that trains on it."""
    return cfg.rollout.max_staleness if cfg.rollout["async"] else 0


def all_keys(node=None, prefix: str = "") -> list[str]:
    node = base_config() if node is None else node
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys += all_keys(v, full + ".") if isinstance(v, DictConfig) and full not in OPEN_SECTIONS else [full]
    return keys


def _unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else " The valid keys are listed in docs/configuration.md."
    return ConfigError(f"unknown config key '{key}' ({source}).{hint}")


def _flat_keys(raw: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in raw.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def _merge_checked(base: DictConfig, extra: DictConfig, source: str) -> DictConfig:
    valid = set(all_keys())
    sections = {k.split(".")[0] for k in valid}
    for key in _flat_keys(extra):
        if key not in valid and key not in sections and not key.startswith(tuple(s + "." for s in OPEN_SECTIONS)):
            raise _unknown_key_error(key, source)
    try:
        return OmegaConf.merge(base, extra)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise _unknown_key_error(str(err.full_key), source) from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad value for '{err.full_key}' ({source}): {str(err.msg).splitlines()[0]}."
                          f"{_default_hint(str(err.full_key))}") from None


def _default_hint(key: str, typed: bool = True) -> str:
    """' Hint: train.steps takes int values, e.g. the default train.steps=160.' for a known key."""
    default = OmegaConf.select(base_config(), key, default=None)
    if default is None or isinstance(default, DictConfig):
        return ""
    if not typed:
        return f" Hint: the default is {key}={default}."
    return f" Hint: {key} takes {type(default).__name__} values, e.g. the default {key}={default}."


def _validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}.")
    for key in POSITIVE:
        if key in OPTIONAL and OmegaConf.select(cfg, key) is None:
            continue
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {OmegaConf.select(cfg, key)}.{_default_hint(key, typed=False)}")
    for key in NON_NEGATIVE:
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {OmegaConf.select(cfg, key)}.{_default_hint(key, typed=False)}")
    if not isinstance(cfg.rollout["async"], bool):
        raise ConfigError(f"bad value for 'rollout.async': {cfg.rollout['async']!r} is not a bool. Hint: "
                          f"rollout.async=true or false (the default).")
    if cfg.rollout["async"] and cfg.rollout.placement != "dedicated":
        raise ConfigError("rollout.async=true needs rollout.placement=dedicated: a colocated engine shares its "
                          "rank with the learner, so there is nothing to overlap.")
    if 0 < cfg.rollout.temperature < 0.01:  # vLLM raises such a temperature to 0.01; the learner would not
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature} is below the 0.01 vLLM samples at. Hint: "
                          f"use 0 (greedy) or a temperature >= 0.01.")
    if cfg.rollout.min_tokens > cfg.rollout.max_tokens:
        raise ConfigError(f"rollout.min_tokens={cfg.rollout.min_tokens} is more than rollout.max_tokens="
                          f"{cfg.rollout.max_tokens}. Hint: at most rollout.max_tokens (equal lengths: the same value).")
    if cfg.reward.probe_tokens and cfg.reward.probe_min_tokens > cfg.reward.probe_tokens:
        raise ConfigError(f"reward.probe_min_tokens={cfg.reward.probe_min_tokens} is more than the "
                          f"reward.probe_tokens={cfg.reward.probe_tokens} the probe generates: it could never find an "
                          f"answer. Hint: lower reward.probe_min_tokens or raise reward.probe_tokens.")
    if not 0.0 <= cfg.pairs.threshold <= 1.0:
        raise ConfigError(f"pairs.threshold={cfg.pairs.threshold} is outside [0, 1]: it is compared with a confidence, "
                          f"a probability. Hint: the default is pairs.threshold=0.9.")
    _validate_steps_and_judge(cfg)
    _validate_seq2seq_reward(cfg)
    _validate_lora(cfg.model.lora)
    if cfg.algo.kind == "dpo" and cfg.rollout.placement != "colocated":
        raise ConfigError("algo.kind=dpo samples each round on the learners' own vLLM engines: it needs "
                          "rollout.placement=colocated.")
    if cfg.algo.advantage in ("rloo", "grpo") and cfg.rollout.n < 2:
        raise ConfigError(
            f"algo.advantage={cfg.algo.advantage} needs a group baseline: set rollout.n >= 2 "
            f"(got {cfg.rollout.n}), or use algo.advantage=reinforce."
        )


def _validate_lora(lora: DictConfig) -> None:
    if not lora.r:
        return
    if lora.alpha <= 0:
        raise ConfigError(f"model.lora.alpha={lora.alpha} must be > 0: the adapters' output is scaled by alpha / r. "
                          f"Hint: the default is model.lora.alpha=16.")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"model.lora.dropout={lora.dropout} is outside [0, 1). Hint: the default is 0.")
    targets = list(lora.target_modules)
    if "all-linear" in targets and len(targets) > 1:
        raise ConfigError(f"model.lora.target_modules={targets}: all-linear already names every Linear layer but the "
                          f"output head; it cannot be mixed with names. Hint: [all-linear] or a list of names.")
    if not targets or "lm_head" in targets:
        raise ConfigError(f"model.lora.target_modules={targets}: name at least one Linear layer, and not lm_head "
                          f"(the fused log-prob head needs a plain output layer). Hint: [all-linear] (the default) "
                          f"or e.g. [q_proj,v_proj].")


def _validate_steps_and_judge(cfg: DictConfig) -> None:
    """steps.* and judge.*: a delimiter that compiles and that every stop string ends a step on; two distinct
    bare labels; a template that shows both candidates."""
    try:
        delimiter = re.compile(cfg.steps.delimiter)
    except re.error as err:
        raise ConfigError(f"steps.delimiter={cfg.steps.delimiter!r} is not a regular expression ({err}).") from None
    for stop in cfg.steps.stops:
        if not stop or not delimiter.search(stop):
            raise ConfigError(f"steps.stops has {stop!r}, which steps.delimiter={cfg.steps.delimiter!r} does not "
                              f"match: a step sampled up to it would not end there. Hint: list the delimiter's "
                              f"literal strings.")
    labels = list(cfg.judge.labels)
    if len(labels) != 2 or labels[0] == labels[1] or any(not x or x.strip(PUNCTUATION) != x or len(x.split()) != 1
                                                         for x in labels):
        raise ConfigError(f"judge.labels={labels} must be two different one-word labels without surrounding "
                          f"punctuation. Hint: the default is {list(JUDGE_LABELS)}.")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(cfg.judge.template) if name is not None}
    except ValueError as err:  # an unmatched brace
        raise ConfigError(f"judge.template cannot be formatted ({err}). Hint: write a literal brace as {{{{ or }}}}.") \
            from None
    if not {"a", "b"} <= fields <= set(JUDGE_FIELDS):
        raise ConfigError(f"judge.template has the fields {sorted(fields)}; it needs {{a}} and {{b}} (the candidate "
                          f"steps) and may use {sorted(set(JUDGE_FIELDS) - {'a', 'b'})}, nothing else.")
    if cfg.pairs.kind == "psrlm" and cfg.steps.candidates < 2:
        raise ConfigError(f"steps.candidates={cfg.steps.candidates} gives a prefix one candidate, so PSRLM's judge "
                          f"has nothing to compare. Hint: steps.candidates >= 2 (the default is 4).")
    if cfg.pairs.kind == "psrlm" and cfg.algo.kind == "dpo" and cfg.rollout.temperature == 0:
        raise ConfigError("pairs.kind=psrlm samples its candidate steps at rollout.temperature=0: greedy samples are "
                          "identical, so no prefix has two candidates to judge and no pair is built. Hint: a "
                          "temperature > 0 (psrlm.yaml inherits 1.0).")


def _validate_seq2seq_reward(cfg: DictConfig) -> None:
    """reward.kind=seq2seq (alone or in a mix): room for a whole rewrite, and token credit that keeps its sign."""
    if cfg.reward.kind != "seq2seq" and "seq2seq" not in (cfg.reward.weights if cfg.reward.kind == "mix" else {}):
        return
    if cfg.reward.rewrite_max_tokens < cfg.rollout.max_tokens + 1:
        raise ConfigError(f"reward.rewrite_max_tokens={cfg.reward.rewrite_max_tokens} is shorter than a response of "
                          f"rollout.max_tokens={cfg.rollout.max_tokens} plus an end-of-turn token: a rewrite cut there "
                          f"would mark the response's tail as deleted, and a response cut at rollout.max_tokens "
                          f"could not be rewritten into a finished one. Hint: reward.rewrite_max_tokens >= "
                          f"{cfg.rollout.max_tokens + 1}.")
    if cfg.algo.kind == "pg" and cfg.algo.turn1_credit == "trajectory" and cfg.algo.alpha > 1:
        raise ConfigError(f"algo.turn1_credit=trajectory with algo.alpha={cfg.algo.alpha} > 1 weighs turn 1's own "
                          f"reward by 1 - alpha < 0, so the seq2seq reward's per-token credit in turn 1 would favour "
                          f"the tokens its rewrite changes. Hint: algo.turn1_credit=own (the default) or alpha <= 1.")


def _merge_file(cfg: DictConfig, path: Path, seen: tuple[Path, ...]) -> DictConfig:
    """Merge a YAML file into `cfg`; a top-level `base: other.yaml` (relative to the file) is merged first,
    so a recipe that differs from another in a few keys is an override layered on it. Several files on the
    command line merge left to right, each with its own base chain."""
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in seen + (path.resolve(),))
        raise ConfigError(f"{path}: the 'base' chain loops back to itself ({chain}).")
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError carries the line in its message
        raise ConfigError(f"{path}: cannot parse YAML: {err}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...).")
    if "base" in file_cfg:
        name = file_cfg.pop("base")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: base: takes one YAML path relative to the file, got {name!r}.")
        base = path.parent / name
        if not base.is_file():
            raise ConfigError(f"{path}: base: '{base}' not found. Hint: a path relative to {path.parent}.")
        cfg = _merge_file(cfg, base, seen + (path.resolve(),))
    return _merge_checked(cfg, file_cfg, str(path))


def load_config(argv: list[str]) -> DictConfig:
    """`[file.yaml ...] key=value ...` -> a validated, read-only config."""
    cfg = base_config()
    overrides = []
    for arg in argv:
        if "=" in arg:
            overrides.append(arg)
            continue
        if not Path(arg).is_file():
            raise ConfigError(f"config file '{arg}' not found. Hint: pass a YAML path or key=value overrides.")
        cfg = _merge_file(cfg, Path(arg), seen=())
    for item in overrides:
        key = item.split("=", 1)[0].strip().lstrip("+")
        try:
            extra = OmegaConf.from_dotlist([item])
        except Exception as err:
            raise ConfigError(f"cannot parse override '{item}': {err}") from None
        cfg = _merge_checked(cfg, extra, f"override '{key}'")
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def with_values(cfg: DictConfig, values: dict[str, object]) -> DictConfig:
    """A read-only copy of cfg with {dotted key: value} set."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    for key, value in values.items():
        OmegaConf.update(out, key, value)
    OmegaConf.set_readonly(out, True)
    return out


def save_config(cfg: DictConfig, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(cfg))


def main_args(argv: list[str] | None = None) -> list[str]:
    """The config arguments of a `deepspeed engine/train.py ...` launch, without the launcher's own flags."""
    argv = sys.argv[1:] if argv is None else argv
    return [a for a in argv if not a.startswith("--local_rank") and not a.startswith("--local-rank")]
