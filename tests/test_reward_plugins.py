"""reward.plugins: user-written rewards imported at start-up (files or modules), registered through the
built-in decorator; import failures and rewards raising mid-run name the plugin's file and line."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from engine.base.errors import UserError
from rewards.checked import RewardError, checked_rewards
from rewards.plugins import load_plugins
from rewards.registry import REWARDS, RewardInputs, get_reward
from tests.conftest import ROOT, run_script
from tests.test_episodes import _episode


def _inputs(texts_per_episode):
    from engine.builtin.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    episodes = [_episode(tok, "2+3=?", y1, y2) for y1, y2 in texts_per_episode]
    return RewardInputs(episodes=episodes, tokenizer=tok, options=None)


def test_the_example_plugin_registers_its_reward_and_scores_by_hand():
    load_plugins(["examples/reward_plugin.py"])
    load_plugins(["examples/reward_plugin.py"])  # a second load is a no-op, not a second registration
    spec = get_reward("concise_answer")
    assert spec.needs_answer is False and not spec.needs_gold
    long = "7+5=12, " * 20 + "Final Answer: 12"  # 176 characters: 7 tens past the free 100
    inputs = _inputs([("Final Answer: 5", "no answer here"), (long, r"so \boxed{5}")])
    t1, t2 = spec.fn(inputs)
    assert t1.tolist() == pytest.approx([1.0, 1.0 - 0.07]) and t2.tolist() == [0.0, 1.0]


def test_a_module_plugin_imports_from_the_python_path(tmp_path, monkeypatch):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(textwrap.dedent("""
        import torch
        from rewards import register

        @register("always_half", needs_answer=False)
        def always_half(inputs):
            return [torch.full((len(inputs.episodes),), 0.5) for _ in inputs.episodes[0].turns]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(["my_pkg.rewards"])
    assert REWARDS["always_half"].fn(_inputs([("a", "b")]))[1].tolist() == [0.5]


@pytest.mark.parametrize("source, where, what", [
    ("import torch\n\nraise RuntimeError('no config here')\n", ":3", "RuntimeError: no config here"),
    ("def reward(inputs):\n    return [\n", ":2", "SyntaxError"),
    ("import torch\nimport not_a_real_module_xyz\n", ":2", "No module named 'not_a_real_module_xyz'"),
    # a name a built-in reward has: refused, not silently replaced
    ("from rewards import register\n\n@register('gold')\ndef gold(inputs):\n    return []\n", ":3",
     "a reward named 'gold' is already registered (by rewards.registry.gold_reward)"),
    # a reward that reads answers must say what an unanswered turn earns: its lowest value
    ("from rewards import register\n\n@register('mine')\ndef mine(inputs):\n    return []\n", ":3",
     "reward 'mine' reads answers (needs_answer=True), so it must declare its range"),
])
def test_a_plugin_that_fails_to_import_names_its_file_and_line(tmp_path, monkeypatch, source, where, what):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_plugin.py").write_text(source)
    with pytest.raises(UserError) as err:
        load_plugins(["bad_plugin.py"])
    message = str(err.value)
    assert f"bad_plugin.py{where}" in message and what in message and "reward.plugins" in message, message


def test_a_missing_plugin_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="file 'nowhere.py' not found"):
        load_plugins(["nowhere.py"])
    with pytest.raises(UserError, match="no file or module named 'no_such_pkg.rewards'"):
        load_plugins(["no_such_pkg.rewards"])
    (tmp_path / "uses_missing.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"'uses_missing' failed to import: .*not_a_real_module_xyz.*uses_missing\.py:1"):
        load_plugins(["uses_missing"])  # found, but one of its imports is not
    with pytest.raises(UserError, match=r"reward.plugins=\[my_rewards.py\]"):
        get_reward("not_registered_anywhere")


def test_a_plugin_reward_that_raises_mid_run_names_reward_episode_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fragile.py").write_text(textwrap.dedent("""\
        import torch
        from rewards import register

        @register("fragile", needs_answer=False)
        def fragile(inputs):
            values = []
            for e in inputs.episodes:
                values.append(1.0 / len(e.turns[0].text.split("boom")[1]))  # line 8: no "boom", IndexError
            return [torch.tensor(values)] * len(inputs.episodes[0].turns)
    """))
    load_plugins(["fragile.py"])
    inputs = _inputs([("boom!", "x"), ("calm", "y")])
    with pytest.raises(RewardError) as err:
        checked_rewards("fragile", REWARDS["fragile"].fn, inputs, step=3, nonfinite="error")
    message = str(err.value)
    assert "reward 'fragile' raised IndexError" in message and "fragile.py:8" in message, message
    assert "episode 1 of step 3" in message and "'calm'" in message, message


@pytest.mark.slow
def test_training_with_the_example_plugin(tiny_model_dir, tmp_path):
    """The documented command trains with the plugin's reward (on every turn), and a reward.kind that no
    plugin registers stops at start-up, before any model is loaded."""
    run_dir = tmp_path / "run"
    run_script([sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
                "reward.plugins=[examples/reward_plugin.py]", "reward.kind=concise_answer", "train.steps=2",
                "eval.problems=8", "rollout.prompts_per_step=4", f"train.output_dir={run_dir}"], timeout=600)
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary["train"]["history"]
    assert len(history) == 2
    # the built-in model answers in the "Final Answer:" format, and its responses are short: most turns score 1
    assert all(0.5 < h["reward_t1"] <= 1.0 and 0.5 < h["reward_t2"] <= 1.0 for h in history), history
    proc = subprocess.run([sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tmp_path / 'none'}",
                           "reward.plugins=[examples/reward_plugin.py]", "reward.kind=concise",
                           f"train.output_dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "reward.kind='concise' is not registered" in proc.stderr
    assert "concise_answer" in proc.stderr  # the plugin's reward is among the known ones
