import json
import random
import re

import pytest

from engine.tasks.answer import answers_match, extract_answer
from engine.tasks.arith import ArithProblem, arith_problems, sample_slip, worked_answer
from engine.tasks.data import DataError, load_problems


def test_builtin_splits_are_disjoint_and_large_enough():
    train, val, held_out, pretrain = ({(p.a, p.b) for p in arith_problems(s)} for s in ("train", "val", "eval", "pretrain"))
    assert not train & held_out and not train & val and not val & held_out
    assert len(held_out) >= 500 and len(val) >= 500 and len(train) > 5 * len(held_out)
    assert len(train) + len(val) + len(held_out) == 90 * 90  # every problem has a split
    # the base model's pre-training problems: the old train split (before validation), so the model is unchanged
    assert pretrain == train | val and len(pretrain) == 7086
    assert (47, 85) in train and (10, 12) in val and (10, 10) in held_out  # (a*7919 + b*104729) % 8: 2, 0
    carry = {name: sum(p.a % 10 + p.b % 10 >= 10 for p in arith_problems(name)) / len(arith_problems(name))
             for name in ("val", "eval")}
    assert carry == {"val": 0.5, "eval": 0.5}  # a slip is mostly a dropped carry: validation is as hard as eval
    for source, split in (("builtin:arith", "train"), ("builtin:arith-val", "val"), ("builtin:arith-eval", "eval")):
        assert [p.prompt for p in load_problems(source)] == [p.prompt for p in arith_problems(split)]


def test_worked_answer_and_slips():
    p = ArithProblem(47, 85)
    assert worked_answer(p) == "7+5=12, 4+8+1=13. Final Answer: 132"
    assert extract_answer(worked_answer(p, "drop_carry")) == "122"
    assert extract_answer(worked_answer(p, "ones")) == "133"
    assert extract_answer(worked_answer(p, "tens")) == "142"
    rng = random.Random(0)
    for _ in range(50):
        slip = sample_slip(p, rng)
        assert extract_answer(worked_answer(p, slip)) != p.answer


