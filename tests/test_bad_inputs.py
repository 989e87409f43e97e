"""The bad-input catalogue (docs/reliability.md, 'Bad input'): each mistake stops the run with one `error:` line
naming the file:line, key or value with a hint, exit code 2 and no traceback; or it is skipped and
counted where the config says so. Nothing the run already saved is lost."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.base.errors import UserError
from engine.config.loading import load_config
from engine.loop.inputs import Inputs, fit_to_model
from tests.conftest import ROOT

LONG_PROMPT = "Add these numbers carefully: " + "1+" * 150 + "1=?"


def arith_jsonl(path: Path, count: int, extra: dict[int, str] | None = None) -> Path:
    """`count` built-in training problems as JSONL; `extra` puts a raw line at a 1-based line number."""
    from engine.tasks.arith import arith_problems

    lines = [json.dumps({"prompt": p.prompt, "answer": p.answer}) for p in arith_problems("train")[:count]]
    for lineno, raw in sorted((extra or {}).items()):
        lines.insert(lineno - 1, raw)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def folders(tmp_path, tiny_model_dir):
    """Bad data files and model folders, built from the tiny model."""
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    return {
        "malformed": arith_jsonl(tmp_path / "malformed.jsonl", 20, {2: '{"prompt": "2+2=?", "answer": 4'}),
        "no_prompt": arith_jsonl(tmp_path / "no_prompt.jsonl", 20, {3: '{"question": "2+2=?", "answer": "4"}'}),
        "empty": arith_jsonl(tmp_path / "empty.jsonl", 0),
        "long": arith_jsonl(tmp_path / "long.jsonl", 20, {3: json.dumps({"prompt": LONG_PROMPT})}),
        "model": tiny_model_dir,
        "no_template": no_template,
        "remote": remote_code_folder(tmp_path, tiny_model_dir),
    }


def remote_code_folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model folder whose config.json points at its own Python code, which leaves a marker file if run."""
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="sc_remote_test", auto_map={"AutoConfig": "remote_config.RemoteConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "remote_config.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(tmp_path / 'remote-code-ran')!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'sc_remote_test'\n")
    return folder


def long_prompt_error(model_dir: Path, data: Path) -> str:
    """The start of the overlong-prompt error, its token counts taken from the model's tokenizer: the rendered
    prompt; the episode as the whole chat up to the second answer (with an empty first answer), plus two turns
    of rollout.max_tokens and RLSF's probe (its prompt and its greedy tokens)."""
    from transformers import AutoTokenizer

    tok, cfg = AutoTokenizer.from_pretrained(model_dir), load_config([])
    user = {"role": "user", "content": LONG_PROMPT}
    chat = [user, {"role": "assistant", "content": ""}, {"role": "user", "content": cfg.rollout.correction_instruction}]
    prompt = len(tok.apply_chat_template([user], add_generation_prompt=True, return_dict=False))
    episode = (len(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))
               + 2 * cfg.rollout.max_tokens + len(tok(cfg.reward.probe_prompt, add_special_tokens=False).input_ids)
               + cfg.reward.probe_tokens)
    return (f"{data}:3: the prompt takes {prompt} tokens and its episode {episode} (2 turn(s) of "
            f"rollout.max_tokens={cfg.rollout.max_tokens}")


