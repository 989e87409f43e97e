"""reward.kind=seq2seq: rewrites by a reward-model folder turned into token rewards, the start-up checks on
reward.model, and a short training run whose learner takes per-token advantages."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, assert_weights_synced, run_script


def _options(model_dir, **extra):
    from engine.config.loading import base_config

    cfg = base_config()
    cfg.reward.model = str(model_dir)
    for key, value in extra.items():
        cfg.reward[key] = value
    return cfg.reward


def _episode(tokenizer, prompt, text, group=0):
    from engine.tasks.data import Problem
    from rollout.episodes import Episode, encode_prompt
    from rollout.vllm_engine import Completion

    ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return Episode(Problem(prompt, None, None), group, [encode_prompt(tokenizer, prompt)],
                   [Completion(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finished=True)])


def _greedy_by_hand(model, context, max_new_tokens, eos_id) -> list[int]:
    """One unpadded context, one argmax at a time, through the end-of-turn token."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == eos_id:
                break
    return ids[len(context):]


def test_token_rewards_come_from_the_reward_models_own_rewrites(tiny_model_dir):
    """Each turn is rewritten greedily by the folder's model; its alignment with the sampled tokens gives
    the rewards (identical rewrite: `identical` everywhere; else keep/change per token)."""
    from transformers import AutoTokenizer

    from rewards.alignment import token_rewards
    from rewards.registry import RewardInputs
    from rewards.rewrite_format import rewrite_context_ids
    from rewards.seq2seq import load_rewriter, seq2seq_reward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    options = _options(tiny_model_dir, keep=0.25, change=-3.0, identical=2.0)
    episodes = [_episode(tokenizer, "12+34=?", "2+4=6, 1+3+0=4. Final Answer: 46"),
                _episode(tokenizer, "57+68=?", "7+8=15, 5+6+0=11. Final Answer: 999"),
                _episode(tokenizer, "57+68=?", "oops")]
    (rewards,) = seq2seq_reward(RewardInputs(episodes, tokenizer, options))
    assert rewards.shape == (3, max(len(e.turns[0].token_ids) for e in episodes))
    rewriter = load_rewriter(str(tiny_model_dir))
    contexts = [rewrite_context_ids(tokenizer, e.problem.prompt, e.turns[0].text, options.rewrite_instruction)
                for e in episodes]
    batched = rewriter.rewrite(contexts, 64, tokenizer.pad_token_id, tokenizer.eos_token_id)  # left-padded batch
    seen = set()
    for row, (episode, context) in enumerate(zip(episodes, contexts)):
        rewrite = _greedy_by_hand(rewriter.model, context, 64, tokenizer.eos_token_id)  # not the code under test
        assert batched[row] == rewrite and rewrite[-1] == tokenizer.eos_token_id
        response = episode.turns[0].token_ids
        expected = token_rewards(response, rewrite, 0.25, -3.0, 2.0)
        assert rewards[row, :len(response)].tolist() == expected
        assert rewards[row, len(response):].eq(0).all()  # past the response: nothing
        seen |= set(expected)
    assert seen & {0.25, -3.0}, "no rewrite differed from its response: the keep/change path went untested"


def test_a_reward_model_without_room_for_the_rewrite_is_an_error(tiny_model_dir):
    """Rewrites cut by the reward model's context would read as deletions: the reward raises instead."""
    from transformers import AutoTokenizer

    from rewards.checked import RewardError, checked_rewards
    from rewards.registry import RewardInputs
    from rewards.rewrite_format import rewrite_context_ids
    from rewards.seq2seq import load_rewriter, seq2seq_reward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    options = _options(tiny_model_dir)
    episode = _episode(tokenizer, "57+68=?", "7+8=15, 5+6+0=11. Final Answer: 999")
    context = rewrite_context_ids(tokenizer, "57+68=?", episode.turns[0].text, options.rewrite_instruction)
    rewriter = load_rewriter(str(tiny_model_dir))
    positions = rewriter.max_positions
    try:
        rewriter.max_positions = len(context) + len(episode.turns[0].token_ids)  # just room: no error
        seq2seq_reward(RewardInputs([episode], tokenizer, options))
        rewriter.max_positions -= 1
        with pytest.raises(RewardError, match=rf"has {rewriter.max_positions} positions: .* room for "
                                             rf"{len(episode.turns[0].token_ids) - 1} tokens, fewer than the "
                                             rf"{len(episode.turns[0].token_ids)}-token response"):
            seq2seq_reward(RewardInputs([episode], tokenizer, options))
        with pytest.raises(RewardError, match=r"^reward.model=.* positions"):  # passed on as it is, not re-wrapped
            checked_rewards("seq2seq", seq2seq_reward, RewardInputs([episode], tokenizer, options), 3, "error")
    finally:
        rewriter.max_positions = positions


