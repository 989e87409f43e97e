"""PSRLM (pairs.kind=psrlm): the judge's rules by hand, the step-by-step pair builder against a scripted engine,
the judge probe's counts, the M0 recipe's judge data, and the config keys."""

import random
import re

import pytest

from engine.objectives.pairs.judge_probe import judge_counts, judge_rates
from engine.tasks.data import Problem
from engine.tasks.judge import (JUDGE_TEMPLATE, best_and_worst, combine_orders, continuation, judge_prompt, net_scores,
                                parse_verdict)
from rollout.vllm_engine import Completion


def test_a_verdict_is_the_last_word_when_it_is_the_only_label():
    answers = ("A", " B", "A.", "B\n", "4+8+1=13. A", "Final Answer: 132 B", "(A)", "AB", "a", "C", "", "A B",
               "A is right", "4+8+1=13.")
    assert [parse_verdict(t) for t in answers] == [0, 1, 0, 1, 0, 1, None, None, None, None, None, None, None, None]
    assert parse_verdict("No", ("Yes", "No")) == 1 and parse_verdict("so: Yes.", ("Yes", "No")) == 0


def test_both_orders_must_name_the_same_step():
    # first asked (A=x, B=y), then (A=y, B=x): x is A then B; y is B then A
    assert combine_orders(0, 1) == 0 and combine_orders(1, 0) == 1
    assert combine_orders(0, 0) is None and combine_orders(1, 1) is None  # the same position twice: a bias
    assert combine_orders(None, 1) is None and combine_orders(0, None) is None


def test_net_scores_and_best_and_worst():
    # 0 beat 1, 0 beat 2, 1 beat 2: a full order, scores 2, 0, -2
    assert net_scores(3, {(0, 1): 0, (0, 2): 0, (1, 2): 0}) == [2, 0, -2]
    assert best_and_worst([2, 0, -2]) == (0, 2)
    # 0 beat 1, 2 beat 1, (0, 2) inconsistent: best is tied, no pair
    scores = net_scores(3, {(0, 1): 0, (0, 2): None, (1, 2): 1})
    assert scores == [1, -2, 1] and best_and_worst(scores) is None
    # 0 beat 1, 2 unjudged: 2 is in the middle (0), not tied with the loser
    assert best_and_worst(net_scores(3, {(0, 1): 0, (0, 2): None, (1, 2): None})) == (0, 1)
    assert best_and_worst([0, 0]) is None and best_and_worst([]) is None  # no consistent verdict
    assert best_and_worst([1, 1, -2]) is None and best_and_worst([2, 0, 0, -2]) == (0, 3)


def test_the_prefix_grows_by_the_best_then_the_most_sampled_candidate():
    assert continuation([1, -1], [1, 3]) == 0
    assert continuation([0, 0], [1, 3]) == 1  # no verdict: the most often sampled
    assert continuation([0, 0, 0], [2, 2, 2]) == 0


def test_judge_prompt_strips_the_steps_and_labels_them():
    assert judge_prompt(JUDGE_TEMPLATE, "47+85=?", "7+5=12,", " 4+8+1=13.", " 4+8+0=12.") == (
        "47+85=?\nSteps: 7+5=12,\n4+8+1=13. A\n4+8+0=12. B\nWhich next step is right?")
    assert judge_prompt("{label_a}={a} {label_b}={b}", "p", "", "x", "y", ("1", "2")) == "1=x 2=y"


def test_judge_probe_counts_and_rates():
    first, second = [0, 1, None, 0], [1, 1, 0, 1]  # x (the right step) first: (0, 1) names it
    counts = judge_counts(first, second, [combine_orders(f, s) for f, s in zip(first, second)])
    assert counts == {"asked": 4.0, "right": 2.0, "consistent": 2.0, "parsed": 3.0, "answers": 7.0, "said_a": 3.0}
    assert judge_rates(counts) == pytest.approx({"accuracy": 0.5, "consistency": 0.5, "parsed": 0.75,
                                                 "said_a": 3 / 7, "pairs": 4.0})


# ---- the builder against a scripted engine -------------------------------------------------------------------

