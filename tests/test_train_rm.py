"""The sequence-to-sequence reward model's trainer (engine/train_rm.py): examples and loss masking by hand,
the update's loss against the token-mean NLL from full logits, end-to-end runs from a JSONL of pairs and
from the pair builder, kill-and-resume, and bad inputs."""

import json
import math
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from engine.reward_model.examples import (ExampleCounts, RewriteExample, collate_examples, epoch_batches, nll_terms,
                                          rewrite_examples, target_mask)
from engine.reward_model.pairs import RMPair, heldout_split, read_pairs
from tests.conftest import ROOT, assert_weights_synced, run_script


def _chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def _toy_context(prompt: str, response: str) -> list[int]:
    return _chars(prompt) + [0] + _chars(response) + [1]


def _toy_target(response: str) -> list[int]:
    return _chars(response) + [2]


def test_examples_by_hand():
    pairs = [RMPair("ab", chosen="xy", rejected="z"),
             RMPair("ab", chosen="q", rejected="q"),  # nothing to rewrite
             RMPair("abc", chosen="xyz", rejected="w"),  # 6 + 4 and 7 + 4 tokens: over 9
             RMPair("ab", chosen="xy", rejected="z")]  # the first pair again: kept, as often as it was sampled
    examples, counts = rewrite_examples(pairs, _toy_context, _toy_target, max_len=9)
    fix = RewriteExample(context_ids=(97, 98, 0, 122, 1), target_ids=(120, 121, 2), unchanged_ids=(122, 2), kind="fix")
    keep = RewriteExample(context_ids=(97, 98, 0, 120, 121, 1), target_ids=(120, 121, 2), unchanged_ids=(120, 121, 2),
                          kind="keep")  # 6 + 3 = 9 tokens: fits exactly
    assert examples == [fix, keep, fix, keep]
    assert counts == ExampleCounts(pairs=4, same_text=1, too_long=2, examples=4)


def test_loss_mask_and_token_mean_by_hand():
    examples = [RewriteExample((5, 6), (7, 8), (), "fix"), RewriteExample((5,), (9, 10, 11), (), "fix"),
                RewriteExample((5,), (7,), (), "keep")]
    batch = collate_examples(examples, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [5, 9, 10, 11], [5, 7, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    # the target tokens only: neither the context nor the padding
    assert batch.target_mask.tolist() == [[False, False, True, True], [False, True, True, True],
                                          [False, True, False, False]]
    assert target_mask([0, 2], [1, 1], 3).tolist() == [[True, False, False], [False, False, True]]
    # 6 target tokens, -log p = 1, 2, 0.5, 0.5, 1, 3: their mean is 8 / 6
    terms = nll_terms(torch.tensor([-1.0, -2.0, -0.5, -0.5, -1.0, -3.0]), total_tokens=6)
    assert terms.tolist() == pytest.approx([1 / 6, 2 / 6, 0.5 / 6, 0.5 / 6, 1 / 6, 3 / 6])
    assert terms.sum().item() == pytest.approx(8 / 6)


def test_epoch_batches_cover_every_example_each_epoch():
    steps = epoch_batches(5, batch_size=2, epochs=2, seed=0)
    assert len(steps) == 6 and all(len(s) == 2 for s in steps)
    for epoch in (steps[:3], steps[3:]):
        order = epoch[0] + epoch[1] + epoch[2][:1]
        assert sorted(order) == [0, 1, 2, 3, 4]
        assert epoch[2][1] == order[0]  # the last partial batch is filled from the epoch's start
    assert steps[:3] != steps[3:]  # each epoch its own shuffle
    assert steps == epoch_batches(5, batch_size=2, epochs=2, seed=0)
    assert epoch_batches(1, batch_size=3, epochs=1, seed=0) == [[0, 0, 0]]


def test_heldout_split_holds_out_whole_prompts():
    pairs = [RMPair(f"p{i % 5}", f"c{i}", f"r{i}") for i in range(20)]  # 5 prompts, 4 pairs each
    split = heldout_split(pairs, heldout_pairs=6, seed=0)
    held = {p.prompt for p in split if p.split == "heldout"}
    assert len(held) == 2 and sum(p.split == "heldout" for p in split) == 8  # whole prompts, until >= 6
    assert not held & {p.prompt for p in split if p.split == "train"}
    assert split == heldout_split(pairs, heldout_pairs=6, seed=0)
    assert all(p.split == "train" for p in heldout_split(pairs, 0, seed=0))
    assert sum(p.split == "train" for p in heldout_split(pairs, 100, seed=0)) == 4  # never every pair


def test_reads_the_dpo_rounds_keys(tmp_path):
    path = tmp_path / "round-001.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=?", "chosen_text": "2", "rejected_text": "3", "kind": "direct"})
                    + "\n\n" + json.dumps({"prompt": "2+2=?", "chosen": "4", "rejected": "5"}) + "\n")
    assert read_pairs(path) == [RMPair("1+1=?", "2", "3", origin="direct"),
                                RMPair("2+2=?", "4", "5", origin=f"{path}:3")]


