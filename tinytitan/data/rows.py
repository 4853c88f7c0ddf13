"""Read the user's dataset file into `Example`s, rejecting bad rows by `file:line: reason`.

Shapes, detected per file:
- JSONL `{"messages": [{"role", "content"}, ...]}`: the last (assistant) message is the completion;
- JSONL `{"prompt", "completion"}` or `{"input", "output"}`, each with an optional `"system"`;
- CSV/TSV with a header (or `columns`): read by `tables.py`.
A completion that is a JSON object or array is written in its one canonical form
(`json_values.canonical_completion`). Fields may be absent from a row (absent stays absent: it is
not an empty string), and values may be text, numbers, booleans, null, lists and nested objects.

Rows are rejected for: bad JSON (NaN and Infinity included: JSON has neither), nesting deeper
than `json_values.MAX_DEPTH`, a missing or wrong-typed field, an empty completion, bytes the file's
encoding cannot decode (UTF-8 unless `DataSpec.encoding` says otherwise), and exact duplicates.
Blank lines are not rows; a UTF-8 byte-order mark and CRLF line ends are read as what they are.
Splitting the rows is `splits.py`'s job, tokenizing them `tokens.py`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tinytitan.data.encodings import check_encoding, decode, decode_line, is_wide, undecodable
from tinytitan.data.examples import Example, LoadReport, Rejected, RowError
from tinytitan.data.json_values import canonical_completion, json_key_order, parse_json, type_name
from tinytitan.data.delimited import load_table
from tinytitan.errors import TinyTitanError
from tinytitan.model.chat_format import Message

SHAPES = ("messages", "prompt/completion", "input/output", "csv")


@dataclass(frozen=True)
class DataSpec:
    """How to read a file. Only CSV/TSV need columns; `system` applies to rows that have none."""

    format: str = "auto"  # auto | jsonl | csv | tsv
    input_column: str | None = None
    output_columns: tuple[str, ...] = ()
    input_template: str | None = None
    columns: tuple[str, ...] = ()  # names for a CSV/TSV without a header row
    system: str | None = None
    encoding: str = "utf-8"  # any Python codec name, or "cesu-8" (UTF-8 with surrogate pairs: `encodings`)


def load_examples(path: str | Path, spec: DataSpec = DataSpec(), duplicates: str = "reject",
                  key_order: Sequence[str] = ()) -> LoadReport:
    """Read every row of `path`. A row repeating an earlier (prompt, completion) pair is rejected
    (`duplicates="reject"`: in training it only over-weights that row) or kept and counted
    (`"keep"`: a test set is scored as published; banking77's official test file repeats a message).
    JSON completions write their top-level keys in `key_order` (the training file's order, so that
    validation and test targets are spelled as the training ones), then in first-seen order."""
    check_encoding(spec.encoding)
    if duplicates not in ("reject", "keep"):
        raise ValueError(f"duplicates must be 'reject' or 'keep', not {duplicates!r}")
    path = Path(path)
    if not path.is_file():
        raise TinyTitanError(f"{path}: no such file (expected a JSONL, CSV or TSV dataset)")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (spreadsheet exports) is not data
        raw = raw[3:]
    if is_wide(spec.encoding):  # UTF-16/32: lines are not byte lines, so the whole file is decoded first
        raw = decode(raw, path, spec.encoding).encode("utf-8", "surrogatepass")
        spec = dataclasses.replace(spec, encoding="utf-8")
    if not raw.strip():
        raise TinyTitanError(f"{path}: the file is empty (expected a JSONL, CSV or TSV dataset)")
    fmt = spec.format if spec.format != "auto" else _detect_format(path, raw)
    if fmt == "jsonl":
        report = _load_jsonl(path, raw, spec, key_order)
    elif fmt in ("csv", "tsv"):
        report = load_table(path, raw, spec, "\t" if fmt == "tsv" else ",")
    else:
        raise TinyTitanError(f"format must be auto, jsonl, csv or tsv, not {fmt!r}")
    _check_duplicates(report, keep=duplicates == "keep")
    return report


def _detect_format(path: Path, raw: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    first = raw.lstrip()[:1]
    if first == b"{":
        return "jsonl"
    raise TinyTitanError(f"{path}: cannot tell the format from the name; name it .jsonl, .csv or .tsv "
                         f"or pass --format")


def _load_jsonl(path: Path, raw: bytes, spec: DataSpec, key_order: Sequence[str] = ()) -> LoadReport:
    rows = 0
    shape = None
    parsed: list[tuple[str, dict]] = []
    rejected: list[Rejected] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        rows += 1
        source = f"{path}:{number}"
        try:
            text = decode_line(line, spec.encoding)
        except UnicodeDecodeError as error:
            rejected.append(Rejected(source, undecodable(error, spec.encoding)))
            continue
        try:
            row = parse_json(text)
        except ValueError as error:
            rejected.append(Rejected(source, str(error)))
            continue
        if not isinstance(row, dict):
            rejected.append(Rejected(source, f"expected a JSON object, got {type(row).__name__}"))
            continue
        row_shape = _row_shape(row)
        if row_shape is None:
            rejected.append(Rejected(source, 'expected "messages", "prompt" + "completion" or '
                                             '"input" + "output" fields'))
            continue
        shape = shape or row_shape
        if row_shape != shape:
            rejected.append(Rejected(source, f"row is {row_shape} but the file is {shape}"))
            continue
        parsed.append((source, row))
    key_order = json_key_order((row.get("completion", row.get("output")) for _, row in parsed), key_order)
    examples = []
    for source, row in parsed:
        try:
            examples.append(_jsonl_example(row, shape, source, key_order, spec.system))
        except RowError as error:
            rejected.append(Rejected(source, str(error)))
    return LoadReport(path, shape or "unknown", rows, examples, _ordered(rejected), json_keys=key_order)


def _row_shape(row: dict) -> str | None:
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        return "prompt/completion"
    if "input" in row or "output" in row:
        return "input/output"
    return None


def _jsonl_example(row: dict, shape: str, source: str, key_order: list[str], system: str | None) -> Example:
    if shape == "messages":
        example = _messages_example(row["messages"], source)
        if system and example.messages[0].role != "system":
            example = Example((Message("system", system), *example.messages), example.completion, source)
        return example
    prompt_key, completion_key = ("prompt", "completion") if shape == "prompt/completion" else ("input", "output")
    for key in (prompt_key, completion_key):
        if key not in row:
            raise RowError(f'missing field "{key}"')
    prompt = row[prompt_key]
    if not isinstance(prompt, str):
        raise RowError(f'"{prompt_key}" must be text, got {type_name(prompt)}')
    if not prompt.strip():
        raise RowError(f'"{prompt_key}" is empty')
    completion = canonical_completion(row[completion_key], key_order, completion_key)
    row_system = row.get("system", system)
    if row_system is not None and not isinstance(row_system, str):
        raise RowError(f'"system" must be text, got {type_name(row_system)}')
    messages = ([Message("system", row_system)] if row_system else []) + [Message("user", prompt)]
    return Example(tuple(messages), completion, source)


def _messages_example(messages, source: str) -> Example:
    if not isinstance(messages, list) or not messages:
        raise RowError('"messages" must be a non-empty list of {"role", "content"} objects')
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(f"messages[{index}] must be an object, got {type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise RowError(f"messages[{index}].role must be system, user or assistant, not {role!r}")
        if not isinstance(content, str):
            raise RowError(f"messages[{index}].content must be text, got {type_name(content)}")
        parsed.append(Message(role, content))
    if parsed[-1].role != "assistant":
        raise RowError("the last message must be the assistant's reply (the completion)")
    if not parsed[-1].content.strip():
        raise RowError("the completion (last assistant message) is empty")
    turns = [m for m in parsed[:-1] if m.role != "system"]
    if any(m.role == "system" for m in parsed[1:]):
        raise RowError("a system message may only come first")
    expected = ["user", "assistant"] * len(turns)
    if not turns or [m.role for m in turns] != expected[:len(turns)] or turns[-1].role != "user":
        raise RowError("messages must alternate user/assistant, starting and ending the prompt with user")
    return Example(tuple(parsed[:-1]), parsed[-1].content.strip(), source)


def _check_duplicates(report: LoadReport, keep: bool) -> None:
    seen: dict[tuple[str, str], str] = {}
    completions: dict[str, str] = {}
    kept, conflicts = [], set()
    for example in report.examples:
        pair = (example.key, example.completion)
        if pair in seen:
            if not keep:
                report.rejected.append(Rejected(example.source, f"duplicate of line {seen[pair].rsplit(':', 1)[1]}"))
                continue
            report.repeats += 1
        seen.setdefault(pair, example.source)
        if completions.setdefault(example.key, example.completion) != example.completion:
            conflicts.add(example.key)
        kept.append(example)
    report.examples = kept
    report.rejected = _ordered(report.rejected)
    report.conflicts = len(conflicts)


def _ordered(rejected: list[Rejected]) -> list[Rejected]:
    def line(r: Rejected) -> int:
        tail = r.source.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    return sorted(rejected, key=line)