# (case, arguments given the fixture's folders, the expected error line)
CATALOGUE = [
    ("malformed JSONL line", lambda f: [f"data.train={f['malformed']}"],
     lambda f: f"{f['malformed']}:2: not valid JSON (Expecting ',' delimiter at column 32). Hint: each line is one JSON object"),
    ("missing prompt field", lambda f: [f"data.train={f['no_prompt']}"],
     lambda f: f"{f['no_prompt']}:3: each line needs a non-empty string field 'prompt' (got ['answer', 'question'])"),
    ("empty dataset", lambda f: [f"data.eval={f['empty']}"],
     lambda f: f"{f['empty']}: no problems found (the file is empty or all blank lines). Hint:"),
    ("prompt longer than the context", lambda f: [f"model.path={f['model']}", f"data.train={f['long']}"],
     lambda f: long_prompt_error(f["model"], f["long"])),
    ("unknown config key", lambda f: ["train.stepz=3"],
     lambda f: "unknown config key 'train.stepz' (override 'train.stepz'). Did you mean 'train.steps'?"),
    ("wrong value type", lambda f: ["rollout.n=abc"],
     lambda f: "bad value for 'rollout.n' (override 'rollout.n'): Value 'abc' of type 'str' could not be converted "
               "to Integer. Hint: rollout.n takes int values, e.g. the default rollout.n=4."),
    ("out-of-range value", lambda f: ["rollout.n=-1"],
     lambda f: "rollout.n must be > 0, got -1. Hint: the default is rollout.n=4."),
    ("missing model path", lambda f: ["model.path=/nonexistent/model"],
     lambda f: "model.path='/nonexistent/model' is not a folder with a config.json. Hint:"),
    ("tokenizer without a chat template", lambda f: [f"model.path={f['no_template']}"],
     lambda f: f"model.path={f['no_template']}: the tokenizer has no chat template"),
    ("model code without trust_remote_code", lambda f: [f"model.path={f['remote']}"],
     lambda f: f"model.path={f['remote']} needs the Python code shipped in the folder (config.json 'auto_map'), "
               f"which runs only with model.trust_remote_code=true."),
    ("missing data file", lambda f: ["data.train=missing.jsonl"], lambda f: "data file 'missing.jsonl' not found"),
    ("unregistered reward", lambda f: ["reward.kind=judge"], lambda f: "reward.kind='judge' is not registered"),
    ("gold reward on prompts without answers", lambda f: ["data.train=tests/data/prompts_only.jsonl", "reward.kind=gold"],
     lambda f: "tests/data/prompts_only.jsonl:1: problem has no 'answer', but reward.kind=gold needs gold answers"),
    ("mix without weights", lambda f: ["reward.kind=mix"], lambda f: "reward.kind=mix needs reward.weights"),
    ("value not among the choices", lambda f: ["reward.metric=entropy"],
     lambda f: "reward.metric='entropy' is not one of"),
    ("triton head without a GPU", lambda f: ["learner.logprob_impl=triton"],
     lambda f: "learner.logprob_impl=triton: logprob impl 'triton' needs a CUDA device"),
]


