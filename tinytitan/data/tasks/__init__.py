"""Task datasets for recipes: each module turns a public dataset into prompt/completion rows.

A task module has `prepare(sources: dict[str, Path], out: Path, **options) -> dict` that writes
`train.jsonl`, `val.jsonl` and `test.jsonl` into `out` and returns counts, and may have
`score(outputs, examples) -> dict` for metrics the generic task kinds do not cover (chess: legal
moves and mates; Snips NLU: the vendors' mean slot F1), with `HEADLINE` naming its headline figure,
`per_example` its per-row verdicts and `PER_EXAMPLE` any other per-row lists it returns. Splits are by a hash of the prompt (or of a group key), so they never change
between runs and identical prompts never straddle splits.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from tinytitan.data.splits import hash_split
from tinytitan.errors import TinyTitanError

TASKS = {
    "ingredients": "tinytitan.data.tasks.ingredients",
    "banking77": "tinytitan.data.tasks.banking77",
    "bedtime-stories": "tinytitan.data.tasks.stories",
    "chess-mate-in-one": "tinytitan.data.tasks.chess_mates",
    "snips-nlu": "tinytitan.data.tasks.snips_nlu",
}


def drop_repeats(rows: list[dict]) -> tuple[list[dict], int]:
    """The rows with each (prompt, completion) pair kept once, in order, and how many repeats were dropped.

    The data check refuses exact duplicates; a public dataset that repeats a labelled row says nothing
    new the second time, so task preparation keeps the first and counts the rest.
    """
    seen, kept = set(), []
    for row in rows:
        key = (row["prompt"], json.dumps(row["completion"], sort_keys=True, ensure_ascii=False))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def task_module(name: str):
    if name not in TASKS:
        raise TinyTitanError(f"unknown task {name!r} (known: {', '.join(TASKS)}; or give data files directly)")
    return importlib.import_module(TASKS[name])


def write_jsonl(path: Path, rows) -> int:
    """Rows as JSON lines, the file whole or not at all (`files.atomic_file`); returns how many."""
    from tinytitan.files import atomic_file

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1

    atomic_file(Path(path), write)
    return count


def split_name(key: str, ratios=(0.8, 0.1, 0.1), seed: int = 0) -> str:
    """train | val | test for a key, stable across runs: `data.hash_split` of "seed:key". The text hashed is
    not `data.split_of`'s ("seed\\0" + the prompt's messages as JSON), so a task's rows split differently
    from the same rows given as a file; unifying the two would move rows between the splits of every
    prepared run, so each keeps its own."""
    return hash_split(f"{seed}:{key}", ratios)


def write_with_test_set(out: Path, train_rows: list[dict], test_rows: list[dict], *, val_fraction: float,
                        max_train: int = 0, max_val: int = 0) -> dict:
    """train/val/test JSONL for a data set with an official test set: the training rows, repeats kept
    once, split into train and validation by a hash of the prompt (capped at `max_train` / `max_val`
    rows, 0 = all); the test rows as published. Returns the counts and `duplicates_dropped`."""
    unique, duplicates = drop_repeats(train_rows)
    splits: dict[str, list] = {"train": [], "val": []}
    for row in unique:
        part = split_name(row["prompt"], (1 - val_fraction, val_fraction, 0.0))
        splits["train" if part == "train" else "val"].append(row)
    if max_train:
        splits["train"] = splits["train"][:max_train]
    if max_val:
        splits["val"] = splits["val"][:max_val]
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    counts["test"] = write_jsonl(out / "test.jsonl", test_rows)
    return {**counts, "duplicates_dropped": duplicates}


def need_file(sources: dict, name: str, what: str) -> Path:
    path = sources.get(name)
    if path is None:
        raise TinyTitanError(f"the recipe gives no `{name}` source ({what})")
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such file ({what})")
    return path