@pytest.mark.parametrize("packing", [False, True])
def test_update_loss_is_the_token_mean_nll_of_the_targets(tiny_model_dir, packing):
    """In-process, world size 1: the fused head's loss over two micro-batches (padded, or packed) equals the mean
    -log p of the target tokens computed from full logits, and the step lowers it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.reward_model.update import rewrite_update
    from engine.runtime.distributed import init_distributed
    from engine.update.learner import Learner
    from rewards.rewrite_format import rewrite_context_ids, rewrite_target_ids

    init_distributed()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [RMPair(f"{i}+1=?", f"Final Answer: {i + 1}", f"Final Answer: {i}") for i in range(2)]
    examples, _ = rewrite_examples(pairs, lambda p, r: rewrite_context_ids(tok, p, r, "Fix it."),
                                   lambda r: rewrite_target_ids(tok, r), max_len=256)
    examples = examples[:3]  # micro-batches of 2 and 1
    batch = collate_examples(examples, tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(batch.input_ids, attention_mask=batch.attention_mask).logits.float(), -1)
    token_lp = logp[:, :-1].gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # position t predicts t + 1
    want = -token_lp[batch.target_mask[:, 1:]].mean().item()
    assert batch.target_mask.sum() == sum(len(ex.target_ids) for ex in examples)

    import deepspeed.utils.groups as deepspeed_groups

    # DeepSpeed caches a clone of the default group; an earlier in-process vLLM engine (another test file) may
    # have replaced that group since, and the stale clone fails "is not registered" in the engine's broadcast
    deepspeed_groups._WORLD_GROUP = None
    learner = Learner(str(tiny_model_dir), zero_stage=0, lr=1e-3, grad_clip=1.0, episodes_per_rank=3,
                      micro_batch_size=2, packing=packing)
    first = rewrite_update(learner, batch)
    assert first["loss"] == pytest.approx(want, rel=1e-5)
    assert first["tokens"] == batch.target_mask.sum().item() and math.isfinite(first["grad_norm"])
    assert rewrite_update(learner, batch)["loss"] < first["loss"]


# --- end to end ---------------------------------------------------------------------------------------------

OK_PAIRS = 16  # prompts each with one pair: rewrite anything into "OK" (trivially learnable)
FAST = ["rm.heldout_pairs=4", "rm.batch_size=8", "rm.epochs=5", "rm.lr=3e-3", "rm.eval_every=5",
        "train.micro_batch_size=4"]  # 12 pairs -> 24 examples -> 3 steps per epoch, 15 steps


def _ok_pairs(path):
    from engine.tasks.arith import arith_problems

    rows = [{"prompt": p.prompt, "chosen": "OK", "rejected": f"Final Answer: {i}"}
            for i, p in enumerate(arith_problems("train")[:OK_PAIRS])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _command(model_dir, pairs, out_dir, *extra):
    return [sys.executable, "-m", "engine.train_rm", f"model.path={model_dir}", f"rm.pairs={pairs}",
            f"rm.output_dir={out_dir}", *FAST, *extra]


def _scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    pairs, out = _ok_pairs(tmp / "ok.jsonl"), tmp / "straight"
    proc = run_script(_command(tiny_model_dir, pairs, out, "rm.save_every=0"), timeout=600)
    return {"pairs": pairs, "out": out, "stdout": proc.stdout, "summary": json.loads((out / "summary.json").read_text())}


@pytest.mark.slow
def test_a_run_from_pairs_learns_and_saves_a_causal_lm(straight_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = straight_run["out"], straight_run["summary"]
    assert summary["pairs"] == {"file": str(out / "pairs.jsonl"), "source": str(straight_run["pairs"]),
                                "total": 16, "train": 12, "heldout": 4}
    assert summary["examples"]["train"]["examples"] == 24 and summary["examples"]["heldout"]["examples"] == 8
    saved = read_pairs(out / "pairs.jsonl")
    assert len(saved) == 16 and {p.split for p in saved} == {"train", "heldout"}
    train = summary["train"]
    assert train["steps"] == 15 and train["last_loss"] < train["first_loss"] / 10
    before, after = summary["heldout"]["before"], summary["heldout"]["after"]
    assert before["fix"] == 0.0 and before["keep"] == 0.0  # the base model never answers "OK"
    assert after["fix"] == 1.0 and after["keep"] == 1.0 and after["nll"] < before["nll"] / 10
    assert [d["step"] for d in summary["heldout"]["during"]] == [5, 10]
    assert "[rm step 15/15] epoch 5/5 | loss" in straight_run["stdout"] and "| eta 0m00s" in straight_run["stdout"]

    scalars = _scalars(out / "tb")
    for tag in ("rm/loss", "rm/lr", "rm/grad_norm", "rm/tokens"):
        assert [s for s, _ in scalars[tag]] == list(range(1, 16)), tag
    assert [s for s, _ in scalars["rm/heldout_fix"]] == [0, 5, 10, 15]
    assert scalars["rm/lr"][0][1] == pytest.approx(3e-3)

    # the output folder is a causal LM that rewrites a new prompt's response into "OK"
    from rewards.rewrite_format import rewrite_context_ids

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    context = rewrite_context_ids(tok, "12+34=?", "Final Answer: 99", "Check your answer and fix any mistake.")
    generated = model.generate(torch.tensor([context]), max_new_tokens=8, do_sample=False,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(context):]
    assert tok.decode(generated, skip_special_tokens=True) == "OK"
    assert not list(out.glob(".tmp*")) and not (out / "checkpoints").exists()  # rm.save_every=0
    assert json.loads((out / "model" / "rewrite.json").read_text()) == {
        "rewrite_instruction": "Check your answer and fix any mistake."}  # what reward.kind=seq2seq checks


@pytest.mark.slow
def test_a_finished_run_is_not_run_again(straight_run, tiny_model_dir):
    again = run_script(_command(tiny_model_dir, straight_run["pairs"], straight_run["out"]), timeout=120)
    assert "already finished" in again.stdout and "[rm step" not in again.stdout


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_same_command_resumes_to_the_same_end(straight_run, tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    command = _command(tiny_model_dir, straight_run["pairs"], out, "rm.save_every=1", "train.keep_checkpoints=2")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "step-000002" / "meta.json").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-3000:]
    assert "[signal] SIGTERM: stopped after step" in stdout and "the same command resumes" in stdout
    assert "Traceback" not in stdout and not (out / "summary.json").exists()
    stopped_at = json.loads((sorted((out / "checkpoints").glob("step-*"))[-1] / "meta.json").read_text())["step"]
    assert 2 <= stopped_at < 15

    resumed = run_script(command, timeout=600)
    assert "[resume] training on the 16 pairs saved in" in resumed.stdout
    assert f"(after {stopped_at}/15 steps)" in resumed.stdout and f"[rm step {stopped_at}/15]" not in resumed.stdout
    want, got = straight_run["summary"], json.loads((out / "summary.json").read_text())
    assert len(got["train"]["history"]) == 15
    for step, (a, b) in enumerate(zip(want["train"]["history"], got["train"]["history"]), 1):
        for key in ("loss", "grad_norm", "lr", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (step, key)
    assert got["heldout"].keys() == want["heldout"].keys()
    for when in ("before", "after"):
        assert got["heldout"][when] == pytest.approx(want["heldout"][when], rel=1e-6), when
    for a, b in zip(want["heldout"]["during"], got["heldout"]["during"], strict=True):
        assert b == pytest.approx(a, rel=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000014", "step-000015"]
    from safetensors.torch import load_file

    a, b = load_file(straight_run["out"] / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_the_seq2seq_recipe_end_to_end(tiny_model_dir, tmp_path):
    """configs/seq2seq_rm.yaml's two commands, shrunk: rm.pairs=builder on 8 prompts (EVOLVE's pairs ranked
    by a label-free reward: the briefly trained test model rarely answers right, so gold would leave few
    pairs), saved, trained on; then 2 SCoRe steps with the token rewards of the reward model it wrote."""
    out = tmp_path / "builder"
    proc = run_script([sys.executable, "-m", "engine.train_rm", "configs/seq2seq_rm.yaml", f"model.path={tiny_model_dir}",
                       "rm.reward=confidence", "rm.prompts=8", "rm.heldout_pairs=2", "rm.batch_size=8", "rm.epochs=1",
                       f"rm.output_dir={out}"], timeout=600)
    assert "[pairs] " in proc.stdout and "pairs.kind=evolve, rm.reward=confidence" in proc.stdout
    # the trainer's quiet terminal: no library chatter or benign warning; <rm.output_dir>/train.log keeps all
    terminal = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in terminal if re.search(r"fail|error|warn|INFO", line, re.IGNORECASE)], terminal
    assert "Enforce eager set" in (out / "train.log").read_text()
    pairs = read_pairs(out / "pairs.jsonl")
    assert pairs and {p.origin for p in pairs} <= {"direct", "refine"}
    assert all(p.chosen != p.rejected for p in pairs) and len({p.prompt for p in pairs}) <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"]["total"] == len(pairs) and summary["train"]["steps"] >= 1
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer_config.json").is_file()

    run_dir = tmp_path / "score"
    run_script([sys.executable, "engine/train.py", "configs/seq2seq_rm.yaml", f"model.path={tiny_model_dir}",
                f"reward.model={out / 'model'}", "train.steps=2", "algo.stage1_steps=1", "eval.problems=8",
                "rollout.prompts_per_step=4", f"train.output_dir={run_dir}"], timeout=600)
    history = json.loads((run_dir / "summary.json").read_text())["train"]["history"]
    assert len(history) == 2 and all(0.0 <= s["negative_token_frac"] <= 1.0 for s in history)
    assert_weights_synced(history)


# --- bad inputs ---------------------------------------------------------------------------------------------

def _bad_pairs(tmp_path):
    no_chosen = tmp_path / "no_chosen.jsonl"
    no_chosen.write_text(json.dumps({"prompt": "1+1=?", "chosen": "2", "rejected": "3"}) + "\n"
                         + json.dumps({"prompt": "2+2=?", "rejected": "5"}) + "\n")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"prompt": "1+1=?", "chosen": "2"\n')
    return no_chosen, malformed


@pytest.mark.parametrize("case", ["missing", "no_chosen", "malformed", "reward", "step_pairs", "psrlm", "mix", "lora"])
def test_bad_inputs_are_one_error_line(case, tmp_path, capsys):
    from engine.train_rm import cli

    no_chosen, malformed = _bad_pairs(tmp_path)
    step_pairs = tmp_path / "step_pairs.jsonl"  # as PSRLM's rounds write them
    step_pairs.write_text(json.dumps({"kind": "step", "prompt": "1+1=?", "chosen_text": "2.", "rejected_text": "3."})
                          + "\n")
    args, needle = {
        "step_pairs": ([f"rm.pairs={step_pairs}"], f"{step_pairs}:1: a step pair (kind 'step', written by PSRLM's "
                                                   f"rounds)"),
        "psrlm": (["pairs.kind=psrlm"], "rm.pairs=builder with pairs.kind=psrlm: PSRLM's pairs are next steps"),
        "mix": (["rm.reward=mix", "reward.weights.seq2seq=1", "reward.weights.gold=1"],
                "rm.reward=mix with reward.weights.seq2seq: the seq2seq reward needs the model trained here"),
        "missing": (["rm.pairs=nope.jsonl"], "rm.pairs=nope.jsonl: file not found. Hint:"),
        "no_chosen": ([f"rm.pairs={no_chosen}"],
                      f"{no_chosen}:2: each line needs a string field 'chosen' or 'chosen_text' (got ['prompt', "
                      f"'rejected'])"),
        "malformed": ([f"rm.pairs={malformed}"], f"{malformed}:1: not valid JSON ("),
        "reward": (["rm.reward=judge"], "rm.reward='judge' cannot rank the builder's pairs; known:"),
        "lora": (["model.lora.r=8"], "model.lora.r=8: the reward-model trainer has no LoRA yet"),
    }[case]
    with pytest.raises(SystemExit) as exit_:
        cli([*args, f"rm.output_dir={tmp_path}/run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: {needle}" in err, err[-2000:]
    assert "Traceback" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was set up


def test_a_resumed_run_must_keep_the_schedule_of_its_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from engine.base.errors import UserError
    from engine.config.loading import load_config
    from engine.train_rm import check_same_schedule

    cfg = load_config(["configs/seq2seq_rm.yaml"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    check_same_schedule(cfg, saved, tmp_path)
    check_same_schedule(load_config(["configs/seq2seq_rm.yaml", "rm.save_every=7"]), saved, tmp_path)  # no matter
    check_same_schedule(load_config(["configs/seq2seq_rm.yaml", "rm.heldout_pairs=3"]), saved, tmp_path)  # splits saved
    for override, key in [("rm.batch_size=16", "rm.batch_size"), ("train.seed=3", "train.seed"),
                          ("rm.epochs=2", "rm.epochs"), ("reward.rewrite_instruction=Again.", "reward.rewrite_instruction")]:
        with pytest.raises(UserError, match=rf"{re.escape(key)}=.*, but the checkpoint .* was trained with "
                                            rf"{re.escape(key)}="):
            check_same_schedule(load_config(["configs/seq2seq_rm.yaml", override]), saved, tmp_path)


def test_a_changed_schedule_is_refused_before_anything_is_set_up(tmp_path, capsys):
    """The resume check reads the checkpoint's meta.json before DeepSpeed loads anything (another model.path
    would otherwise fail inside the load)."""
    from omegaconf import OmegaConf

    from engine.config.loading import load_config
    from engine.runtime.checkpoint import checkpoint_root
    from engine.train_rm import cli

    out = tmp_path / "rm"
    saved = OmegaConf.to_container(load_config(["configs/seq2seq_rm.yaml", f"rm.output_dir={out}"]), resolve=True)
    step = checkpoint_root(out) / "step-000002"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 2, "config": saved}))
    with pytest.raises(SystemExit) as exit_:
        cli(["configs/seq2seq_rm.yaml", f"rm.output_dir={out}", "rm.batch_size=16"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: rm.batch_size=16, but the checkpoint" in err, err[-2000:]
    assert "was trained with rm.batch_size=32" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing else written


def test_the_real_entry_point_prints_one_error_line(tmp_path):
    no_chosen, _ = _bad_pairs(tmp_path)
    proc = subprocess.run([sys.executable, "engine/train_rm.py", f"rm.pairs={no_chosen}",
                           f"rm.output_dir={tmp_path}/run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"error: {no_chosen}:2: each line needs a string field 'chosen'" in proc.stderr
    assert "Traceback" not in proc.stderr
