"""Training data: read the user's file, reject bad rows by `file:line: reason`, split, tokenize.

Shapes, detected per file:
- JSONL `{"messages": [{"role", "content"}, ...]}`: the last (assistant) message is the completion;
- JSONL `{"prompt", "completion"}` or `{"input", "output"}`, each with an optional `"system"`;
- CSV/TSV with a header (or `columns`): an input column (or an input template over the columns)
  and one output column (text) or several (a JSON object of them).
A completion that is a JSON object or array is serialized canonically: compact, top-level keys in
the order they first appear in the training file (`key_order` carries that order to the
validation and test files), nested keys sorted, so every target has exactly one form. Fields may
be absent from a row (absent stays absent: it is not an empty string), and values may be text,
numbers, booleans, null, lists and nested objects.

Rows are rejected for: bad JSON (NaN and Infinity included: JSON has neither), nesting deeper
than `MAX_DEPTH`, a missing or wrong-typed field, an empty completion, bytes the file's encoding
cannot decode (UTF-8 unless `DataSpec.encoding` says otherwise), and exact duplicates. Blank lines
are not rows; a UTF-8 byte-order mark and CRLF line ends are read as what they are. A split of one file into train/val/test is
by hash of the prompt, so it is deterministic and the same input never lands in two splits.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.model.chat_format import END_OF_TURN, Message, encode_chat
from tinytitan.errors import TinyTitanError
from tinytitan.data.structured import canonical_json

SHAPES = ("messages", "prompt/completion", "input/output", "csv")
MAX_DEPTH = 64  # lists and objects nested deeper than this in one row are refused
MAX_DIGITS = 20  # an integer of more digits is refused (the constrained decoder writes at most this many)
ENCODING_HINT = "say the file's encoding with --encoding (a recipe: encoding = \"...\"), e.g. latin-1, cp1252, cesu-8"


@dataclass(frozen=True)
class Example:
    messages: tuple[Message, ...]  # the prompt: optional system, then user/assistant turns ending in user
    completion: str
    source: str  # "file:line"

    @property
    def key(self) -> str:
        """The prompt as one string: for the split hash, duplicates and leakage."""
        return json.dumps([[m.role, m.content] for m in self.messages], ensure_ascii=False)

    @property
    def input_text(self) -> str:
        """What the model answers: the last user message (an extractor copies its words)."""
        return self.messages[-1].content


@dataclass
class Rejected:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class LoadReport:
    path: Path
    shape: str
    rows: int
    examples: list[Example]
    rejected: list[Rejected]
    conflicts: int = 0  # prompts that appear with different completions (kept; reported)
    repeats: int = 0  # rows repeating an earlier (prompt, completion) pair, kept (`duplicates="keep"`)
    json_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataSpec:
    """How to read a file. Only CSV/TSV need columns; `system` applies to rows that have none."""

    format: str = "auto"  # auto | jsonl | csv | tsv
    input_column: str | None = None
    output_columns: tuple[str, ...] = ()
    input_template: str | None = None
    columns: tuple[str, ...] = ()  # names for a CSV/TSV without a header row
    system: str | None = None
    encoding: str = "utf-8"  # any Python codec name, or "cesu-8" (UTF-8 with surrogate pairs, see `decode`)


class _RowError(Exception):
    pass


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
    if _wide(spec.encoding):  # UTF-16/32: lines are not byte lines, so the whole file is decoded first
        raw = decode(raw, path, spec.encoding).encode("utf-8", "surrogatepass")
        spec = dataclasses.replace(spec, encoding="utf-8")
    if not raw.strip():
        raise TinyTitanError(f"{path}: the file is empty (expected a JSONL, CSV or TSV dataset)")
    fmt = spec.format if spec.format != "auto" else _detect_format(path, raw)
    if fmt == "jsonl":
        report = _load_jsonl(path, raw, spec, key_order)
    elif fmt in ("csv", "tsv"):
        report = _load_table(path, raw, spec, "\t" if fmt == "tsv" else ",")
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
            rejected.append(Rejected(source, _undecodable(error, spec.encoding)))
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
    key_order = _json_key_order((row.get("completion", row.get("output")) for _, row in parsed), key_order)
    examples = []
    for source, row in parsed:
        try:
            examples.append(_jsonl_example(row, shape, source, key_order, spec.system))
        except _RowError as error:
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
            raise _RowError(f'missing field "{key}"')
    prompt = row[prompt_key]
    if not isinstance(prompt, str):
        raise _RowError(f'"{prompt_key}" must be text, got {_type_name(prompt)}')
    if not prompt.strip():
        raise _RowError(f'"{prompt_key}" is empty')
    completion = canonical_completion(row[completion_key], key_order, completion_key)
    row_system = row.get("system", system)
    if row_system is not None and not isinstance(row_system, str):
        raise _RowError(f'"system" must be text, got {_type_name(row_system)}')
    messages = ([Message("system", row_system)] if row_system else []) + [Message("user", prompt)]
    return Example(tuple(messages), completion, source)


def _messages_example(messages, source: str) -> Example:
    if not isinstance(messages, list) or not messages:
        raise _RowError('"messages" must be a non-empty list of {"role", "content"} objects')
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _RowError(f"messages[{index}] must be an object, got {_type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise _RowError(f"messages[{index}].role must be system, user or assistant, not {role!r}")
        if not isinstance(content, str):
            raise _RowError(f"messages[{index}].content must be text, got {_type_name(content)}")
        parsed.append(Message(role, content))
    if parsed[-1].role != "assistant":
        raise _RowError("the last message must be the assistant's reply (the completion)")
    if not parsed[-1].content.strip():
        raise _RowError("the completion (last assistant message) is empty")
    turns = [m for m in parsed[:-1] if m.role != "system"]
    if any(m.role == "system" for m in parsed[1:]):
        raise _RowError("a system message may only come first")
    expected = ["user", "assistant"] * len(turns)
    if not turns or [m.role for m in turns] != expected[:len(turns)] or turns[-1].role != "user":
        raise _RowError("messages must alternate user/assistant, starting and ending the prompt with user")
    return Example(tuple(parsed[:-1]), parsed[-1].content.strip(), source)


def canonical_completion(value, key_order: Sequence[str] = (), name: str = "completion") -> str:
    """Text stays text (stripped); a JSON object/array becomes its one canonical compact form:
    top-level keys in `key_order` (others after them, sorted), nested keys sorted, no whitespace."""
    if isinstance(value, str):
        if not value.strip():
            raise _RowError(f'"{name}" is empty')
        _check_value(value, name)
        return value.strip()
    if isinstance(value, dict):
        if not value:
            raise _RowError(f'"{name}" is an empty object')
        _check_value(value, name)
        order = [k for k in key_order if k in value] + sorted(k for k in value if k not in key_order)
        return canonical_json({k: _sorted_json(value[k]) for k in order})
    if isinstance(value, list):
        if not value:
            raise _RowError(f'"{name}" is an empty list')
        _check_value(value, name)
        return canonical_json(_sorted_json(value))
    raise _RowError(f'"{name}" must be text or a JSON object, got {_type_name(value)}')


SPACE_MARK = "\u2581"  # "▁": SentencePiece's mark for a space; Gemma's tokenizer reads it, and writes it, as " "


def _check_value(value, where: str) -> None:
    """What a model cannot write, refused by name: lone surrogates, huge integers, "▁" (read as a space)."""
    from tinytitan.data.structured import check_text

    try:
        check_text(value, where)
    except TinyTitanError as error:
        raise _RowError(str(error)) from None
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            stack += [(v, f"{at}.{k}") for k, v in item.items()] + [(k, f"{at} (a key)") for k in item]
        elif isinstance(item, list):
            stack += [(v, f"{at}[{i}]") for i, v in enumerate(item)]
        elif isinstance(item, str) and SPACE_MARK in item:
            raise _RowError(f'{at}: holds "{SPACE_MARK}" (U+2581), which Gemma\'s tokenizer reads and writes as a '
                            f"space, so a model cannot write it; replace it")
        elif isinstance(item, int) and not isinstance(item, bool) and len(str(abs(item))) > MAX_DIGITS:
            raise _RowError(f"{at}: an integer of {len(str(abs(item)))} digits (at most {MAX_DIGITS}; "
                            f"write it as text)")


def parse_json(text: str):
    """`json.loads` for data: NaN/Infinity (not JSON), duplicate keys (JSON keeps the last, silently)
    and nesting deeper than MAX_DEPTH raise ValueError with a one-line reason."""
    def constant(name: str):
        raise ValueError(f"{name} is not a JSON value")

    def pairs(items: list) -> dict:
        record = dict(items)
        if len(record) != len(items):
            seen = set()
            key = next(k for k, _ in items if k in seen or seen.add(k))
            raise ValueError(f"the key {key!r} appears twice in one object")
        return record

    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise ValueError(f"nested {depth} deep (at most {MAX_DEPTH})")
    try:
        return json.loads(text, parse_constant=constant, object_pairs_hook=pairs)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad JSON ({error.msg} at column {error.colno})") from None
    except ValueError as error:
        raise ValueError(f"bad JSON ({error})") from None


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (before parsing, which recurses)."""
    import re

    deepest = depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _sorted_json(value):
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(v) for v in value]
    return value


