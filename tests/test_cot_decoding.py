"""CoT decoding against vLLM's own greedy decoding on the tiny model."""

import pytest

from rollout.cot_decoding import cot_decode
from rollout.vllm_engine import Completion

pytestmark = pytest.mark.slow

BRANCHES, MAX_TOKENS = 5, 40  # with 5, the tiny model's 4th first token for prompt 0 is EOS


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    """One vLLM engine for the whole module (starting one costs ~10 s), its tokenizer and chat prompts."""
    from engine.models.paths import load_tokenizer_and_config
    from engine.tasks.data import load_problems
    from rollout.episodes import encode_prompt
    from rollout.vllm_engine import RolloutEngine

    tokenizer, _ = load_tokenizer_and_config(str(tiny_model_dir), False)
    engine = RolloutEngine(str(tiny_model_dir), max_model_len=256, seed=0)
    prompts = [encode_prompt(tokenizer, p.prompt) for p in load_problems("builtin:arith")[:3]]
    return engine, tokenizer, prompts


@pytest.fixture(scope="module")
def decoded(setup):
    engine, tokenizer, prompts = setup
    return cot_decode(engine, tokenizer, prompts, branches=BRANCHES, max_tokens=MAX_TOKENS)


def test_branches_start_from_vllms_top_k_first_tokens(setup, decoded):
    engine, _, prompts = setup
    heads = engine.generate(prompts, n=1, max_tokens=1, temperature=0.0, top_k_logprobs=BRANCHES)
    assert len(decoded) == len(prompts)
    for row, head in zip(decoded, heads):
        firsts = [c.token_ids[0] for c in row]
        assert len(row) == BRANCHES and len(set(firsts)) == BRANCHES
        assert firsts == head[0].top_token_ids[0]
        assert firsts[0] == head[0].token_ids[0]  # the top-ranked id is the greedy token
        first_lps = [c.logprobs[0] for c in row]
        assert first_lps == pytest.approx(head[0].top_logprobs[0])
        assert first_lps == sorted(first_lps, reverse=True)


def test_branch_zero_is_plain_greedy_decoding(setup, decoded):
    engine, _, prompts = setup
    greedy = engine.generate(prompts, n=1, max_tokens=MAX_TOKENS, temperature=0.0)
    for row, plain in zip(decoded, greedy):
        c, g = row[0], plain[0]
        assert c.token_ids == g.token_ids
        assert c.logprobs == pytest.approx(g.logprobs, abs=1e-4)
        assert c.text == g.text  # answer extraction reads .text: same string as a vLLM completion
        assert c.finished == g.finished


def test_each_branch_continues_greedily(setup, decoded):
    engine, tokenizer, prompts = setup
    for prompt, row in zip(prompts, decoded):
        conts = engine.generate([prompt + [c.token_ids[0]] for c in row], n=1, max_tokens=MAX_TOKENS - 1,
                                temperature=0.0)
        for c, cont in zip(row, conts):
            assert len(c.token_ids) == len(c.logprobs) <= MAX_TOKENS
            if c.token_ids[0] == tokenizer.eos_token_id:
                assert c.token_ids == [c.token_ids[0]] and c.finished and c.text == ""
                continue
            assert c.token_ids[1:] == cont[0].token_ids and c.finished == cont[0].finished
            # vLLM's text leaves out the stop token; so does a branch's
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_one_token_budget_needs_no_continuation(setup):
    engine, tokenizer, prompts = setup
    rows = cot_decode(engine, tokenizer, prompts[:1], branches=2, max_tokens=1)
    assert [len(c.token_ids) for c in rows[0]] == [1, 1]
    greedy = engine.generate(prompts[:1], n=1, max_tokens=1, temperature=0.0)[0][0]
    assert rows[0][0].token_ids == greedy.token_ids and rows[0][0].text == greedy.text


class ScriptedEngine:
    """Stands in for vLLM: the first step offers 'a', EOS, 'b'; every continuation is 'xy' then EOS."""

    def __init__(self, tokenizer):
        self.tok, self.calls = tokenizer, []

    def generate(self, prompts, n, max_tokens, temperature, top_k_logprobs=0):
        self.calls.append((len(prompts), max_tokens, top_k_logprobs))
        eos, a, b = self.tok.eos_token_id, *self.tok.convert_tokens_to_ids(["a", "b"])
        if top_k_logprobs:
            top = [[a, eos, b][:top_k_logprobs]]
            return [[Completion([a], [-0.1], "a", False, [[-0.1, -1.0, -2.0][:top_k_logprobs]], top)]
                    for _ in prompts]
        ids = self.tok.convert_tokens_to_ids(["x", "y"])[:max_tokens - 1] + [eos]
        return [[Completion(ids, [-0.5] * len(ids), "xy"[:len(ids) - 1], True)] for _ in prompts]


def test_an_eos_first_token_ends_its_branch_and_one_call_continues_the_rest():
    from engine.builtin.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    engine = ScriptedEngine(tok)
    rows = cot_decode(engine, tok, [[1, 2], [3]], branches=3, max_tokens=4)
    assert engine.calls == [(2, 1, 3), (4, 3, 0)]  # one first step, one batched continuation of 2 x 2 branches
    for row in rows:
        assert [c.text for c in row] == ["axy", "", "bxy"]
        assert row[1].token_ids == [tok.eos_token_id] and row[1].logprobs == [-1.0] and row[1].finished
        assert row[2].logprobs == [-2.0, -0.5, -0.5, -0.5] and row[2].finished
    engine.calls.clear()
    rows = cot_decode(engine, tok, [[1, 2]], branches=3, max_tokens=1)
    assert engine.calls == [(1, 1, 3)]
    assert [(c.token_ids, c.text, c.finished) for c in rows[0]] == [
        ([tok.convert_tokens_to_ids("a")], "a", False), ([tok.eos_token_id], "", True),
        ([tok.convert_tokens_to_ids("b")], "b", False)]


@pytest.mark.parametrize("branches, max_tokens", [(0, 8), (2, 0), (-1, -1)])
def test_bad_arguments_are_refused_before_any_generation(branches, max_tokens):
    class NoEngine:
        def generate(self, *args, **kwargs):
            raise AssertionError("no generation expected")

    with pytest.raises(ValueError):
        cot_decode(NoEngine(), None, [[1, 2]], branches=branches, max_tokens=max_tokens)