RIGHT = {"7+5=12,", "4+8+1=13.", "Final Answer: 132", "2+3=5,", "1+1+0=2.", "Final Answer: 25"}
SCRIPT = {  # (problem, prefix) -> the 4 samples; "|" marks the end of the turn
    ("47+85=?", ""): ["7+5=12,", "7+5=13,", "7+5=12, 4+8", "7+5=12,"],  # the third runs past its step
    ("47+85=?", "7+5=12,"): [" 4+8+1=13.", " 4+8+0=12.", " 4+8+1=13.", " 4+8+1=13."],
    ("47+85=?", "7+5=12, 4+8+1=13."): [" Final Answer: 132|"] * 4,
    ("12+13=?", ""): ["2+3=6,", "2+3=5,", "2+3=5,", "2+3=5,"],  # judged with a position bias: no pair
    ("12+13=?", "2+3=5,"): [" 1+1+0=2."] * 4,
    ("12+13=?", "2+3=5, 1+1+0=2."): [" Final Answer: 25|"] * 4,
    ("30+40=?", ""): ["70|"] * 4,  # no delimiter: a one-step answer
}


class ScriptedEngine:
    """Candidate steps from SCRIPT; a judge that names the RIGHT step, except on 12+13 where it always says A."""
    max_model_len = 256

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def _completion(self, text):
        ids = self.tokenizer(text.rstrip("|"), add_special_tokens=False).input_ids
        ids += [self.tokenizer.eos_token_id] if text.endswith("|") else []
        return Completion(token_ids=ids, logprobs=[0.0] * len(ids), text=text.rstrip("|"), finished=True)

    def generate(self, prompts, n, max_tokens, temperature, stop=None, **_):
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.calls.append(("steps" if stop else "judge", len(prompts)))
        if stop:
            keys = [(re.search(r"user\n(.*?)<", t).group(1), t.split("assistant\n")[-1]) for t in texts]
            return [[self._completion(s) for s in SCRIPT[k][:n]] for k in keys]
        return [[self._completion(self._verdict(t))] for t in texts]

    @staticmethod
    def _verdict(text):
        a, b = re.search(r"\n(.*) A\n(.*) B\nWhich", text).groups()
        if "12+13" in text:
            return "2+3=5, A"
        return f"{a} A" if a in RIGHT else f"{b} B" if b in RIGHT else "?"


def test_psrlm_builds_step_pairs_in_the_prefix_context_and_counts_the_round():
    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.config.loading import load_config
    from engine.objectives.pairs.builders import RoundInputs
    from engine.objectives.pairs.psrlm import psrlm_pairs
    from rollout.episodes import encode_prompt

    tokenizer = build_char_tokenizer()
    engine = ScriptedEngine(tokenizer)
    problems = [Problem("47+85=?", "132"), Problem("12+13=?", "25"), Problem("30+40=?", "70")]
    inputs = RoundInputs(engine, tokenizer, load_config(["pairs.kind=psrlm"]), None, problems, 0)
    pairs = psrlm_pairs(inputs)

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    prompt = encode_prompt(tokenizer, "47+85=?")
    assert [(p.context_ids, p.chosen_ids, p.rejected_ids) for p in pairs] == [
        (prompt, ids("7+5=12,"), ids("7+5=13,")),
        (prompt + ids("7+5=12,"), ids(" 4+8+1=13."), ids(" 4+8+0=12."))]
    assert [(p.kind, p.chosen_text, p.rejected_text, p.chosen_score, p.rejected_score, p.weight) for p in pairs] == [
        ("step", "7+5=12,", "7+5=13,", 1.0, -1.0, 1.0), ("step", " 4+8+1=13.", " 4+8+0=12.", 1.0, -1.0, 1.0)]
    # one candidate call per depth for the chains still going, one judge call (both orders) when any pair exists
    assert engine.calls == [("steps", 3), ("judge", 4), ("steps", 2), ("judge", 2), ("steps", 2)]
    assert inputs.stats == {"steps/chains": 3.0, "steps/steps": 7.0, "steps/no_delimiter": 1.0,
                            "steps/questions": 3.0, "steps/consistent": 2.0, "steps/one_candidate": 4.0,
                            "steps/no_pair": 1.0, "steps/pairs": 2.0}


def test_a_step_ends_the_answer_on_the_end_of_turn_a_final_answer_or_no_delimiter():
    from engine.objectives.pairs.psrlm import Chain, ends_answer, step_budget
    from engine.tasks.steps import DEFAULT_DELIMITER, Step

    assert not ends_answer(Step([1, 2], "7+5=12,"), 9, DEFAULT_DELIMITER)
    assert ends_answer(Step([1, 9], "12."), 9, DEFAULT_DELIMITER)  # ended the turn
    assert ends_answer(Step([1], " Final Answer: 132."), 9, DEFAULT_DELIMITER)
    assert ends_answer(Step([1], "7+5=12"), 9, DEFAULT_DELIMITER)  # ran out of budget without a delimiter
    chain = Chain(Problem("q", None), [0] * 200, [Step([1] * 30, "x,")])
    # min(step limit 24, response budget 48 - 30, context left 256 - 230)
    assert step_budget(chain, 24, 48, 256) == 18 and step_budget(chain, 24, 64, 240) == 10


