"""JSON values in training data and model outputs: read strictly (`parse_json`), checked for what a
model can write (`check_text`; `canonical_completion` also refuses huge integers and "▁"), and
written in their one canonical form (`canonical_json`, `canonical_completion`).

A completion that is a JSON object or array is serialized canonically: compact, top-level keys in
the order they first appear in the training file (`json_key_order`; `key_order` carries that order
to the validation and test files), nested keys sorted, so every target has exactly one form: the
form training targets are written in and the structured-output grammars (`grammar.py`) accept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tinytitan.data.examples import RowError
from tinytitan.errors import TinyTitanError

MAX_DEPTH = 64  # lists and objects nested deeper than this in one row are refused
MAX_DIGITS = 20  # an integer of more digits is refused (the constrained decoder writes at most this many)
SPACE_MARK = "\u2581"  # "▁": SentencePiece's mark for a space; Gemma's tokenizer reads it, and writes it, as " "


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
    deepest = depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def canonical_json(value) -> str:
    """The one canonical spelling of a JSON value, byte for byte: what training targets are written as
    (`canonical_completion`) and what the structured-output grammars accept; compact, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def canonical_completion(value, key_order: Sequence[str] = (), name: str = "completion") -> str:
    """Text stays text (stripped); a JSON object/array becomes its one canonical compact form:
    top-level keys in `key_order` (others after them, sorted), nested keys sorted, no whitespace.
    Raises `RowError` for an empty value or one a model cannot write."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f'"{name}" is empty')
        _check_value(value, name)
        return value.strip()
    if isinstance(value, dict):
        if not value:
            raise RowError(f'"{name}" is an empty object')
        _check_value(value, name)
        order = [k for k in key_order if k in value] + sorted(k for k in value if k not in key_order)
        return canonical_json({k: _sorted_json(value[k]) for k in order})
    if isinstance(value, list):
        if not value:
            raise RowError(f'"{name}" is an empty list')
        _check_value(value, name)
        return canonical_json(_sorted_json(value))
    raise RowError(f'"{name}" must be text or a JSON object, got {type_name(value)}')


def _check_value(value, where: str) -> None:
    """What a model cannot write, refused by name: lone surrogates, huge integers, "▁" (read as a space)."""
    try:
        check_text(value, where)
    except TinyTitanError as error:
        raise RowError(str(error)) from None
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            stack += [(v, f"{at}.{k}") for k, v in item.items()] + [(k, f"{at} (a key)") for k in item]
        elif isinstance(item, list):
            stack += [(v, f"{at}[{i}]") for i, v in enumerate(item)]
        elif isinstance(item, str) and SPACE_MARK in item:
            raise RowError(f'{at}: holds "{SPACE_MARK}" (U+2581), which Gemma\'s tokenizer reads and writes as a '
                           f"space, so a model cannot write it; replace it")
        elif isinstance(item, int) and not isinstance(item, bool) and len(str(abs(item))) > MAX_DIGITS:
            raise RowError(f"{at}: an integer of {len(str(abs(item)))} digits (at most {MAX_DIGITS}; "
                           f"write it as text)")


def check_text(value, where: str = "") -> None:
    """Every string in `value` (keys too) is encodable text: JSON allows lone surrogates ("\\ud83d"),
    UTF-8 does not, and a model can only read or write UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TinyTitanError(f"{where or 'text'}: contains a lone surrogate (\\ud800-\\udfff), which is not "
                                 f"text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{where}.{index}" if where else str(index))


def _sorted_json(value):
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(v) for v in value]
    return value


def json_key_order(values, start: Sequence[str] = ()) -> list[str]:
    """`start`, then the top-level keys of the JSON objects among `values` in first-seen order."""
    order: dict[str, None] = dict.fromkeys(start)
    for value in values:
        if isinstance(value, dict):
            order.update((k, None) for k in value if k not in order)
    return list(order)


def json_type(value) -> str:
    """The JSON Schema type of a parsed JSON value ("integer" for whole numbers, "unknown" for non-JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def type_name(value) -> str:
    """A value's kind as a row error names it to a user ("text", "number", "object"...)."""
    return {dict: "object", list: "list", str: "text", bool: "true/false", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