def _json_key_order(values, start: Sequence[str] = ()) -> list[str]:
    """`start`, then the top-level keys of the JSON objects among `values` in first-seen order."""
    order: dict[str, None] = dict.fromkeys(start)
    for value in values:
        if isinstance(value, dict):
            order.update((k, None) for k in value if k not in order)
    return list(order)


# ---------------------------------------------------------------------------------------------
# text encodings


def check_encoding(encoding: str) -> None:
    import codecs

    if encoding != "cesu-8":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise TinyTitanError(f"encoding {encoding!r} is not one Python knows (e.g. utf-8, latin-1, cp1252, "
                                 f"utf-16, or cesu-8)") from None


def decode_line(raw: bytes, encoding: str = "utf-8") -> str:
    """Bytes as text in `encoding`. "cesu-8" is UTF-8 whose characters beyond U+FFFF are written as two
    3-byte surrogates (Java's modified UTF-8, old MySQL exports; the Snips NLU data holds a few):
    read as UTF-8 with the surrogate pairs joined. Raises UnicodeDecodeError on bytes it cannot read."""
    if encoding != "cesu-8":
        return raw.decode(encoding)
    text = raw.decode("utf-8", "surrogatepass")
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    lone = next((i for i, ch in enumerate(joined) if "\ud800" <= ch <= "\udfff"), None)
    if lone is not None:
        start = len(joined[:lone].encode("utf-8", "surrogatepass"))
        raise UnicodeDecodeError("cesu-8", raw, start, start + 3, "a lone surrogate")
    return joined