# ---- M0: judge questions mixed into pre-training ---------------------------------------------------------------

def test_the_default_recipe_keeps_its_cache_key_and_its_rng_stream():
    from engine.builtin.tiny_model import TinyArithRecipe, _batch, _encode_episode, _episode_messages, recipe_key
    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.tasks.arith import arith_problems

    # the key of the model built before judge_mix existed (8c562f522250), moved by BUILD_VERSION 2 (512 positions)
    assert recipe_key(TinyArithRecipe()) == "332faed753c8"
    assert recipe_key(TinyArithRecipe(judge_mix=0.3)) != recipe_key(TinyArithRecipe())
    tokenizer, problems, recipe = build_char_tokenizer(), arith_problems("pretrain"), TinyArithRecipe(batch_size=8)
    old_rng, new_rng = random.Random(0), random.Random(0)
    old = [_encode_episode(tokenizer, _episode_messages(old_rng.choice(problems), old_rng, recipe)) for _ in range(8)]
    ids, _ = _batch(tokenizer, problems, new_rng, recipe)
    assert [row[:len(o)] for row, (o, _) in zip(ids.tolist(), old)] == [o for o, _ in old]
    assert old_rng.random() == new_rng.random()


def test_judge_episodes_ask_the_default_question_and_answer_with_the_right_label():
    from engine.builtin.tiny_model import TinyArithRecipe, _training_messages
    from engine.tasks.arith import arith_problems
    from engine.tasks.judge import JUDGE_LABELS

    rng, problems = random.Random(3), arith_problems("train")
    episodes = [_training_messages(problems, rng, TinyArithRecipe(judge_mix=0.5)) for _ in range(200)]
    judge = [m for m in episodes if len(m) == 2]
    assert 70 < len(judge) < 130 and all(len(m) == 4 for m in episodes if m not in judge)
    labels = [m[1]["content"][-1] for m in judge]
    assert set(labels) == set(JUDGE_LABELS) and 0.3 < labels.count("A") / len(labels) < 0.7
    for m in judge:  # the reply is the right step and its label: its column sum adds up, or it is the sum
        a, b = re.search(r"\n(.*) A\n(.*) B\nWhich", m[0]["content"]).groups()
        x, y = map(int, re.match(r"(\d+)\+(\d+)=", m[0]["content"]).groups())
        chosen, label = m[1]["content"].rsplit(" ", 1)
        assert chosen == (a if label == "A" else b) and parse_verdict(m[1]["content"]) == "AB".index(label)
        if chosen.startswith("Final Answer"):
            assert chosen == f"Final Answer: {x + y}"
        else:
            terms, total = chosen.rstrip(",.").split("=")
            assert sum(map(int, terms.split("+"))) == int(total)


# ---- config --------------------------------------------------------------------------------------------------

def test_steps_and_judge_config_is_checked():
    from engine.config.loading import ConfigError, load_config

    cfg = load_config(["configs/psrlm.yaml"])
    assert cfg.pairs.kind == "psrlm" and cfg.algo.kind == "dpo" and cfg.model.path == "builtin:tiny-arith-judge"
    assert list(cfg.steps.stops) == [",", "."] and cfg.judge.template == JUDGE_TEMPLATE
    for override, message in [("steps.stops=[';']", "steps.stops has ';'"),
                              ("steps.delimiter='['", "not a regular expression"),
                              ("judge.labels=[A,A]", "two different one-word labels"),
                              ("judge.labels=['A.',B]", "two different one-word labels"),
                              ("judge.template='{a} or {c}'", "needs {a} and {b}"),
                              ("judge.template='{a} or {b'", "judge.template cannot be formatted"),
                              ("rollout.temperature=0", "samples its candidate steps at rollout.temperature=0"),
                              ("steps.candidates=1", "steps.candidates=1 gives a prefix one candidate"),
                              ("judge.eval_pairs=-1", "judge.eval_pairs must be >= 0")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(["configs/psrlm.yaml", override])
