import pytest

from engine.config.loading import ConfigError, load_config, save_config

PUBLIC_KEYS = [
    "model.path", "data.train", "data.eval", "train.steps", "train.seed", "train.lr", "train.output_dir",
    "train.save_every", "eval.every", "eval.problems", "rollout.n", "rollout.prompts_per_step",
    "rollout.max_tokens", "rollout.temperature", "algo.stage1_steps", "algo.alpha", "algo.beta1", "algo.beta2",
    "algo.kl_estimator", "algo.advantage", "reward.kind", "deepspeed.zero_stage",
]


def test_public_keys_exist(tmp_path):
    cfg = load_config([])
    from omegaconf import OmegaConf
    for key in PUBLIC_KEYS:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("train:\n  steps: 7\nalgo:\n  advantage: grpo\n")
    cfg = load_config([str(f), "train.steps=3", "algo.kl_estimator=k3"])
    assert cfg.train.steps == 3 and cfg.algo.advantage == "grpo" and cfg.algo.kl_estimator == "k3"


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(["train.steps=5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config([str(tmp_path / "config.yaml")]) == cfg


@pytest.mark.parametrize("arg, closest", [("train.stepz=3", "train.steps"), ("algo.alhpa=1", "algo.alpha"),
                                          ("rollout.temprature=0.5", "rollout.temperature")])
def test_unknown_override_names_key_and_closest(arg, closest):
    with pytest.raises(ConfigError) as err:
        load_config([arg])
    assert arg.split("=")[0] in str(err.value) and closest in str(err.value)


def test_unknown_key_in_yaml_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("algo:\n  betta1: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config([str(f)])
    assert "algo.betta1" in str(err.value) and "algo.beta1" in str(err.value) and "bad.yaml" in str(err.value)


@pytest.mark.parametrize("arg, needle", [
    ("algo.kl_estimator=k9", "algo.kl_estimator"), ("algo.advantage=ppo", "algo.advantage"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage"), ("train.steps=0", "train.steps"),
    ("train.steps=abc", "train.steps"), ("algo.beta1=-1", "algo.beta1"),
    ("deepspeed.reduce_bucket_size=0", "deepspeed.reduce_bucket_size"),
    ("deepspeed.max_reuse_distance=-1", "deepspeed.max_reuse_distance"),
    ("rollout.temperature=0.005", "rollout.temperature=0.005 is below the 0.01 vLLM samples at"),
    ("reward.probe_min_tokens=9", "reward.probe_min_tokens=9 is more than the reward.probe_tokens=8"),
])
def test_bad_values_name_the_key(arg, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config([arg])


@pytest.mark.parametrize("arg, needle", [
    ("model.lora.alpha=0", r"model\.lora\.alpha=0\.0 must be > 0"),
    ("model.lora.dropout=1.0", r"model\.lora\.dropout=1\.0 is outside \[0, 1\)"),
    ("model.lora.target_modules=[lm_head]", r"model\.lora\.target_modules=\['lm_head'\]: .*not lm_head"),
    ("model.lora.target_modules=[]", r"model\.lora\.target_modules=\[\]: name at least one"),
    ("model.lora.target_modules=[all-linear,q_proj]", r"all-linear already names every Linear layer"),
])
def test_bad_lora_settings_name_the_key(arg, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(["model.lora.r=8", arg])
    load_config(["model.lora.r=0", arg])  # no adapters: the other lora keys are not read


def test_group_baseline_needs_two_samples():
    with pytest.raises(ConfigError, match="rollout.n"):
        load_config(["rollout.n=1"])
    assert load_config(["rollout.n=1", "algo.advantage=reinforce"]).rollout.n == 1


def test_missing_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="not found"):
        load_config(["configs/nope.yaml"])


def test_recipe_files_load():
    cfg = load_config(["configs/default.yaml"])
    assert cfg.model.path == "builtin:tiny-arith" and cfg.data.train == "builtin:arith"
    assert cfg.reward.kind == "confidence" and cfg.reward.metric == "agreement"  # label-free; gold only evaluates
    gold = load_config(["configs/gold.yaml"])
    assert gold.reward.kind == "gold"
    # the gold baseline is the same run in every other respect
    assert {k: v for k, v in gold.items() if k != "reward"} == {k: v for k, v in cfg.items() if k != "reward"}


def test_yaml_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- train.steps: 3\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config([str(f)])


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  steps: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config([str(f)])


def test_base_layers_a_recipe_on_another(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  steps: 7\n  lr: 0.5\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  lr: 0.25\n")
    cfg = load_config([str(tmp_path / "b.yaml"), "train.seed=3"])
    assert (cfg.train.steps, cfg.train.lr, cfg.train.seed) == (7, 0.25, 3)
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="base: .*missing.yaml' not found"):
        load_config([str(tmp_path / "c.yaml")])
    (tmp_path / "d.yaml").write_text("base: d.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config([str(tmp_path / "d.yaml")])
    (tmp_path / "e.yaml").write_text("base: a.yaml\ntrain:\n  stepz: 1\n")
    with pytest.raises(ConfigError, match="train.stepz.*e.yaml"):
        load_config([str(tmp_path / "e.yaml")])


@pytest.mark.parametrize("overrides, said", [
    # a guard that stops training on labels it reads, and on which split
    (["guard.action=stop", "guard.data=builtin:arith-eval"], "evaluates 1000 problems of guard.data=builtin:arith-eval "
     "(the reported split: data.eval; set guard.data to a validation split), and guard.action=stop lets their "
     "accuracy end training"),
    # unset, on data with no known validation split: the guard reads data.eval, and says so
    (["data.eval=tests/data/prompts_only.jsonl"], "guard.data=tests/data/prompts_only.jsonl (the reported split"),
    # a guard whose check reads evaluations, without any during training
    (["eval.every=0"], "[warn] guard.patience=2 compares held-out evaluations during training, and eval.every=0"),
    # majority counts plain votes: a confidence weighting does nothing
    (["reward.kind=majority"], "[reward] reward.kind=majority does not read reward.metric=agreement, "
                               "reward.scope=response, reward.reduction=min, reward.vote_weight=confidence"),
    # configs/gold.yaml inherits the default reward's settings
    (["configs/gold.yaml"], "[reward] reward.kind=gold does not read reward.metric=agreement"),
    # a token budget shapes the policy-gradient update only
    (["configs/rlsf_dpo.yaml", "learner.max_tokens_per_micro_batch=512"],
     "[warn] learner.max_tokens_per_micro_batch=512 shapes the policy gradient's updates only: algo.kind=dpo"),
])
def test_settings_that_would_do_nothing_are_said_at_start_up(overrides, said, capsys):
    from engine.loop.run import say_settings_without_effect

    files = [o for o in overrides if o.endswith(".yaml")] or ["configs/default.yaml"]
    say_settings_without_effect(load_config([*files, *[o for o in overrides if not o.endswith(".yaml")]]))
    assert said in capsys.readouterr().out


def test_settings_that_take_effect_are_not_said_and_hparams_keep_only_what_the_reward_reads(capsys):
    from engine.loop.lifecycle import hparams_config
    from engine.loop.run import say_settings_without_effect

    say_settings_without_effect(load_config(["configs/default.yaml"]))  # every reward key set is read
    # its guard reads gold labels, on validation: said, not warned
    assert capsys.readouterr().out == ("[guard] guard.patience=2 reads gold labels: every eval.every=40 steps it "
                                       "evaluates 1000 problems of guard.data=builtin:arith-val\n")
    say_settings_without_effect(load_config(["configs/smollm2.yaml"]))  # no evaluations, and no guard
    assert capsys.readouterr().out == ""
    gold = hparams_config(load_config(["configs/gold.yaml"]))["reward"]
    assert gold["kind"] == "gold" and not {"metric", "vote_weight", "scope", "reduction", "weights"} & set(gold)
    default = hparams_config(load_config(["configs/default.yaml"]))["reward"]
    assert {"metric", "vote_weight", "vote_metric", "scope", "reduction"} <= set(default)
    assert "keep" not in default and "weights" not in default
    mix = hparams_config(load_config(["reward.kind=mix", "reward.weights.gold=1.0", "reward.weights.majority=1.0"]))
    assert "weights" in mix["reward"] and "metric" not in mix["reward"]
