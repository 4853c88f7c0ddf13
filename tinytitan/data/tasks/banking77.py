"""Customer message -> one of 77 intents, from PolyAI's banking77 (CC-BY-4.0).

The official train file is split 90/10 into train and validation by a hash of the message, with
repeated (message, intent) pairs kept once and counted; the official test file (3,080 messages) is
the test set, untouched.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.data.tasks import need_file, write_with_test_set

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
    # the official train file repeats a few (message, intent) pairs: kept once
    counts = write_with_test_set(out, train_rows, test_rows, val_fraction=val_fraction, max_train=max_train,
                                 max_val=max_val)
    duplicates = counts.pop("duplicates_dropped")
    return {**counts, "labels": len({r["completion"] for r in train_rows}), "duplicates_dropped": duplicates}
