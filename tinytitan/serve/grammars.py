"""The grammar a request is held to: its `response_format`, or its task's schema; made from the JSON
schema, checked by llama.cpp once per schema and model, and cached (refusals too).

Limits keep a request from making a grammar too large to check quickly: the schema's depth and size,
the grammar's bytes, and the input an `x-input-words` schema takes its words from.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

from tinytitan.data.grammar import json_object_grammar, schema_to_grammar
from tinytitan.data.structured import SchemaError, schema_extent, uses_input
from tinytitan.model.engines.sampling import grammar_error
from tinytitan.serve.fleet import Task
from tinytitan.serve.limits import ApiError

MAX_INPUT_WORDS_BYTES = 64 * 1024  # the input an x-input-words grammar is made from (its words become rules)
MAX_GRAMMAR_BYTES = 1 << 20
MAX_SCHEMA_DEPTH = 128  # room for data nested 64 deep (data.MAX_DEPTH): two schema levels per data level
MAX_SCHEMA_VALUES = 20_000


class GrammarCache:
    """Schema -> grammar (or the refusal), the most recent 64, shared by the threads that make them."""

    def __init__(self, size: int = 64):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: str):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: str, value) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def request_grammar(model, task: Task, response_format, cache: GrammarCache, input_text: str, input_param: str) -> str | None:
    """The request's grammar, made and checked by llama.cpp once per schema (refusals cached too). A
    schema that takes words from the input (`x-input-words`) gets its grammar made with `input_text`:
    the last user message, or a completion request's prompts (at most MAX_INPUT_WORDS_BYTES of it)."""
    if response_format is None:
        if task.schema is not None and uses_input(task.schema):  # checked at start-up: only the words differ
            check_input_words(input_text, input_param)
            return checked_size(schema_to_grammar(task.schema, input_text), "the task's schema")
        return task.grammar
    if response_format.type == "text":
        return None
    param = "response_format.json_schema.schema"
    if response_format.type == "json_object":
        key = "json_object"
        make = json_object_grammar
    else:
        schema = response_format.json_schema.schema_
        if schema is None:  # a named format without a schema: any JSON object
            schema = {"type": "object", "additionalProperties": True}
        depth, values = schema_extent(schema)
        if depth > MAX_SCHEMA_DEPTH or values > MAX_SCHEMA_VALUES:
            raise ApiError(400, f"{param}: nested {depth} deep with {values:,} values (at most {MAX_SCHEMA_DEPTH} "
                                f"deep and {MAX_SCHEMA_VALUES:,} values)", param, "schema_too_large")
        text = input_text if uses_input(schema) else None
        if text is not None:
            check_input_words(text, input_param)
        key = json.dumps(schema) + ("" if text is None else f"\0{text}")  # key order matters: the grammar keeps it
        make = lambda: schema_to_grammar(schema, text)  # noqa: E731
    key = f"{model.path}\0{key}"
    found = cache.get(key)
    if found is None:
        try:
            found = checked_size(make(), param)
            problem = grammar_error(model, found)
            found = ApiError(400, f"{param}: {problem}", param, "invalid_schema") if problem else found
        except SchemaError as error:
            found = ApiError(400, f"{param}: {error.detail} (at {error.where})", param,
                             "unsupported_schema_feature" if error.feature else "invalid_schema")
        except RecursionError:
            found = ApiError(400, f"{param}: nested too deeply", param, "invalid_schema")
        except ApiError as error:
            found = error
        cache.put(key, found)
    if isinstance(found, ApiError):
        raise found
    return found


def check_input_words(text: str, param: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_INPUT_WORDS_BYTES:
        raise ApiError(413, f"{param}: the schema takes words from this input (x-input-words), and it is {size:,} "
                            f"bytes: at most {MAX_INPUT_WORDS_BYTES:,}", param, "input_too_large")


def checked_size(grammar: str, param: str) -> str:
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise ApiError(400, f"{param}: its grammar is {len(grammar):,} bytes (at most {MAX_GRAMMAR_BYTES:,})", param,
                       "schema_too_large")
    return grammar
