"""GSM8K as shipped (../shared/data/gsm8k, MIT, unchanged) loads through data.prompt_key=question, and every
row's gold answer, what follows its "#### ", parses as a number. The folder sits next to the repository; CI
has it, so a missing folder fails here instead of skipping."""

from pathlib import Path

import pytest

from engine.tasks.data import load_problems

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
ROWS = {"train": 7473, "test": 1319}


def _is_number(answer: str | None) -> bool:
    try:
        float((answer or "").replace(",", ""))  # GSM8K writes thousands with commas: "#### 1,600"
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("split", sorted(ROWS))
def test_every_gsm8k_row_loads_with_a_numeric_gold_answer(split):
    path = GSM8K / f"{split}.jsonl"
    assert path.is_file(), (f"{path} not found: the GSM8K files are expected in ../shared/data/gsm8k next to the "
                            f"repository (train.jsonl and test.jsonl, fields 'question' and 'answer').")
    problems = load_problems(str(path), prompt_key="question")
    assert len(problems) == ROWS[split]
    bad = [(p.line, p.answer) for p in problems if not _is_number(p.answer)]
    assert not bad, f"{path}: {len(bad)} rows whose gold answer is not a number, e.g. {bad[:5]}"
    assert all(p.prompt.strip() for p in problems)


def test_gsm8k_gold_answers_are_what_follows_the_hashes():
    """The first training row, checked by hand: Natalia's clips, "#### 72"."""
    problems = load_problems(str(GSM8K / "train.jsonl"), prompt_key="question")
    assert problems[0].prompt.startswith("Natalia sold clips to 48 of her friends in April")
    assert problems[0].answer == "72"
