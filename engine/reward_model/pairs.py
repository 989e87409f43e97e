"""The reward model's preference pairs as text: read from a JSONL file (rm.pairs), split by prompt into
training and held-out pairs, and saved to <rm.output_dir>/pairs.jsonl so a resumed run trains on the same
pairs. A pair is (prompt, chosen, rejected); the DPO rounds' files (chosen_text / rejected_text) read too."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.base.errors import UserError
from engine.base.jsonl import jsonl_rows

EXAMPLE = '{"prompt": "What is 47+85?", "chosen": "... Final Answer: 132", "rejected": "... Final Answer: 122"}'
# The key each field is read from, then the one the DPO rounds write (<output_dir>/pairs/round-NNN.jsonl).
FIELD_KEYS = {"prompt": ("prompt",), "chosen": ("chosen", "chosen_text"), "rejected": ("rejected", "rejected_text")}
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class RMPair:
    prompt: str  # the problem, the user's turn
    chosen: str  # the preferred response: what the reward model learns to rewrite into
    rejected: str
    origin: str = ""  # where it came from: the builder's pair kind, or file:line
    split: str | None = None  # train | heldout (None: not split yet)

    def to_json(self) -> dict:
        return asdict(self)


class PairsError(UserError):
    """A bad pairs file; the message names the file and line."""


def read_pairs(path: str | Path) -> list[RMPair]:
    """Every pair of a JSONL file, one object per line (blank lines skipped). A `split` field, as
    write_pairs saves it, is kept."""
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"rm.pairs={path}: file not found. Hint: rm.pairs takes 'builder' (sample pairs with the "
                         f"base policy now) or a JSONL file with one pair per line, e.g. {EXAMPLE}.")
    return [_pair_from_row(row, where) for where, _, row in jsonl_rows(path, PairsError, EXAMPLE, "pairs")]


def _pair_from_row(row: object, where: str) -> RMPair:
    if not isinstance(row, dict):
        raise PairsError(f"{where}: each line must be a JSON object, got {type(row).__name__}. Hint: e.g. {EXAMPLE}.")
    if "step" in (row.get("kind"), row.get("origin")):  # a PSRLM round's pair: its chosen and rejected continue the prompt's steps so far
        raise PairsError(f"{where}: a step pair (kind 'step', written by PSRLM's rounds): its chosen and rejected "
                         f"are next steps after a prefix of steps the file does not keep, not whole responses to "
                         f"the prompt. Hint: train the reward model on whole-response pairs (rm.pairs=builder, or "
                         f"an rlsf/evolve round's pairs).")
    values = {name: _text_field(row, name, keys, where) for name, keys in FIELD_KEYS.items()}
    if not values["prompt"].strip():
        raise PairsError(f"{where}: 'prompt' is empty. Hint: e.g. {EXAMPLE}.")
    split = row.get("split")
    return RMPair(**values, origin=str(row.get("origin") or row.get("kind") or where),
                  split=split if split in SPLITS else None)


def _text_field(row: dict, name: str, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        if key in row:
            if not isinstance(row[key], str):
                raise PairsError(f"{where}: '{key}' must be a string, got {type(row[key]).__name__}. "
                                 f"Hint: e.g. {EXAMPLE}.")
            return row[key]
    named = " or ".join(f"'{k}'" for k in keys)
    raise PairsError(f"{where}: each line needs a string field {named} (got {sorted(row)}). Hint: e.g. {EXAMPLE}.")


def heldout_split(pairs: list[RMPair], heldout_pairs: int, seed: int) -> list[RMPair]:
    """Marks every pair train or heldout. Whole prompts are held out (a seeded shuffle of them) until about
    `heldout_pairs` pairs are, never all of them: the held-out check then sees only unseen prompts."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    random.Random(seed * 1_000_003 + 65_537).shuffle(prompts)
    per_prompt = Counter(p.prompt for p in pairs)
    held, count = set(), 0
    for prompt in prompts:
        if count >= heldout_pairs or count + per_prompt[prompt] >= len(pairs):
            break
        held.add(prompt)
        count += per_prompt[prompt]
    return [replace(p, split="heldout" if p.prompt in held else "train") for p in pairs]


def write_pairs(path: Path, pairs: list[RMPair]) -> None:
    """Written whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p.to_json()) + "\n" for p in pairs))
    os.replace(tmp, path)