@pytest.mark.parametrize("case, args, needle", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_start_up_mistakes_are_one_clear_line(case, args, needle, folders, tmp_path, capsys):
    """In-process through `engine.train.cli`, the function `python engine/train.py` runs."""
    from engine.train import cli

    with pytest.raises(SystemExit) as exit_:
        cli([*args(folders), f"train.output_dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-3000:]
    assert f"error: {needle(folders)}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was set up
    assert not (tmp_path / "remote-code-ran").exists()  # the folder's own code never ran


def test_the_real_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "engine/train.py", "rollout.n=-1", f"train.output_dir={tmp_path}/run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: rollout.n must be > 0, got -1." in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trust_remote_code_runs_the_folders_code_only_when_asked(folders, tmp_path):
    from engine.models.paths import load_tokenizer_and_config

    with pytest.raises(UserError, match="model.trust_remote_code=true"):
        load_tokenizer_and_config(str(folders["remote"]), trust_remote_code=False)
    assert not (tmp_path / "remote-code-ran").exists()
    _, config = load_tokenizer_and_config(str(folders["remote"]), trust_remote_code=True)
    assert (tmp_path / "remote-code-ran").exists() and config.model_type == "sc_remote_test"


def test_every_torch_load_is_weights_only():
    """Nothing unpickles arbitrary objects: each torch.load in the code passes weights_only=True."""
    calls = []
    for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("rollout/**/*.py"), *ROOT.glob("rewards/**/*.py"),
                 *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")]:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                calls.append((f"{path.relative_to(ROOT)}:{lineno}", "weights_only=True" in line))
    assert calls and all(ok for _, ok in calls), calls


def _fit_inputs(tokenizer_dir, overrides, train, log):
    from engine.models.paths import load_tokenizer_and_config

    cfg = load_config(overrides)
    tokenizer, model_config = load_tokenizer_and_config(str(tokenizer_dir), False)
    from engine.tasks.data import load_problems

    return fit_to_model(cfg, Inputs(load_problems(str(train))[:500], load_problems("builtin:arith-eval")[:20]),
                        tokenizer, model_config, log=log)


def test_overlong_prompts_are_skipped_and_counted_when_asked(folders):
    lines = []
    _, fitted = _fit_inputs(folders["model"], [f"data.train={folders['long']}", "data.overlong=skip",
                                               "rollout.max_model_len=256"], folders["long"], lines.append)
    assert len(fitted.train) == 20 and all(p.prompt != LONG_PROMPT for p in fitted.train)
    assert fitted.skipped == {"train": 1}
    assert lines == [f"[data] {folders['long']}: skipped 1 of 21 problems whose episode would exceed "
                     f"rollout.max_model_len=256 (data.overlong=skip; first: {folders['long']}:3)"]
    with pytest.raises(UserError, match="every problem is too long"):
        _fit_inputs(folders["model"], ["data.overlong=skip", "rollout.max_model_len=190"], folders["long"], print)


def test_context_settings_are_checked_against_the_model(folders):
    _, fitted = _fit_inputs(folders["model"], [], "builtin:arith", print)  # the defaults fit
    assert fitted.skipped == {}
    with pytest.raises(UserError, match="rollout.max_model_len=1024 exceeds the model's max_position_embeddings=512"):
        _fit_inputs(folders["model"], ["rollout.max_model_len=1024"], "builtin:arith", print)
    with pytest.raises(UserError, match=r"2 turn\(s\) of rollout.max_tokens=128 \(rollout.turns\).*leaving no room"):
        _fit_inputs(folders["model"], ["rollout.max_tokens=128", "rollout.max_model_len=256"], "builtin:arith", print)


def test_an_unset_context_is_sized_from_the_data(folders):
    """rollout.max_model_len unset: the longest prompt's whole episode, within the model's 512 positions, so
    rollout.turns=3 works on the defaults (it stopped at start-up against the old fixed 256); the config
    returned records the value, and an explicit value that is too small is still refused."""
    from engine.models.paths import load_tokenizer_and_config
    from engine.tasks.data import load_problems
    from rollout.episodes import encode_prompt

    tokenizer, _ = load_tokenizer_and_config(str(folders["model"]), False)
    longest = max(len(encode_prompt(tokenizer, p.prompt)) for p in
                  [*load_problems("builtin:arith")[:500], *load_problems("builtin:arith-eval")[:20]])
    lines = []
    cfg, fitted = _fit_inputs(folders["model"], ["rollout.turns=3"], "builtin:arith", lines.append)
    three = cfg.rollout.max_model_len  # longest + 3 turns of 48 + 2 correction requests
    assert fitted.skipped == {} and 256 < three < 512
    probe = len(tokenizer(cfg.reward.probe_prompt, add_special_tokens=False).input_ids) + cfg.reward.probe_tokens
    two, _ = _fit_inputs(folders["model"], [], "builtin:arith", print)  # longest + 2 turns + 1 request + the probe
    request = two.rollout.max_model_len - longest - 2 * 48 - probe
    assert request > 0 and three == longest + 3 * 48 + 2 * request + probe
    assert lines == [f"[context] rollout.max_model_len={three} (unset: the longest prompt, {longest} tokens, and "
                     f"its 3-turn episode, {three - longest} tokens)"]
    with pytest.raises(UserError, match=r"3 turn\(s\) of rollout.max_tokens=48 .*leaving no room for a prompt in "
                                        r"rollout.max_model_len=256"):
        _fit_inputs(folders["model"], ["rollout.turns=3", "rollout.max_model_len=256"], "builtin:arith", print)
    lines = []  # a prompt whose episode outgrows the model's positions: the context stops there, the prompt is skipped
    cfg, fitted = _fit_inputs(folders["model"], [f"data.train={folders['long']}", "data.overlong=skip"],
                              folders["long"], lines.append)
    assert cfg.rollout.max_model_len == 512 and fitted.skipped == {"train": 1}
    assert lines[0].endswith(", the model's max_position_embeddings)") and "skipped 1 of 21" in lines[1]


def test_context_fit_counts_every_turn(folders):
    """rollout.turns sets how many turns of rollout.max_tokens and correction requests an episode holds."""
    fixed = "rollout.max_model_len=256"
    assert _fit_inputs(folders["model"], ["rollout.turns=1", fixed], "builtin:arith", print)[1].skipped == {}
    assert _fit_inputs(folders["model"], ["rollout.turns=3", "rollout.max_tokens=24", fixed], "builtin:arith",
                       print)[1].skipped == {}
    # a shorter correction request leaves room for longer turns (the three-turn end-to-end runs)
    assert _fit_inputs(folders["model"], ["rollout.turns=3", "rollout.max_tokens=40", "rollout.correction_instruction=Check.",
                                          fixed], "builtin:arith", print)[1].skipped == {}
    with pytest.raises(UserError, match=r"3 turn\(s\) of rollout.max_tokens=48 \(rollout.turns\), the correction "
                                        r"requests and the answer probe take \d+ tokens, leaving no room"):
        _fit_inputs(folders["model"], ["rollout.turns=3", fixed], "builtin:arith", print)
    # 32 tokens a turn leave room, but not for the builtin prompts
    with pytest.raises(UserError, match=r"\(3 turn\(s\) of rollout.max_tokens=32, the correction requests, the "
                                        r"answer probe\), more than rollout.max_model_len=256"):
        _fit_inputs(folders["model"], ["rollout.turns=3", "rollout.max_tokens=32", fixed], "builtin:arith", print)


def _episodes(prompts, turns=2):
    from engine.tasks.data import Problem
    from rollout.episodes import Episode
    from rollout.vllm_engine import Completion

    def turn(text):
        return Completion(token_ids=[1], logprobs=[0.0], text=text, finished=True)

    texts = ["answer {}", "fixed {}", "refixed {}"][:turns]
    return [Episode(Problem(p, None, line), i // 2, [[0]] * turns, [turn(t.format(i)) for t in texts])
            for i, (p, line) in enumerate(prompts)]


def _reward_inputs(episodes):
    from rewards.registry import RewardInputs

    return RewardInputs(episodes, tokenizer=None, options=None)


def test_a_reward_that_raises_is_named_with_the_episode():
    from rewards.checked import RewardError, checked_rewards

    def picky(inputs):
        r = torch.ones(len(inputs.episodes))
        for i, episode in enumerate(inputs.episodes):
            r[i] = 1 / (len(episode.problem.prompt) - 3)  # "1+2" has 3 characters
        return [r, r]

    episodes = _episodes([("10+11", 1), ("10+11", 1), ("1+2", 7), ("1+2", 7)])
    with pytest.raises(RewardError) as err:
        checked_rewards("picky", picky, _reward_inputs(episodes), step=12, nonfinite="error")
    message = str(err.value)
    assert message.startswith("reward 'picky' raised ZeroDivisionError: division by zero (at tests/test_bad_inputs.py:")
    assert "in picky) on episode 2 of step 12 (prompt '1+2', data line 7; turn 1 'answer 2'; turn 2 'fixed 2')" in message
    assert "Hint: fix the reward function; the same command then resumes from the last checkpoint." in message


def test_nonfinite_rewards_are_an_error_or_a_counted_skip():
    from rewards.checked import RewardError, checked_rewards

    def half_nan(inputs):
        return [torch.tensor([1.0, float("nan"), 0.0, 1.0]), torch.tensor([1.0, 1.0, float("inf"), 0.0])]

    episodes = _episodes([("a", 1), ("a", 1), ("b", 2), ("b", 2)])
    with pytest.raises(RewardError, match=r"reward 'half_nan' returned a non-finite reward \(turn 1: nan, turn 2: 1.0\) "
                                          r"for episode 1 of step 3 .*; 2 of 4 episodes this step. Hint: reward.nonfinite=skip"):
        checked_rewards("half_nan", half_nan, _reward_inputs(episodes), step=3, nonfinite="error")
    (r1, r2), skipped = checked_rewards("half_nan", half_nan, _reward_inputs(episodes), step=3, nonfinite="skip")
    assert skipped.tolist() == [False, True, True, False] and r1[0] == 1.0


def test_a_reward_of_the_wrong_shape_is_named():
    from rewards.checked import RewardError, checked_rewards

    with pytest.raises(RewardError, match=r"reward 'flat' returned \(\) as its turn-1 rewards at step 1; expected a "
                                          r"tensor of shape \(2,\)"):
        checked_rewards("flat", lambda _: [torch.tensor(1.0), torch.ones(2)], _reward_inputs(_episodes([("a", 1)] * 2)),
                        step=1, nonfinite="error")


def test_a_reward_with_the_wrong_number_of_turns_names_rollout_turns():
    from rewards.checked import RewardError, checked_rewards

    two = _reward_inputs(_episodes([("a", 1)] * 2))
    with pytest.raises(RewardError, match=r"reward 'pair' returned 2 values at step 4; expected one tensor per turn "
                                          r"\(rollout.turns=3\)"):
        checked_rewards("pair", lambda _: [torch.ones(2), torch.ones(2)], _reward_inputs(_episodes([("a", 1)] * 2, 3)),
                        step=4, nonfinite="error")
    with pytest.raises(RewardError, match=r"reward 'triple' returned 3 values at step 1; .*\(rollout.turns=2\)"):
        checked_rewards("triple", lambda _: [torch.ones(2)] * 3, two, step=1, nonfinite="error")
    with pytest.raises(RewardError, match=r"reward 'bare' returned Tensor at step 1; .*\(rollout.turns=2\)"):
        checked_rewards("bare", lambda _: torch.ones(2, 2), two, step=1, nonfinite="error")  # not one per turn


def test_checked_rewards_of_three_turns():
    from rewards.checked import RewardError, checked_rewards

    episodes = _episodes([("a", 1), ("a", 1)], turns=3)
    rewards, skipped = checked_rewards("three", lambda _: (torch.ones(2), torch.zeros(2), torch.tensor([1, 0])),
                                       _reward_inputs(episodes), step=1, nonfinite="error")
    assert [r.tolist() for r in rewards] == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]] and skipped.tolist() == [False, False]
    assert all(r.dtype == torch.float32 for r in rewards)  # integer rewards come back as floats

    def late_nan(inputs):
        return [torch.ones(2), torch.ones(2), torch.tensor([0.0, float("nan")])]

    with pytest.raises(RewardError, match=r"non-finite reward \(turn 1: 1.0, turn 2: 1.0, turn 3: nan\) for episode 1 "
                                          r"of step 2 \(prompt 'a', data line 1; turn 1 'answer 1'; turn 2 'fixed 1'; "
                                          r"turn 3 'refixed 1'\); 1 of 2 episodes"):
        checked_rewards("late_nan", late_nan, _reward_inputs(episodes), step=2, nonfinite="error")
    rewards, skipped = checked_rewards("late_nan", late_nan, _reward_inputs(episodes), step=2, nonfinite="skip")
    assert skipped.tolist() == [False, True] and len(rewards) == 3
    with pytest.raises(RewardError, match=r"returned \(3,\) as its turn-3 rewards at step 1; expected a tensor of "
                                          r"shape \(2,\)"):
        checked_rewards("long", lambda _: [torch.ones(2), torch.ones(2), torch.ones(3)], _reward_inputs(episodes),
                        step=1, nonfinite="error")


def _train_command(script, model_dir, run_dir, *extra):
    return [sys.executable, script, "configs/default.yaml", f"model.path={model_dir}", "eval.problems=8",
            "eval.every=0", "rollout.prompts_per_step=4", f"train.output_dir={run_dir}", *extra]


@pytest.mark.slow
def test_faulty_reward_and_overlong_prompts_in_a_real_run(tiny_model_dir, tmp_path):
    """NaN rewards and an overlong prompt are skipped and counted; a reward that raises stops the run with
    the reward and episode named and the step-1 checkpoint intact; once fixed, the same command resumes."""
    data = arith_jsonl(tmp_path / "train.jsonl", 40, {3: json.dumps({"prompt": LONG_PROMPT, "answer": "151"})})
    run_dir = tmp_path / "run"
    command = _train_command("tests/scripts/train_with_faulty_reward.py", tiny_model_dir, run_dir,
                             "reward.kind=faulty", "reward.nonfinite=skip", f"data.train={data}",
                             "data.overlong=skip", "train.steps=3", "train.save_every=1")
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"[data] {data}: skipped 1 of 41 problems" in proc.stdout
    assert "[reward] step 1: 2 episodes with a NaN/inf reward skipped (reward.nonfinite=skip)" in proc.stdout
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert error[0].startswith("error: reward 'faulty' raised ZeroDivisionError: division by zero (at "
                               "tests/scripts/train_with_faulty_reward.py:")
    assert " on episode 4 of step 2 (prompt '" in error[0]  # the group of episode 5 starts at episode 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001"]

    fixed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**__import__("os").environ, "FAULTY_REWARD_FIXED": "1"})
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert f"[resume] continuing from {run_dir / 'checkpoints' / 'step-000001'}" in fixed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train"]["steps"] == 3 and summary["train"]["skipped_episodes"] == 2
    assert summary["data"]["skipped_problems"] == {"train": 1}