def decode(raw: bytes, path, encoding: str = "utf-8") -> str:
    """A whole file's bytes as text, or a one-line error naming the file, the line and the byte."""
    check_encoding(encoding)
    try:
        return decode_line(raw, encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1)
        offset = UnicodeDecodeError(error.encoding, error.object, column, column + 1, error.reason)
        raise TinyTitanError(f"{path}:{line}: {_undecodable(offset, encoding, raw[error.start])}") from None


def _undecodable(error: UnicodeDecodeError, encoding: str, byte: int | None = None) -> str:
    byte = error.object[error.start] if byte is None else byte
    name = "UTF-8" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
    return f"not valid {name} (byte 0x{byte:02X} at byte {error.start + 1} of the line); {ENCODING_HINT}"


def _wide(encoding: str) -> bool:
    import codecs

    return encoding != "cesu-8" and codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def _type_name(value) -> str:
    return {dict: "object", list: "list", str: "text", bool: "true/false", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _load_table(path: Path, raw: bytes, spec: DataSpec, delimiter: str) -> LoadReport:
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
            name = "UTF-8" if spec.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else spec.encoding
            rejected.append(Rejected(source, f"not valid {name} (byte 0x{ord(bad) - 0xDC00:02X}); {ENCODING_HINT}"))
            continue
        if len(values) != len(header):
            rejected.append(Rejected(source, f"has {len(values)} columns, the header has {len(header)}"))
            continue
        row = dict(zip(header, values))
        try:
            prompt = spec.input_template.format(**row) if spec.input_template else row[input_column]
            if not prompt.strip():
                raise _RowError(f'input column "{input_column}" is empty')
            if len(output_columns) == 1:
                completion = canonical_completion(row[output_columns[0]], name=output_columns[0])
            else:
                outputs = {c: row[c] for c in output_columns}
                if not any(v.strip() for v in outputs.values()):
                    raise _RowError(f"the output columns ({', '.join(output_columns)}) are all empty")
                completion = canonical_completion(outputs, output_columns)
        except _RowError as error:
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
    import string

    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise TinyTitanError(f"--input-template {template!r}: {error}") from None
    if any(name == "" or name.isdigit() for name in names):
        raise TinyTitanError(f"--input-template {template!r}: name the columns in braces, not {{}} or {{0}}")
    return names


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


# ---------------------------------------------------------------------------------------------
# splits


def stable_hash(text: str) -> bytes:
    """sha256 of the text: the same on every run and machine, unlike `hash()`."""
    return hashlib.sha256(text.encode()).digest()


def hash_split(text: str, ratios: Sequence[float]) -> str:
    """train / val / test for `text`: its stable hash as a fraction in [0, 1), cut at the (train, val, test)
    shares. The one split hash; each caller spells the text it hashes (seed and key) as it always has."""
    u = int.from_bytes(stable_hash(text)[:8], "big") / 2**64
    train, val = ratios[0], ratios[0] + ratios[1]
    return "train" if u < train else "val" if u < val else "test"


def split_of(example: Example, ratios: Sequence[float], seed: int = 0) -> str:
    """train / val / test by a hash of the prompt: deterministic, and equal prompts stay together."""
    return hash_split(f"{seed}\0{example.key}", ratios)


def split_examples(examples: list[Example], ratios: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> dict[str, list[Example]]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise TinyTitanError(f"split must be three fractions for train, val, test that sum to 1, not {list(ratios)}")
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for example in examples:
        splits[split_of(example, ratios, seed)].append(example)
    return splits


def leakage(splits: dict[str, list[Example]]) -> dict[str, int]:
    """How many prompts of each later split also appear in an earlier one ("train/test": 3)."""
    names = [n for n in ("train", "val", "test") if splits.get(n)]
    keys = {n: {e.key for e in splits[n]} for n in names}
    return {f"{a}/{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1:]
            if keys[a] & keys[b]}


# ---------------------------------------------------------------------------------------------
# tokens


@dataclass(frozen=True)
class TokenizedExample:
    ids: tuple[int, ...]
    completion_start: int  # ids[completion_start:] are completion tokens (loss is taken on them)
    truncated: bool
    source: str

    @property
    def n_completion(self) -> int:
        return len(self.ids) - self.completion_start


def tokenize_example(tokenizer, example: Example, max_length: int) -> TokenizedExample:
    """Prompt in the Gemma turn format + completion + <end_of_turn>, cut at `max_length`.
    Raises `_RowError` when the cut would leave no completion token at all."""
    prompt = encode_chat(tokenizer, example.messages)
    completion = tokenizer.tokenize(example.completion) + [tokenizer.token_id(END_OF_TURN)]
    if len(prompt) >= max_length:
        raise _RowError(f"the prompt is {len(prompt)} tokens, so max_length {max_length} leaves no "
                        f"completion token to learn from")
    ids = (prompt + completion)[:max_length]
    return TokenizedExample(tuple(ids), len(prompt), len(prompt) + len(completion) > max_length, example.source)


def tokenize_examples(tokenizer, examples: list[Example], max_length: int):
    """`(tokenized, rejected)`: rows whose completion truncation would remove entirely are rejected."""
    tokenized, rejected = [], []
    for example in examples:
        try:
            tokenized.append(tokenize_example(tokenizer, example, max_length))
        except _RowError as error:
            rejected.append(Rejected(example.source, str(error)))
    return tokenized, rejected