def test_reward_model_start_up_checks_name_reward_model(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, T5Config

    from engine.base.errors import UserError
    from engine.builtin.tokenizer import build_char_tokenizer
    from rewards.seq2seq import check_reward_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    check_reward_model(_options(tiny_model_dir), tokenizer)  # a causal LM with the policy's tokenizer
    with pytest.raises(UserError, match=r"reward.kind=seq2seq needs a reward model, but reward.model is not set"):
        check_reward_model(_options(""), tokenizer)
    with pytest.raises(UserError, match=r"reward.model='.*nowhere' is not a folder with a config.json. Hint: train one "
                                        r"with `python -m engine.train_rm CONFIG`"):
        check_reward_model(_options(tmp_path / "nowhere"), tokenizer)
    t5 = tmp_path / "t5"
    T5Config(vocab_size=300, d_model=16, num_layers=1, num_heads=1, architectures=["T5ForConditionalGeneration"]
             ).save_pretrained(t5)
    build_char_tokenizer().save_pretrained(t5)
    with pytest.raises(UserError, match=r"reward.model='.*t5' holds a t5 model \(T5ForConditionalGeneration\), not a "
                                        r"causal LM"):
        check_reward_model(_options(t5), tokenizer)
    classifier = tmp_path / "classifier"
    config = json.loads((tiny_model_dir / "config.json").read_text())
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForSequenceClassification"]}))
    with pytest.raises(UserError, match=r"holds a qwen2 model \(Qwen2ForSequenceClassification\), not a causal LM"):
        check_reward_model(_options(classifier), tokenizer)


def test_a_reward_model_asked_another_question_than_it_learned_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from engine.base.errors import UserError
    from rewards.rewrite_format import REWRITE_FILE
    from rewards.seq2seq import check_reward_model

    model = tmp_path / "rm"
    shutil.copytree(tiny_model_dir, model)
    (model / REWRITE_FILE).write_text(json.dumps({"rewrite_instruction": "Fix it."}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    check_reward_model(_options(model, rewrite_instruction="Fix it."), tokenizer)
    with pytest.raises(UserError, match=r"reward.rewrite_instruction='Check your answer and fix any mistake.', but "
                                        r"reward.model=.* was trained to answer 'Fix it.'.*Hint: pass "
                                        r"reward.rewrite_instruction='Fix it.'"):
        check_reward_model(_options(model), tokenizer)


def test_seq2seq_config_checks_name_the_key():
    from engine.config.loading import ConfigError, load_config

    cfg = load_config(["configs/seq2seq_rm.yaml"])
    assert cfg.reward.rewrite_max_tokens >= cfg.rollout.max_tokens + 1
    load_config(["configs/seq2seq_rm.yaml", "reward.rewrite_max_tokens=49"])  # 48 tokens and the end of turn
    load_config(["configs/seq2seq_rm.yaml", "algo.turn1_credit=trajectory", "algo.alpha=1"])
    for overrides, message in [
        (["reward.rewrite_max_tokens=48"], "reward.rewrite_max_tokens=48 is shorter than a response of "
                                           "rollout.max_tokens=48 plus an end-of-turn token"),
        (["algo.turn1_credit=trajectory", "algo.alpha=2"], "algo.turn1_credit=trajectory with algo.alpha=2.0 > 1"),
        (["reward.kind=mix", "reward.weights.seq2seq=1", "reward.weights.gold=1", "reward.rewrite_max_tokens=8"],
         "reward.rewrite_max_tokens=8 is shorter"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(["configs/seq2seq_rm.yaml", *overrides])
    load_config(["configs/default.yaml", "reward.rewrite_max_tokens=8"])  # no seq2seq reward: not read


def test_a_missing_reward_model_stops_training_at_start_up(tmp_path):
    proc = subprocess.run([sys.executable, "engine/train.py", "configs/default.yaml", "reward.kind=seq2seq",
                           f"reward.model={tmp_path / 'missing'}", f"train.output_dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: reward.kind=seq2seq needs a reward model, but reward.model=" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_training_with_token_rewards(tiny_model_dir, tmp_path):
    """Two SCoRe steps with reward.kind=seq2seq (the reward model: the base folder itself, a corrector by
    pre-training) and the position baseline (turn_mean, the default: tests/test_train_rm.py's recipe test):
    the token-level path runs end to end and the weights stay in sync."""
    for baseline in ("position",):
        run_dir = tmp_path / baseline
        run_script([
            sys.executable, "engine/train.py", "configs/default.yaml", f"model.path={tiny_model_dir}",
            "reward.kind=seq2seq", f"reward.model={tiny_model_dir}", f"algo.token_baseline={baseline}",
            "train.steps=2", "algo.stage1_steps=1", "eval.problems=8", "rollout.prompts_per_step=4",
            f"train.output_dir={run_dir}",
        ], timeout=600)
        history = json.loads((run_dir / "summary.json").read_text())["train"]["history"]
        assert all(0.0 <= s["negative_token_frac"] <= 1.0 for s in history)
        assert all(-1.0 <= s[f"reward_t{k}"] <= 1.0 for s in history for k in (1, 2))  # token means of +-1
        assert_weights_synced(history)