@pytest.mark.slow
def test_vllm_failing_to_start_shows_its_cause(tiny_model_dir, tmp_path):
    proc = subprocess.run(_train_command("engine/train.py", tiny_model_dir, tmp_path / "run",
                                         "rollout.kv_cache_gib=100000"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"error: vLLM could not start the rollout engine for {tiny_model_dir}: ValueError: Available memory on "
            f"node 0") in proc.stderr
    assert "is less than requested memory for kv (100000.0 GiB)" in proc.stderr
    sized = re.search(r"\[context\] rollout.max_model_len=(\d+) ", proc.stdout)  # the context it sized, named
    assert sized and (f"Hint: the settings it used are rollout.max_model_len={sized[1]}, rollout.kv_cache_gib=100000"
                      in proc.stderr), proc.stdout[-2000:]


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB file system (tmpfs) where one checkpoint of the tiny model (5.5 MB) fits and a second does
    not. Without mount rights: None, and the test caps the trainer's file size instead once the first
    checkpoint is written (RLIMIT_FSIZE: the kernel refuses the write, as with a full disk, with EFBIG)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True).returncode == 0
    yield mount_point if mounted else None
    if mounted:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, small_disk, tmp_path):
    import resource
    import time

    run_dir = (small_disk or tmp_path) / "run"
    previous = run_dir / "checkpoints" / "step-000001"
    proc = subprocess.Popen(_train_command("engine/train.py", tiny_model_dir, run_dir, "train.steps=3",
                                           "train.save_every=1", "train.keep_checkpoints=2"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if small_disk is None:
        while not (previous / "meta.json").is_file():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.02)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (2**20, 2**20))  # Python ignores SIGXFSZ: writes fail
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert "error: could not write the step-2 checkpoint to" in stderr
    assert " MiB free there and a checkpoint takes 5.2 MiB." in stderr  # torch.save's own message is cryptic
    assert f"the partial directory was removed and the previous checkpoint {previous} is intact" in stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001"]
    from engine.runtime.checkpoint import latest_checkpoint

    assert latest_checkpoint(run_dir) == previous
    meta = json.loads((previous / "meta.json").read_text())
    assert meta["step"] == 1 and meta["data_position"] == {"next_step": 1, "seed": 0}
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(previous / "model") is not None


def test_context_length_by_hand():
    from engine.loop.inputs import context_length

    assert context_length(20, 100, 512) == 120  # the longest prompt and its whole episode
    assert context_length(500, 100, 512) == 512  # never past the model's positions (the prompt is then overlong)
    assert context_length(500, 100, None) == 600  # a model that states none


def test_the_reward_screen_never_reads_the_reported_split():
    """A screen chooses the reward: asked to read data.eval it refuses, before building anything."""
    proc = subprocess.run([sys.executable, "scripts/reward_screen.py", "configs/default.yaml", "--data",
                           "builtin:arith-eval"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: --data builtin:arith-eval is data.eval, the split results are reported on" in proc.stderr
