"""Structured output's JSON Schema subset: which keywords `grammar.schema_to_grammar` enforces
(`SUPPORTED`; annotations such as title and description are read and ignored), the subset as a meta
schema (for an API's documentation, and to check what the converter does not read), `SchemaError`
naming the keyword and where it sits, and the size of a request's schema before anything reads it.

Supported: type (one or a list), properties / required / additionalProperties, items /
prefixItems / minItems / maxItems, enum, const, anyOf, minLength / maxLength, format (date, time,
date-time, uuid), local $ref into $defs / definitions, and annotations (title, description...).

`schema.infer_schema` goes the other way: the schema of a task's JSON targets.

One keyword of our own, `x-input-words` (a list of words) on a string, is for extraction: the value
is words joined by single spaces (or empty), each one a word of the request's input text
(`input_words`) or one of the listed words. A grammar made with the input (`schema_to_grammar(schema,
input_text)`) enforces it, so a decoder cannot write a word the input does not hold ("sliver" for
"sauerkraut"); made without an input, the keyword is an annotation. `infer_schema` adds it to a
top-level text field when the training targets show the field is copied from the input.
"""

from __future__ import annotations

import re

from tinytitan.errors import TinyTitanError

INPUT_WORDS = "x-input-words"
ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
               "readOnly", "writeOnly", "$defs", "definitions"}
SUPPORTED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
             "maxItems", "enum", "const", "anyOf", "minLength", "maxLength", "format", "$ref",
             INPUT_WORDS} | ANNOTATIONS
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
FORMATS = ("date", "time", "date-time", "uuid")
MAX_REPEAT = 2000  # llama.cpp's grammar parser caps {m,n} repetitions at 2000 (MAX_REPETITION_THRESHOLD)


def meta_schema(self_ref: str) -> dict:
    """The JSON schemas structured output accepts, as a JSON schema (for an API's documentation); `self_ref`
    is where it will live (e.g. "#/components/schemas/StructuredSchema"). Semantic limits (a $ref that
    points nowhere, maxItems below minItems, an unsatisfiable `required`) are checked on use."""
    node = {"$ref": self_ref}
    count = {"type": "integer", "minimum": 0, "maximum": MAX_REPEAT}
    kind = {"enum": list(TYPES)}
    return {
        "type": "object", "propertyNames": {"enum": sorted(SUPPORTED)},
        "description": "A JSON schema in the subset structured output enforces.",
        "properties": {
            "type": {"anyOf": [kind, {"type": "array", "items": kind, "minItems": 1, "uniqueItems": True}]},
            "properties": {"type": "object", "additionalProperties": node},
            "required": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "additionalProperties": {"anyOf": [{"type": "boolean"}, node]},
            "items": node, "prefixItems": {"type": "array", "items": node, "minItems": 1},
            "minItems": count, "maxItems": count, "minLength": count, "maxLength": count,
            "enum": {"type": "array", "minItems": 1}, "const": {},
            "anyOf": {"type": "array", "items": node, "minItems": 1},
            "format": {"enum": list(FORMATS)}, "$ref": {"type": "string", "pattern": "^#"},
            INPUT_WORDS: {"type": "array", "items": {"type": "string", "pattern": r"^\S+$"}, "uniqueItems": True,
                          "description": "the value is words joined by single spaces, each a word of the "
                                         "request's input or one of these"},
            "$defs": {"type": "object", "additionalProperties": node},
            "definitions": {"type": "object", "additionalProperties": node},
            "title": {"type": "string"}, "description": {"type": "string"}, "$schema": {"type": "string"},
            "$id": {"type": "string"}, "$comment": {"type": "string"}, "examples": {"type": "array"},
            "deprecated": {"type": "boolean"}, "readOnly": {"type": "boolean"}, "writeOnly": {"type": "boolean"},
        },
    }


class SchemaError(TinyTitanError):
    """A schema we cannot (or will not) turn into a grammar; `where` is a JSON pointer into it."""

    def __init__(self, where: str, message: str, feature: str | None = None):
        self.where, self.feature, self.detail = where or "/", feature, message
        super().__init__(f"{self.where}: {message}")


def schema_extent(schema) -> tuple[int, int]:
    """(how deep the schema nests, how many values it holds), counted without recursion: a request's
    schema is measured before anything recursive reads it."""
    depth, count, stack = 0, 0, [(schema, 1)]
    while stack:
        value, level = stack.pop()
        count += 1
        depth = max(depth, level)
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
    return depth, count


def uses_input(schema) -> bool:
    """Does the schema's grammar depend on the input text (an `x-input-words` anywhere in it)?"""
    if isinstance(schema, dict):
        return INPUT_WORDS in schema or any(uses_input(v) for v in schema.values())
    if isinstance(schema, list):
        return any(uses_input(v) for v in schema)
    return False


def input_words(text: str) -> set[str]:
    """The words an `x-input-words` value may take from `text`: each whitespace-separated piece, that
    piece without the punctuation around it (with and without a final dot: "D.R.E.A.M.?" gives
    "D.R.E.A.M." and "D.R.E.A.M"), its parts between punctuation (with and without hyphens kept), its
    letter-and-digit runs, and a possessive's owner ("tobymac's" gives "tobymac"). "(2-inch)" gives
    "(2-inch)", "2-inch", "2", "inch"."""
    words: set[str] = set()
    for piece in text.split():
        words.add(piece)
        words.add(piece.strip(".,;:()[]*!?\"'"))
        words.add(piece.strip(",;:()[]*!?\"'"))
        words.update(re.findall(r"[^\W_]+(?:['’][^\W_]+)*", piece))
        words.update(re.split(r"[/,;:()\[\]*]", piece))
        words.update(re.split(r"[-/,;:()\[\]*–]", piece))
    words.update(re.sub(r"['’]s?$", "", word) for word in list(words) if re.search(r"\w['’]s?$", word))
    words.discard("")
    return words


def check_schema(schema) -> None:
    """A `SchemaError` for the first thing in `schema` the subset's meta schema refuses."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(meta_schema("#"))
    error = jsonschema.exceptions.best_match(validator.iter_errors(schema))
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise SchemaError(where, f"{error.message} (expected by {error.validator!r})")
