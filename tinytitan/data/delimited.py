"""CSV/TSV datasets: a header row (or `DataSpec.columns`), an input column (or an input template over
the columns) and one output column (the completion is its text) or several (a JSON object of them).
A bad row is rejected by `file:line: reason`; bad columns or a bad template are one-line errors."""

from __future__ import annotations

import csv
import io
import string
from pathlib import Path
from typing import TYPE_CHECKING

from tinytitan.data.encodings import ENCODING_HINT, decode_line, encoding_name
from tinytitan.data.examples import Example, LoadReport, Rejected, RowError
from tinytitan.data.json_values import canonical_completion
from tinytitan.errors import TinyTitanError
from tinytitan.model.chat_format import Message

if TYPE_CHECKING:
    from tinytitan.data.rows import DataSpec


def load_table(path: Path, raw: bytes, spec: DataSpec, delimiter: str) -> LoadReport:
    """Every row of a CSV (`delimiter` ",") or TSV ("\\t") file's bytes."""
    # bad bytes become marked (surrogate escapes) and their rows are rejected by line
    text = "\n".join(_escaped(line, spec.encoding) for line in raw.split(b"\n"))
    csv.field_size_limit(2**31 - 1)  # long documents are data, not errors
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return _read_table(path, reader, spec)
    except csv.Error as error:
        raise TinyTitanError(f"{path}:{reader.line_num}: unreadable CSV ({error})") from None


def _escaped(line: bytes, encoding: str) -> str:
    try:
        return decode_line(line, encoding)
    except UnicodeDecodeError:
        return line.decode("utf-8" if encoding == "cesu-8" else encoding, errors="surrogateescape")


def _read_table(path: Path, reader, spec: DataSpec) -> LoadReport:
    header = list(spec.columns) if spec.columns else next(reader, [])
    if len(set(header)) != len(header) or not all(header):
        raise TinyTitanError(f"{path}:1: the header needs unique, non-empty column names, got {header}")
    input_column, output_columns = _table_columns(path, header, spec)
    rows = 0
    rejected: list[Rejected] = []
    examples = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        rows += 1
        source = f"{path}:{reader.line_num}"
        bad = next((ch for value in values for ch in value if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:
            rejected.append(Rejected(source, f"not valid {encoding_name(spec.encoding)} "
                                             f"(byte 0x{ord(bad) - 0xDC00:02X}); {ENCODING_HINT}"))
            continue
        if len(values) != len(header):
            rejected.append(Rejected(source, f"has {len(values)} columns, the header has {len(header)}"))
            continue
        row = dict(zip(header, values))
        try:
            prompt = spec.input_template.format(**row) if spec.input_template else row[input_column]
            if not prompt.strip():
                raise RowError(f'input column "{input_column}" is empty')
            if len(output_columns) == 1:
                completion = canonical_completion(row[output_columns[0]], name=output_columns[0])
            else:
                outputs = {c: row[c] for c in output_columns}
                if not any(v.strip() for v in outputs.values()):
                    raise RowError(f"the output columns ({', '.join(output_columns)}) are all empty")
                completion = canonical_completion(outputs, output_columns)
        except RowError as error:
            rejected.append(Rejected(source, str(error)))
            continue
        system = [Message("system", spec.system)] if spec.system else []
        examples.append(Example(tuple(system + [Message("user", prompt.strip())]), completion, source))
    json_keys = list(output_columns) if len(output_columns) > 1 else []
    return LoadReport(path, "csv", rows, examples, rejected, json_keys=json_keys)


def _table_columns(path: Path, header: list[str], spec: DataSpec) -> tuple[str | None, list[str]]:
    def need(column: str, flag: str) -> str:
        if column not in header:
            raise TinyTitanError(f"{path}: no column {column!r} ({flag}); the columns are {', '.join(header)}")
        return column

    input_column = None
    if spec.input_template:
        fields = _template_fields(spec.input_template)
        if not fields or any(not f.isidentifier() and f not in header for f in fields):
            raise TinyTitanError(f"--input-template {spec.input_template!r}: name columns in braces, "
                                 f"like \"{{{header[0]}}}\"")
        missing = [c for c in fields if c not in header]
        if missing:
            raise TinyTitanError(f"{path}: --input-template names {', '.join(missing)}, not columns of the file "
                                 f"({', '.join(header)})")
    else:
        guess = spec.input_column or next((c for c in ("input", "text", "prompt") if c in header), None)
        if guess is None:
            raise TinyTitanError(f"{path}: say which column is the input (--input-column); the columns are "
                                 f"{', '.join(header)}")
        input_column = need(guess, "--input-column")
    outputs = [need(c, "--output-columns") for c in spec.output_columns] or \
        [c for c in header if c != input_column and c not in _template_fields(spec.input_template or "")]
    if not outputs:
        raise TinyTitanError(f"{path}: no output column (--output-columns); the columns are {', '.join(header)}")
    return input_column, outputs


def _template_fields(template: str) -> list[str]:
    """Column names used by an input template; a malformed template is a user error."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise TinyTitanError(f"--input-template {template!r}: {error}") from None
    if any(name == "" or name.isdigit() for name in names):
        raise TinyTitanError(f"--input-template {template!r}: name the columns in braces, not {{}} or {{0}}")
    return names
