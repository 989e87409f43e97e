"""Answer-span location on each format, by hand."""

import pytest

from engine.tokenizer import build_char_tokenizer
from rewards.answer import answer_char_span, extract_answer
from rewards.answer_span import answer_token_span, char_span_to_token_span


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
