"""Problems from tables, through the `datasets` library: Parquet and Arrow files, and folders written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk` (a DatasetDict takes `folder:split`)."""

from __future__ import annotations

from pathlib import Path

from engine.tasks.problem import DataError, Problem, gold_answer

SUFFIXES = (".parquet", ".arrow", ".feather")


def _split_source(source: str) -> tuple[Path, str | None]:
    """`folder:split` -> (folder, split); a plain path -> (path, None)."""
    path, _, split = source.rpartition(":")
    if path and split and "/" not in split and Path(path).is_dir():
        return Path(path), split
    return Path(source), None


def is_table(source: str) -> bool:
    path, _ = _split_source(source)
    return path.suffix in SUFFIXES or path.is_dir()


def _open(source: str):
    path, split = _split_source(source)
    if not path.exists():
        raise DataError(f"data file or folder '{path}' not found. Hint: data.train / data.eval take a JSONL, "
                        f"Parquet or Arrow file or a folder saved with `save_to_disk`.")
    import datasets

    try:
        if path.suffix == ".parquet":
            return datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        if path.suffix in (".arrow", ".feather"):
            return _arrow(path)
        data = datasets.load_from_disk(str(path))
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot read it as a data set: {type(err).__name__}: {err}. Hint: a Parquet or "
                        f"Arrow file, or a folder written by `Dataset.save_to_disk`.") from None
    if isinstance(data, datasets.DatasetDict):
        if split is None or split not in data:
            what = f"has no split '{split}'" if split else "holds several splits"
            raise DataError(f"{path} {what} (splits: {sorted(data)}). Hint: name one, e.g. "
                            f"'{path}:{next(iter(data), 'train')}'.")
        return data[split]
    if split is not None:
        raise DataError(f"{path} is a single data set, not a DatasetDict: drop ':{split}'.")
    return data


def _arrow(path: Path):
    """An Arrow IPC stream (what `datasets` caches) or an IPC file (Feather v2, `pyarrow.feather`, pandas'
    `to_feather`)."""
    import datasets
    import pyarrow as pa

    with open(path, "rb") as f:
        is_file_format = f.read(6) == b"ARROW1"  # the IPC file format's magic; a stream starts otherwise
    if not is_file_format:
        return datasets.Dataset.from_file(str(path), in_memory=True)
    with pa.OSFile(str(path), "rb") as source:  # read into memory: nothing refers to the file afterwards
        return datasets.Dataset(pa.ipc.open_file(source).read_all())


def load_table(source: str, prompt_key: str, answer_key: str) -> list[Problem]:
    """Rows of `source` as problems; `line` is the row number (1-based) for error messages."""
    table = _open(source)
    columns = list(table.column_names)
    if prompt_key not in columns:
        raise DataError(f"{source}: no column '{prompt_key}' for the prompts (columns: {columns}). Hint: "
                        f"data.prompt_key=<column>.")
    has_answers = answer_key in columns
    problems = []
    for row, item in enumerate(table.select_columns([prompt_key, answer_key] if has_answers else [prompt_key]), 1):
        prompt, answer = item[prompt_key], item.get(answer_key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{source}: row {row}: column '{prompt_key}' must be a non-empty string, got "
                            f"{prompt!r}.")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise DataError(f"{source}: row {row}: column '{answer_key}' must be a string or a number, got "
                            f"{type(answer).__name__}.")
        problems.append(Problem(prompt, None if answer is None else gold_answer(answer), row))
    return problems
