"""Customer message -> one of 77 intents, from PolyAI's banking77 (CC-BY-4.0).

The official train file is split 90/10 into train and validation by a hash of the message, with
repeated (message, intent) pairs kept once and counted; the official test file (3,080 messages) is
the test set, untouched.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.tasks import drop_repeats, need_file, split_name, write_jsonl

SOURCES = ("train", "test")


def _read(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
                raise TinyTitanError(f"{path}: expected the columns text,category")
            rows = []
            for number, row in enumerate(reader, start=2):
                text, label = (row["text"] or "").strip(), (row["category"] or "").strip()
                if not text or not label:
                    raise TinyTitanError(f"{path}:{number}: empty text or category")
                rows.append({"prompt": text, "completion": label})
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TinyTitanError(f"{path}: cannot read it as a UTF-8 CSV ({error})") from None


def prepare(sources: dict, out: Path, *, max_train: int = 0, max_val: int = 0, val_fraction: float = 0.1) -> dict:
    train_rows = _read(need_file(sources, "train", "banking77 train.csv"))
    test_rows = _read(need_file(sources, "test", "banking77 test.csv"))
    splits = {"train": [], "val": []}
    unique, duplicates = drop_repeats(train_rows)  # the official train file repeats a few (message, intent) pairs
    for row in unique:
        part = split_name(row["prompt"], (1 - val_fraction, val_fraction, 0.0))
        splits["train" if part == "train" else "val"].append(row)
    if max_train:
        splits["train"] = splits["train"][:max_train]
    if max_val:
        splits["val"] = splits["val"][:max_val]
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    counts["test"] = write_jsonl(out / "test.jsonl", test_rows)
    counts["labels"] = len({r["completion"] for r in train_rows})
    return {**counts, "duplicates_dropped": duplicates}
