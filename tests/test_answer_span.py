"""Answer-span location on each format, by hand."""

import pytest

from engine.builtin.tokenizer import build_char_tokenizer
from engine.tasks.answer import answer_char_span, extract_answer
from engine.tasks.answer_span import answer_token_span, char_span_to_token_span


@pytest.mark.parametrize("text, span, answer", [
    ("7+5=12, 4+8+1=13. Final Answer: 132", (32, 35), "132"),
    ("Final Answer: 12.\n", (14, 16), "12"),
    ("so \\boxed{\\frac{1}{2}} done", (10, 21), "\\frac{1}{2}"),
    ("#### 42\n", (5, 7), "42"),
    ("Final Answer: 1\n#### 7", (21, 22), "7"),  # the last format in the text wins
    ("\\boxed{3} then Final Answer: 4", (29, 30), "4"),
    ("no answer", None, None),
    ("Final Answer: ", None, None),
    ("\\boxed{unclosed", None, None),
])
def test_answer_char_span(text, span, answer):
    assert answer_char_span(text) == span
    assert extract_answer(text) == answer


def test_char_span_to_token_span_by_hand():
    # three tokens covering "ab", "cde", "f": ends at 2, 5, 6
    ends = [2, 5, 6]
    assert char_span_to_token_span(ends, 3, 5) == (1, 2)  # "de" lies in token 1
    assert char_span_to_token_span(ends, 1, 6) == (0, 3)  # "bcdef" needs all three
    assert char_span_to_token_span(ends, 6, 7) is None  # past the end


def test_answer_token_span_with_special_tokens():
    tok = build_char_tokenizer()
    text = "1+2=3. Final Answer: 13"
    ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    # one token per character: "13" is tokens 21 and 22; the end-of-turn token is outside the span
    assert answer_token_span(tok, ids, text) == (21, 23)
    assert tok.decode(ids[21:23]) == "13"
    assert answer_token_span(tok, ids[:5], "1+2=3") is None


@pytest.mark.parametrize("response, probe, span", [
    ([1, 2, 3, 4, 5], [9, 3, 4, 8], (2, 4)),
    ([1, 2], [3], None),
    ([5, 6, 5, 6, 7], [5, 6, 7], (2, 5)),  # the longest run, not the first partial one
    ([7, 7], [7], (0, 1)),  # ties: the earliest
])
def test_longest_common_run(response, probe, span):
    from engine.tasks.answer_span import longest_common_run

    assert longest_common_run(response, probe) == span


@pytest.mark.parametrize("response, probe, text_span", [
    ("I am not sure.", " 5.", None),  # only " " and "." are shared: no answer, not a lone space
    ("the answer is 5.", " 5.", (13, 16)),  # " 5." is shared whole
    ("it is 5 . done", " . 5", (5, 7)),  # " . " (3 tokens) is shared but empty; " 5" (2) is the answer
])
def test_probe_answer_run_needs_content(response, probe, text_span):
    from engine.tasks.answer_span import answer_run

    tok = build_char_tokenizer()
    ids = lambda text: tok(text, add_special_tokens=False).input_ids
    assert answer_run(tok, ids(response), ids(probe)) == text_span


def test_probe_answer_run_min_tokens():
    from engine.tasks.answer_span import answer_run

    tok = build_char_tokenizer()
    response = tok("the answer is 5.", add_special_tokens=False).input_ids
    probe = tok("5", add_special_tokens=False).input_ids
    assert answer_run(tok, response, probe) == (14, 15)  # "5" alone
    assert answer_run(tok, response, probe, min_tokens=2) is None  # one token is too short


class GreedyAnswers:
    """Stands in for vLLM's greedy continuation: every probe is answered with `text`."""

    def __init__(self, tok, text):
        self.tok, self.text, self.calls = tok, text, []

    def generate(self, prompts, n, max_tokens, temperature):
        from rollout.vllm_engine import Completion

        self.calls.append((prompts, max_tokens, temperature))
        ids = self.tok(self.text, add_special_tokens=False).input_ids
        return [[Completion(ids, [0.0] * len(ids), self.text, True)] for _ in prompts]


def test_probe_fallback_locates_an_answer_without_format():
    from engine.tasks.answer_span import locate_answer
    from rollout.answer_probe import probe_answer_spans
    from tests.test_episodes import _episode

    tok = build_char_tokenizer()
    ep = _episode(tok, "2+3=?", "it is 5 I think", "Final Answer: 5")
    engine = GreedyAnswers(tok, " 5.")
    assert probe_answer_spans(engine, tok, [ep], " So the answer is", 4) == 1  # only turn 1 lacks a format
    prompts, max_tokens, temperature = engine.calls[0]
    assert tok.decode(prompts[0]).endswith("assistant\nit is 5 I think So the answer is") and temperature == 0.0
    assert locate_answer(tok, ep.turns[0]) == (5, 7)  # " 5" in "it is 5 I think"
    assert locate_answer(tok, ep.turns[1]) == (14, 15)  # the format wins where there is one


def test_probe_finds_no_answer_in_a_response_without_one():
    from rewards import turn_has_answer
    from rollout.answer_probe import probe_answer_spans
    from tests.test_episodes import _episode

    tok = build_char_tokenizer()
    eps = [_episode(tok, "2+3=?", "I am not sure.", "Final Answer: 5"),
           _episode(tok, "2+3=?", "it is 5 I think", "no idea")]
    assert probe_answer_spans(GreedyAnswers(tok, " 5."), tok, eps, " So the answer is", 4) == 3
    assert eps[0].turns[0].probe_span is None  # a shared space is no answer
    h1, h2 = turn_has_answer(eps, tok)
    assert h1.tolist() == [0.0, 1.0] and h2.tolist() == [1.0, 0.0]


def test_the_answer_span_decodes_a_logarithmic_number_of_prefixes():
    """Bisection over lazily decoded prefixes: the same span as the full list of ends, from about 2 log2(L)
    decodes instead of L (the answer is located several times per turn per step)."""
    from engine.tasks.answer_span import PrefixCharEnds

    tok = build_char_tokenizer()
    text = "Let me think. " * 30 + "Final Answer: 42"
    ids = tok(text).input_ids
    calls = []

    class Counting:
        def decode(self, ids, **kwargs):
            calls.append(len(ids))
            return tok.decode(ids, **kwargs)

    span = answer_token_span(Counting(), ids, text)
    ends = [len(tok.decode(ids[:i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    assert span == char_span_to_token_span(ends, len(text) - 2, len(text)) == (len(ids) - 2, len(ids))
    assert len(ids) == 436 and len(calls) <= 2 * 9 + 2  # log2(436) < 9 per end
    assert list(PrefixCharEnds(tok, ids[:5])) == ends[:5]
