"""Step segmentation (engine/tasks/steps.py) and the built-in task's step truth (engine/tasks/arith_steps.py), by hand."""

from engine.tasks.arith import ArithProblem
from engine.tasks.arith_steps import KnownStepPair, known_step_pairs, slipped_step_pairs
from engine.tasks.steps import DEFAULT_DELIMITER, Step, first_step, has_delimiter, split_text, split_tokens, step_ends

WORKED = "7+5=12, 4+8+1=13. Final Answer: 132"


def _chars(ids):  # a decoder with one character per token id
    return "".join(chr(i) for i in ids)


def test_text_steps_keep_their_delimiter_and_the_answer_is_the_last_step():
    assert step_ends(WORKED, DEFAULT_DELIMITER) == [7, 17, 35]
    assert split_text(WORKED, DEFAULT_DELIMITER) == ["7+5=12,", " 4+8+1=13.", " Final Answer: 132"]
    assert split_text("7+5=12, 4+8+1=13.", DEFAULT_DELIMITER) == ["7+5=12,", " 4+8+1=13."]  # ends on a delimiter
    assert split_text("a,,b", DEFAULT_DELIMITER) == ["a,", ",", "b"]  # each match ends a step
    assert split_text("a; b; c", ";") == ["a;", " b;", " c"]


def test_a_response_without_a_delimiter_is_one_step():
    assert split_text("Final Answer: 132", DEFAULT_DELIMITER) == ["Final Answer: 132"]
    assert not has_delimiter("Final Answer: 132", DEFAULT_DELIMITER) and has_delimiter("12,", DEFAULT_DELIMITER)
    assert split_text("", DEFAULT_DELIMITER) == [""]
    assert split_text("abc", "x*") == ["abc"]  # empty matches cut nothing
    assert not has_delimiter("abc", "x*")


def test_token_steps_with_one_character_per_token():
    ids = [ord(c) for c in WORKED]
    steps = split_tokens(ids, _chars, DEFAULT_DELIMITER)
    assert [s.text for s in steps] == ["7+5=12,", " 4+8+1=13.", " Final Answer: 132"]
    assert [len(s.token_ids) for s in steps] == [7, 10, 18]
    assert [t for s in steps for t in s.token_ids] == ids


def test_token_steps_end_with_the_token_that_completes_the_delimiter():
    vocab = {1: "7+5", 2: "=12, 4", 3: "+8+1=13.", 4: " Final", 5: " Answer: 132", 9: ""}  # 9: end of turn

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    # offsets of the token boundaries: 0, 3, 9, 17, 23, 35, 35; step ends at characters 7, 17, 35
    steps = split_tokens([1, 2, 3, 4, 5, 9], decode, DEFAULT_DELIMITER)
    assert steps == [Step([1, 2], "7+5=12, 4"), Step([3], "+8+1=13."), Step([4, 5, 9], " Final Answer: 132")]
    # two delimiters in one token: one step
    assert split_tokens([1, 7], lambda ids: "".join({1: "a", 7: ",b,"}[i] for i in ids), ",") == [Step([1, 7], "a,b,")]


def test_first_step_cuts_a_sample_that_ran_past_its_delimiter():
    ids = [ord(c) for c in "7+5=12, 4+8"]
    assert first_step(ids, _chars, DEFAULT_DELIMITER) == Step(ids[:7], "7+5=12,")
    assert first_step([ord("9")], _chars, DEFAULT_DELIMITER) == Step([ord("9")], "9")


def test_the_byte_tokenizer_keeps_the_end_of_turn_token_in_the_last_step():
    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.tasks.steps import tokenizer_decoder

    tokenizer = build_char_tokenizer()
    ids = tokenizer(WORKED, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    steps = split_tokens(ids, tokenizer_decoder(tokenizer), DEFAULT_DELIMITER)
    assert [s.text for s in steps] == ["7+5=12,", " 4+8+1=13.", " Final Answer: 132"]
    assert [len(s.token_ids) for s in steps] == [7, 10, 19] and steps[-1].token_ids[-1] == tokenizer.eos_token_id
    only_eos = split_tokens([tokenizer.eos_token_id], tokenizer_decoder(tokenizer), DEFAULT_DELIMITER)
    assert only_eos == [Step([tokenizer.eos_token_id], "")]


def test_slipped_step_pairs_are_the_steps_that_differ_after_the_right_prefix():
    problem = ArithProblem(47, 85)  # right: 7+5=12, 4+8+1=13. Final Answer: 132
    # ones: 7+5=13, 4+8+1=13. Final Answer: 133 (the carry is the same)
    assert slipped_step_pairs(problem, "ones", DEFAULT_DELIMITER) == [
        KnownStepPair("47+85=?", "", "7+5=12,", "7+5=13,"),
        KnownStepPair("47+85=?", "7+5=12, 4+8+1=13.", " Final Answer: 132", " Final Answer: 133")]
    # drop_carry: 7+5=12, 4+8+0=12. Final Answer: 122
    assert slipped_step_pairs(problem, "drop_carry", DEFAULT_DELIMITER) == [
        KnownStepPair("47+85=?", "7+5=12,", " 4+8+1=13.", " 4+8+0=12."),
        KnownStepPair("47+85=?", "7+5=12, 4+8+1=13.", " Final Answer: 132", " Final Answer: 122")]
    # no carry to drop: the slipped answer is the right one, no pair
    assert slipped_step_pairs(ArithProblem(12, 13), "drop_carry", DEFAULT_DELIMITER) == []
    # 12+13: ones 2 pairs (ones, answer), tens 2 pairs (tens, answer)
    assert len(known_step_pairs([ArithProblem(12, 13)], DEFAULT_DELIMITER)) == 4
