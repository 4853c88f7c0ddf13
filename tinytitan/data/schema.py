"""The schema of a task's JSON training targets, for constrained decoding of a fine-tuned extractor:
fields, types, an enum where a text field takes few values, and `x-input-words` where a text field
is copied from the input (`structured` turns the schema into a grammar)."""

from __future__ import annotations

from collections.abc import Sequence

from tinytitan.errors import TinyTitanError
from tinytitan.data.structured import INPUT_WORDS, input_words
from tinytitan.data.json_values import json_type

def infer_schema(values: Sequence, *, max_enum: int = 12, min_rows_per_value: int = 5,
                 inputs: Sequence[str] | None = None, min_copied: float = 0.99, min_copied_rows: int = 20) -> dict:
    """The JSON schema of training targets (parsed JSON values): object fields in first-seen order
    (nested ones sorted, as `canonical_completion` writes them), required when every object has
    them (a field some rows leave out is optional: absent, not empty), types unified (integer within
    number; null makes a field nullable; a field holding several kinds, such as a text or a list of
    texts, is an `anyOf` of them), and an enum for a text field that takes at most `max_enum` values,
    each seen at least `min_rows_per_value` times on average.

    With `inputs` (each target's input text), a text field without an enum, at any depth (a
    nested field, a list's items, a branch of an anyOf), is marked `x-input-words` when it is
    copied: its value is words of the input, or of a short list of words the targets write in their
    own form ("leaves" -> "leaf"), joined by single spaces. The test: at least half the values' words
    are their input's (a label's are not), and, held out, the list is gathered on one half of the
    values and at least `min_copied` of the other half's (both ways round, at least `min_copied_rows`
    non-empty values) must be spelled with it and their input."""
    values = list(values)
    if not values:
        raise TinyTitanError("no targets to infer a schema from")
    schema = _infer(values, max_enum, min_rows_per_value, top=True)
    if inputs is not None:
        inputs = list(inputs)
        if len(inputs) != len(values):
            raise TinyTitanError(f"{len(inputs)} inputs for {len(values)} targets")
        _mark_copied(schema, [(input_words(text), value) for text, value in zip(inputs, values)],
                     min_copied, min_copied_rows)
    return schema


def _mark_copied(schema: dict, rows: list[tuple[set[str], object]], min_copied: float, min_rows: int) -> None:
    """Mark the text fields of `schema` whose values (`rows`: (input words, value at this node)) are
    copied. A field of texts (a text, a list of texts, or an anyOf of both) is tested as one, over all
    its texts, and each of its text schemas without an enum is marked (an enum is narrower still)."""
    nodes = _text_nodes(schema)
    if nodes is not None:
        texts = [(words, text) for words, value in rows for text in _texts(value) if text]
        said = [word in words for words, text in texts for word in text.split()]
        # copied: most of the values' words are the input's (a label's are not), every value is words joined by
        # single spaces, and nearly all are spelled with their input and a short list learned on the other half
        if (len(texts) >= min_rows and sum(said) >= 0.5 * len(said)
                and all(text == " ".join(text.split()) for _, text in texts)
                and _held_out_copied(texts) >= min_copied):
            own = sorted(_own_words(texts))
            for node in nodes:
                if "enum" not in node:
                    node[INPUT_WORDS] = own
        return
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            _mark_copied(branch, [(w, v) for w, v in rows if _kind(v) in _kinds(branch)], min_copied, min_rows)
        return
    kind = _main_kind(schema)
    if kind == "object":
        for key, field in schema.get("properties", {}).items():
            _mark_copied(field, [(w, v[key]) for w, v in rows if isinstance(v, dict) and key in v], min_copied, min_rows)
    elif kind == "array" and isinstance(schema.get("items"), dict):
        _mark_copied(schema["items"], [(w, item) for w, v in rows if isinstance(v, list) for item in v],
                     min_copied, min_rows)


def _text_nodes(schema: dict) -> list[dict] | None:
    """The string schemas a field's texts are written under (itself, a list's items, the branches of
    an anyOf of these), or None when the field holds something else too (objects, numbers...)."""
    if "anyOf" in schema:
        nodes: list[dict] = []
        for branch in schema["anyOf"]:
            if _kinds(branch) == {"null"}:
                continue
            found = _text_nodes(branch)
            if found is None:
                return None
            nodes += found
        return nodes
    kind = _main_kind(schema)
    if kind == "string":
        return [schema]
    if kind == "array" and isinstance(schema.get("items"), dict) and schema["items"]:
        return _text_nodes(schema["items"])
    return None


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


def _kinds(schema: dict) -> set:
    """A schema's types as `_kind` names them (integer is a number)."""
    kind = schema.get("type")
    return {"number" if k == "integer" else k for k in (kind if isinstance(kind, list) else [kind])}


def _main_kind(schema: dict):
    """A schema's type, the null of a nullable one aside."""
    return next((k for k in _kinds(schema) if k != "null"), None)


def _kind(value) -> str:
    kind = json_type(value)
    return "number" if kind == "integer" else kind


def _own_words(rows: list[tuple[set[str], str]]) -> set[str]:
    """The words of the values that their input does not hold."""
    return {word for words, value in rows for word in value.split() if word not in words}


def _held_out_copied(rows: list[tuple[set[str], str]]) -> float:
    """The share of values spelled with their input's words and the other half's own words (words
    joined by single spaces: a value with other whitespace cannot be written that way)."""
    halves = rows[0::2], rows[1::2]
    spelled = 0
    for seen, held in (halves, halves[::-1]):
        extra = _own_words(seen)
        spelled += sum(value == " ".join(value.split()) and all(w in words or w in extra for w in value.split())
                       for words, value in held)
    return spelled / len(rows)


def _infer(values: list, max_enum: int, min_rows: int, top: bool = False) -> dict:
    kinds = {_kind(v) for v in values}
    nullable = "null" in kinds and len(kinds) > 1
    kinds.discard("null") if nullable else None
    if len(kinds) > 1:  # a field of several kinds (a text, or a list of texts when said twice): one branch each
        branches = [_infer([v for v in values if _kind(v) == kind], max_enum, min_rows, top) for kind in sorted(kinds)]
        return {"anyOf": branches + ([{"type": "null"}] if nullable else [])}
    (kind,) = kinds
    present = [v for v in values if v is not None]
    if kind == "number" and all(json_type(v) == "integer" for v in present):
        kind = "integer"
    schema: dict
    if kind == "object":
        order: dict[str, None] = {}  # the top level in first-seen order, nested objects sorted (as targets are written)
        for value in present:
            order.update((k, None) for k in value if k not in order)
        if not top:
            order = dict.fromkeys(sorted(order))
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
