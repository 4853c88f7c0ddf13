"""The report's samples and worst errors, each row shown as what differs: for JSON tasks (the references
are JSON objects) one line per field, the union of the reference's and the output's keys, with its
verdict (right, wrong value, missing, extra) and an output that is not a JSON object flagged; for
label and text tasks the whole answer, expected vs got. Read from the per-example files the
evaluation writes (`evaluate/scoring.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tinytitan.evaluate.metrics import chrf, parse_record, same_json

SHOWN_SAMPLES, SHOWN_ERRORS = 3, 8
INPUT_CHARS = 600  # a longer input is cut: the page is for reading what went wrong, not for the data

# a field's verdict -> the words the report gives it
VERDICTS = {"ok": "right", "wrong": "wrong value", "missing": "missing", "extra": "not expected",
            "unparsed": "not a JSON object", "unlike": "chrF below 50"}


@dataclass
class FieldDiff:
    """One field of one row: the expected and produced values as shown (JSON for JSON tasks), None
    where that side has no such field."""

    name: str
    expected: str | None
    got: str | None
    verdict: str  # a key of VERDICTS

    @property
    def wrong(self) -> bool:
        return self.verdict != "ok"

    @property
    def why(self) -> str:
        return VERDICTS[self.verdict]


@dataclass
class Sample:
    group: str  # "sample", "worst error" or "least like the reference"
    row: int  # 1-based, in the examples file
    prompt: str
    wrong: bool
    fields: list[FieldDiff]


@dataclass
class Samples:
    """A document block: the rows shown, by field for JSON tasks."""

    rows: list[Sample]
    by_field: bool
    verdicts: tuple[str, str]  # what a right and a wrong row are called
    kind: ClassVar[str] = "samples"


def read_examples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_wrong(record: dict) -> bool:
    """A row scored wrong; free text has no right answer, so "wrong" there is chrF below 50."""
    return not record.get("correct", record.get("chrf", 100) >= 50)


def shown_samples(records: list[dict], free_text: bool) -> Samples:
    """The first rows, then the worst errors (least like the reference by chrF), as field diffs."""
    numbered = list(enumerate(records, start=1))
    wrong = [(n, r) for n, r in numbered[SHOWN_SAMPLES:] if is_wrong(r)]
    wrong.sort(key=lambda item: chrf(item[1]["output"], item[1]["reference"]))
    by_field = all(parse_record(r["reference"]) is not None for r in records)
    error_group = "least like the reference" if free_text else "worst error"
    chosen = [("sample", item) for item in numbered[:SHOWN_SAMPLES]]
    chosen += [(error_group, item) for item in wrong[:SHOWN_ERRORS]]
    rows = [Sample(group, n, _cut(record["prompt"]), is_wrong(record),
                   field_diffs(record) if by_field else [answer_diff(record, free_text)])
            for group, (n, record) in chosen]
    return Samples(rows, by_field, ("chrF 50 or more", "chrF below 50") if free_text else ("right", "wrong"))


def field_diffs(record: dict) -> list[FieldDiff]:
    """Per field of a JSON row: the reference's keys in order, then the output's extra keys."""
    reference, output = parse_record(record["reference"]), parse_record(record["output"])
    assert reference is not None, "field diffs are for rows whose reference is a JSON object"
    if output is None:
        return [FieldDiff("(output)", _shown(reference), record["output"], "unparsed")]
    diffs = []
    for name in [*reference, *(key for key in output if key not in reference)]:
        if name not in output:
            verdict = "missing"
        elif name not in reference:
            verdict = "extra"
        else:
            verdict = "ok" if same_json(reference[name], output[name]) else "wrong"
        diffs.append(FieldDiff(name, _shown(reference[name]) if name in reference else None,
                               _shown(output[name]) if name in output else None, verdict))
    return diffs


def answer_diff(record: dict, free_text: bool) -> FieldDiff:
    """A label or free-text row as one field: the whole answer. With label likelihood on, the label
    picked is what was scored, so it is what the row shows."""
    got = record.get("label", record["output"])
    return FieldDiff("answer", record["reference"], got,
                     "ok" if not is_wrong(record) else "unlike" if free_text else "wrong")


def _shown(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cut(text: str) -> str:
    return text if len(text) <= INPUT_CHARS else text[:INPUT_CHARS] + "…"