@pytest.mark.parametrize("text, expected", [
    ("7+5=12, 4+8+1=13. Final Answer: 132", "132"),
    ("Final Answer: 12. Wait. Final Answer: 13.", "13"),
    ("Final Answer:  42 \nmore text", "42"),
    ("no answer here", None),
    ("Final Answer: ", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_answers_match():
    assert answers_match("132", "132") and answers_match("12.0", "12") and answers_match("1,000", "1000")
    assert not answers_match("13", "132") and not answers_match(None, "1") and not answers_match("x", None)


@pytest.mark.parametrize("predicted, gold, same", [
    ("\\frac{1}{2}", "0.5", True), ("1/2", "\\frac{1}{2}", True), ("\\sqrt{4}", "2", True),
    ("x = 5", "5", True), ("\\frac{1}{3}", "0.5", False), ("banana", "2", False),
])
def test_answers_match_uses_math_verify_beyond_plain_numbers(predicted, gold, same):
    assert answers_match(predicted, gold) is same


def test_jsonl_source(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "2+2=?", "answer": 4}) + "\n\n" + json.dumps({"prompt": "hi"}) + "\n")
    problems = load_problems(str(f))
    assert [(p.prompt, p.answer, p.line) for p in problems] == [("2+2=?", "4", 1), ("hi", None, 3)]


@pytest.mark.parametrize("content, needle", [
    ('{"prompt": "a"}\n{not json}\n', "p.jsonl:2"),
    ('{"question": "a"}\n', "p.jsonl:1"),
    ('{"prompt": "a", "answer": [1]}\n', "p.jsonl:1"),
    ("", "empty"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, needle):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=needle):
        load_problems(str(f))


def test_missing_source():
    with pytest.raises(DataError, match="not found"):
        load_problems("nope.jsonl")
    with pytest.raises(DataError, match="builtin:arith"):
        load_problems("builtin:arithmetic")


def test_require_answers_names_the_line(tmp_path):
    from engine.tasks.data import require_answers

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b"}\n')  # a blank line 2 is skipped
    with pytest.raises(DataError, match=r"p.jsonl:3.*reward.kind=gold"):
        require_answers(load_problems(str(f)), str(f), "reward.kind=gold")
    require_answers(load_problems("builtin:arith-eval"), "builtin:arith-eval", "evaluation")


def test_gold_matching_and_majority_share_one_notion_of_equal_answers():
    """Gold accuracy (turn_correctness, the gold reward, evaluation) and the label-free votes both compare
    answers through answers_match: "12", "12.0" and "\\boxed{12}" are one answer everywhere."""
    from types import SimpleNamespace

    from engine.tasks.data import Problem
    from rewards.agreement import majority_votes
    from rewards.registry import turn_correctness

    texts = ["Final Answer: 12.0", "\\boxed{12}", "Final Answer: 12", "Final Answer: 13"]
    episodes = [SimpleNamespace(turns=[SimpleNamespace(text=t), SimpleNamespace(text=t)],
                                problem=Problem("7+5=?", "12")) for t in texts]
    c1, c2 = turn_correctness(episodes)
    assert c1.tolist() == c2.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert majority_votes([extract_answer(t) for t in texts]) == [1.0, 1.0, 1.0, 0.0]
    # as strings "13" (twice) would be the plurality; as answers 12 has three votes
    assert majority_votes(["12", "12.0", "13", "13", "12.00"]) == [1.0, 1.0, 0.0, 0.0, 1.0]


TEMPLATE = "{prompt}\nEnd with 'Final Answer: <number>'."


def test_prompt_template_wraps_every_prompt(tmp_path):
    """load_problems puts each prompt of a built-in split, a JSONL file and a table in the template; the gold
    answers and lines stay as they were."""
    import datasets

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "2+2=?", "answer": "#### 4"}) + "\n")
    assert [(p.prompt, p.answer, p.line) for p in load_problems(str(f), "question", template=TEMPLATE)] == \
        [("2+2=?\nEnd with 'Final Answer: <number>'.", "4", 1)]
    datasets.Dataset.from_list([{"prompt": "3+3=?", "answer": "6"}]).to_parquet(str(tmp_path / "p.parquet"))
    assert [p.prompt for p in load_problems(str(tmp_path / "p.parquet"), template="Q: {prompt} A: {{x}}")] == \
        ["Q: 3+3=? A: {x}"]
    plain = load_problems("builtin:arith-eval")
    wrapped = load_problems("builtin:arith-eval", template=TEMPLATE)
    assert [p.prompt + "\nEnd with 'Final Answer: <number>'." for p in plain] == [p.prompt for p in wrapped]
    assert [p.answer for p in plain] == [p.answer for p in wrapped]


def test_prompt_template_reaches_train_and_eval_problems(tmp_path):
    """data.prompt_template from the config reaches both the training and the evaluation problems."""
    from engine.config.loading import load_config
    from engine.loop.inputs import check_inputs

    cfg = load_config([f"data.prompt_template={json.dumps(TEMPLATE)}", f"train.output_dir={tmp_path / 'run'}"])
    inputs = check_inputs(cfg, rank=0, world=1)
    for problems, split in ((inputs.train, "train"), (inputs.eval, "eval")):
        assert [p.prompt for p in problems] == [TEMPLATE.format(prompt=p.prompt) for p in arith_problems(split)]


@pytest.mark.parametrize("template, needle", [
    ("no field", "has no {prompt} field"),
    ("{prompt} in {unit}", r"has the fields \{unit\}"),
    ("{question}", r"has the fields \{question\}"),
    ("{} {prompt}", r"has the fields \{\}"),
    ('Reply as {"answer": N}. {prompt}', r'has the fields \{"answer"\}'),  # JSON braces, not doubled
    ("{prompt", "cannot be formatted"),
    ("{prompt!z}", "cannot be formatted"),
])
def test_a_bad_prompt_template_names_the_key_its_value_and_a_hint(tmp_path, template, needle):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "2+2=?"}) + "\n")
    for source in (str(f), "builtin:arith"):
        with pytest.raises(DataError) as err:
            load_problems(source, template=template)
        message = str(err.value)
        assert re.search(needle, message) and f"data.prompt_template={template!r}" in message
        assert "Hint:" in message and "{{ or }}" in message
