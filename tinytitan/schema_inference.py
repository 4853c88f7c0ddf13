"""The schema of a task's JSON training targets, for constrained decoding of a fine-tuned extractor:
fields, types, an enum where a text field takes few values, and `x-input-words` where a text field
is copied from the input (`structured` turns the schema into a grammar)."""

from __future__ import annotations

from collections.abc import Sequence

from tinytitan.errors import TinyTitanError
from tinytitan.structured import INPUT_WORDS, _json_type, input_words

def infer_schema(values: Sequence, *, max_enum: int = 12, min_rows_per_value: int = 5,
                 inputs: Sequence[str] | None = None, min_copied: float = 0.99, min_copied_rows: int = 20) -> dict:
    """The JSON schema of training targets (parsed JSON values): object fields in first-seen order
    (nested ones sorted, as `canonical_completion` writes them), required when every row has them,
    types unified (integer within number; null makes a field nullable), and an enum for a text field
    that takes at most `max_enum` values, each seen at least `min_rows_per_value` times on average.

    With `inputs` (each target's input text), a top-level text field without an enum is marked
    `x-input-words` when it is copied: its words come from the input, or from a short list of words
    the targets write in their own form ("leaves" -> "leaf"). The test is held out: the list is
    gathered on one half of the rows, and at least `min_copied` of the other half's values (both
    ways round, at least `min_copied_rows` non-empty values) must be spelled with it and their input."""
    values = list(values)
    if not values:
        raise TinyTitanError("no targets to infer a schema from")
    schema = _infer(values, max_enum, min_rows_per_value, top=True)
    if inputs is not None:
        inputs = list(inputs)
        if len(inputs) != len(values):
            raise TinyTitanError(f"{len(inputs)} inputs for {len(values)} targets")
        for key, field in schema.get("properties", {}).items():
            if field.get("type") == "string" and "enum" not in field:
                rows = [(input_words(text), value[key]) for text, value in zip(inputs, values)
                        if isinstance(value[key], str) and value[key]]
                if len(rows) >= min_copied_rows and _held_out_copied(rows) >= min_copied:
                    field[INPUT_WORDS] = sorted(_own_words(rows))
    return schema


def _own_words(rows: list[tuple[set[str], str]]) -> set[str]:
    """The words of the values that their input does not hold."""
    return {word for words, value in rows for word in value.split() if word not in words}


def _held_out_copied(rows: list[tuple[set[str], str]]) -> float:
    """The share of values spelled with their input's words and the other half's own words."""
    halves = rows[0::2], rows[1::2]
    spelled = 0
    for seen, held in (halves, halves[::-1]):
        extra = _own_words(seen)
        spelled += sum(all(w in words or w in extra for w in value.split()) for words, value in held)
    return spelled / len(rows)


def _infer(values: list, max_enum: int, min_rows: int, top: bool = False) -> dict:
    kinds = {_json_type(v) for v in values}
    schema: dict = {}
    nullable = "null" in kinds and len(kinds) > 1
    kinds.discard("null") if nullable else None
    if kinds == {"integer", "number"}:
        kinds = {"number"}
    if len(kinds) > 1:
        return {}  # mixed types: any value
    (kind,) = kinds
    present = [v for v in values if v is not None]
    if kind == "object":
        order: dict[str, None] = {}
        for value in present:
            keys = value if top else sorted(value)
            order.update((k, None) for k in keys if k not in order)
        properties = {k: _infer([v[k] for v in present if k in v], max_enum, min_rows) for k in order}
        schema = {"type": "object", "properties": properties,
                  "required": [k for k in order if all(k in v for v in present)],
                  "additionalProperties": False}
    elif kind == "array":
        items = [item for value in present for item in value]
        schema = {"type": "array", "items": _infer(items, max_enum, min_rows) if items else {}}
    elif kind == "string":
        distinct = sorted(set(present))
        schema = {"type": "string"}
        if len(distinct) <= max_enum and len(present) >= min_rows * len(distinct):
            schema["enum"] = distinct
    else:
        schema = {"type": kind}
    if nullable:
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        schema["type"] = [schema["type"], "null"]
    return schema
