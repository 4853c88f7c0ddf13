"""Inputs without answers, for a distillation teacher to label (`tinytitan distill --unlabelled FILE`).

Shapes, by the file's name:
- `.txt`: one input per line (blank lines are not inputs);
- `.jsonl`: one object per line with the input in `prompt`, `input` or `text`;
- `.csv` / `.tsv`: a header row; the input in `--input-column` (default: `input`, `prompt` or `text`).

A file of inputs must hold inputs only: a row with an answer (a `completion`, `output` or `messages`
field; a CSV column other than the input with a value) is refused with its line, since its answer
belongs in the labelled training file, where it is trained on as written rather than replaced by the
teacher's. Repeated inputs are kept once and counted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import TinyTitanError

INPUT_KEYS = ("prompt", "input", "text")
ANSWER_KEYS = ("completion", "output", "messages", "answer", "label")


@dataclass
class Unlabelled:
    inputs: list[str]
    repeats: int = 0  # inputs given more than once (kept once)
    source: str = ""


def read_unlabelled(path: str | Path, input_column: str | None = None, encoding: str = "utf-8") -> Unlabelled:
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"--unlabelled {path}: no such file (expected .txt, .jsonl, .csv or .tsv inputs)")
    try:
        text = path.read_bytes().decode(encoding).lstrip("\ufeff")
    except (UnicodeDecodeError, LookupError) as error:
        raise TinyTitanError(f"--unlabelled {path}: cannot read it as {encoding} text ({error})") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        raw = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    elif suffix == ".jsonl":
        raw = list(_jsonl_inputs(path, text))
    elif suffix in (".csv", ".tsv"):
        raw = list(_table_inputs(path, text, "\t" if suffix == ".tsv" else ",", input_column))
    else:
        raise TinyTitanError(f"--unlabelled {path}: expected a .txt (one input per line), .jsonl, .csv or .tsv "
                             f"file, not {suffix or 'a file without an extension'}")
    if not raw:
        raise TinyTitanError(f"--unlabelled {path}: no inputs in it")
    seen: set[str] = set()
    inputs = []
    for _, value in raw:
        if value not in seen:
            seen.add(value)
            inputs.append(value)
    return Unlabelled(inputs, repeats=len(raw) - len(inputs), source=str(path))


def _jsonl_inputs(path: Path, text: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise TinyTitanError(f"{path}:{number}: not a JSON line ({error.args[0]})") from None
        if not isinstance(row, dict):
            raise TinyTitanError(f"{path}:{number}: expected an object with the input in "
                                 f"{' / '.join(INPUT_KEYS)}, got {type(row).__name__}")
        answers = [key for key in ANSWER_KEYS if key in row]
        if answers:
            raise TinyTitanError(f"{path}:{number}: this row has a label ({answers[0]!r}); a file of unlabelled "
                                 f"inputs holds inputs only (labelled rows go in the training file)")
        keys = [key for key in INPUT_KEYS if key in row]
        if not keys or not isinstance(row[keys[0]], str) or not row[keys[0]].strip():
            raise TinyTitanError(f"{path}:{number}: no input (expected a non-empty text in "
                                 f"{' / '.join(INPUT_KEYS)})")
        others = [key for key in row if key not in (keys[0], "system")]
        if others:
            raise TinyTitanError(f"{path}:{number}: unexpected field {others[0]!r} (an unlabelled row holds its "
                                 f"input in {keys[0]!r} and nothing else)")
        yield number, row[keys[0]].strip()


def _table_inputs(path: Path, text: str, delimiter: str, input_column: str | None):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    column = input_column or next((name for name in INPUT_KEYS if name in header), None)
    if column not in header:
        wanted = repr(input_column) if input_column else " / ".join(INPUT_KEYS)
        raise TinyTitanError(f"{path}: no input column {wanted} in its header ({', '.join(header) or 'empty'}); "
                             f"name it with --input-column")
    try:
        for number, row in enumerate(reader, start=2):
            labelled = [name for name, value in row.items() if name != column and (value or "").strip()]
            if labelled:
                raise TinyTitanError(f"{path}:{number}: this row has a label ({labelled[0]} = "
                                     f"{row[labelled[0]].strip()[:40]!r}); a file of unlabelled inputs holds "
                                     f"inputs only (labelled rows go in the training file)")
            value = (row[column] or "").strip()
            if not value:
                raise TinyTitanError(f"{path}:{number}: the input ({column}) is empty")
            yield number, value
    except csv.Error as error:
        raise TinyTitanError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} ({error})") from None
