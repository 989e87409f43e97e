"""Data in the formats people have: Parquet, Arrow and `datasets` folders (save_to_disk) beside JSONL,
columns mapped by data.prompt_key / data.answer_key, and the gold-answer conventions of GSM8K and MATH.
Every file is written here, tiny."""

import json

import pytest

from engine.tasks.data import DataError, gold_answer, load_problems

ROWS = [{"question": "What is 2+3?", "solution": "2+3 is 5.\n#### 5", "id": 1},
        {"question": "Simplify 6/4.", "solution": r"Divide by 2: $\boxed{\frac{3}{2}}$.", "id": 2},
        {"question": "What is 10*10?", "solution": 100, "id": 3}]
KEYS = dict(prompt_key="question", answer_key="solution")
EXPECTED = [("What is 2+3?", "5"), ("Simplify 6/4.", r"\frac{3}{2}"), ("What is 10*10?", "100")]


def _dataset(rows=ROWS):
    import datasets

    return datasets.Dataset.from_list([{**r, "solution": str(r["solution"])} for r in rows])


def _pairs(problems):
    return [(p.prompt, p.answer) for p in problems]


@pytest.mark.parametrize("answer, gold", [
    ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72", "72"),  # GSM8K
    ("#### 1,234", "1,234"),
    (r"So $x = \boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),  # MATH, nested braces
    (r"First \boxed{1}, then \boxed{2}", "2"),  # the last one
    ("132", "132"), (" 7 ", "7"), (42, "42"),  # a plain answer as it is
])
def test_gold_answers_follow_the_common_conventions(answer, gold):
    assert gold_answer(answer) == gold


def test_parquet_with_mapped_columns(tmp_path):
    path = tmp_path / "train.parquet"
    _dataset().to_parquet(str(path))
    assert _pairs(load_problems(str(path), **KEYS)) == EXPECTED


@pytest.mark.parametrize("layout", ["stream", "file", "feather"])
def test_arrow_files(tmp_path, layout):
    """The IPC stream `datasets` caches, the IPC file format, and Feather v2 (pyarrow.feather, pandas)."""
    import pyarrow as pa
    import pyarrow.feather

    path = tmp_path / ("train.feather" if layout == "feather" else "train.arrow")
    table = pa.Table.from_pylist([{"prompt": q, "answer": a} for q, a in EXPECTED])
    if layout == "feather":
        pyarrow.feather.write_feather(table, str(path))
    else:
        new = pa.ipc.new_stream if layout == "stream" else pa.ipc.new_file
        with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
            writer.write_table(table)
    assert _pairs(load_problems(str(path))) == EXPECTED


def test_save_to_disk_folders_and_splits(tmp_path):
    import datasets

    _dataset().save_to_disk(str(tmp_path / "one"))
    assert _pairs(load_problems(str(tmp_path / "one"), **KEYS)) == EXPECTED
    datasets.DatasetDict({"train": _dataset(ROWS[:2]), "test": _dataset(ROWS[2:])}).save_to_disk(str(tmp_path / "dd"))
    assert _pairs(load_problems(f"{tmp_path / 'dd'}:test", **KEYS)) == EXPECTED[2:]
    with pytest.raises(DataError, match=r"holds several splits \(splits: \['test', 'train'\]\).*dd:"):
        load_problems(str(tmp_path / "dd"), **KEYS)
    with pytest.raises(DataError, match="has no split 'validation'"):
        load_problems(f"{tmp_path / 'dd'}:validation", **KEYS)


def test_a_missing_column_names_the_file_and_the_columns_found(tmp_path):
    path = tmp_path / "train.parquet"
    _dataset().to_parquet(str(path))
    with pytest.raises(DataError) as err:
        load_problems(str(path), prompt_key="prompt")
    message = str(err.value)
    assert "train.parquet" in message and "no column 'prompt'" in message
    assert "['question', 'solution', 'id']" in message and "data.prompt_key" in message


def test_rows_without_the_answer_column_are_prompts_only(tmp_path):
    path = tmp_path / "prompts.parquet"
    _dataset().remove_columns(["solution"]).to_parquet(str(path))
    assert [p.answer for p in load_problems(str(path), **KEYS)] == [None, None, None]


def test_an_empty_prompt_names_its_row(tmp_path):
    path = tmp_path / "train.parquet"
    _dataset([ROWS[0], {**ROWS[1], "question": " "}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"train.parquet: row 2: column 'question' must be a non-empty string"):
        load_problems(str(path), **KEYS)


def test_jsonl_takes_the_same_keys_and_conventions(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert _pairs(load_problems(str(path), **KEYS)) == EXPECTED
    with pytest.raises(DataError, match=r"train.jsonl:1: each line needs a non-empty string field 'prompt'"):
        load_problems(str(path))
