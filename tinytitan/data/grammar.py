"""Structured output: a JSON schema becomes a llama.cpp grammar (GBNF) whose every sentence is the
canonical compact JSON (`json_values.canonical_completion`) of a document the schema accepts.

Why our own converter and not llama-cpp-python's `json_schema_to_gbnf`: that port ignores the
keywords it cannot enforce (`minimum`, `uniqueItems`, `pattern` quirks...), so an output could
parse and still fail the schema, and its strings admit raw control characters, which JSON forbids.
Here a schema keyword is either enforced by the grammar or refused with a `SchemaError` naming it
and where it sits, and the grammar allows no optional whitespace and keeps the schema's key order:
exactly the form training targets are written in, so a fine-tuned model and its constrained
decoder agree on every byte. The grammar may be narrower than the schema (no extra keys unless
`additionalProperties` asks for them), never wider. Which keywords are supported, and the
`x-input-words` keyword of our own, is `structured.py`'s to say.
"""

from __future__ import annotations

import re

from tinytitan.data.json_values import canonical_json, json_type
from tinytitan.data.structured import (ANNOTATIONS, FORMATS, INPUT_WORDS, MAX_REPEAT, SUPPORTED, TYPES,
                                       SchemaError, check_schema, input_words, uses_input)

# One canonical spelling per value: no whitespace, escapes as json.dumps(ensure_ascii=False) writes them.
PRIMITIVES = {
    "char": r'[^"\\\x00-\x1F] | "\\" (["\\bfnrt] | "u00" [01] [0-9a-f])',
    "string": r'"\"" char* "\""',
    # integers of up to 20 digits (json_values.MAX_DIGITS); floats as Python's repr writes them (up to 17
    # significant digits, which 0.000123... spreads over 20 places after the point)
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,19})',
    "number": r'"-"? ("0" | [1-9] [0-9]{0,19}) ("." [0-9]{1,24})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": r"object | array | string | number | boolean | null",
    "object": r'"{" (string ":" value ("," string ":" value)*)? "}"',
    "array": r'"[" (value ("," value)*)? "]"',
    # days that exist in every year (no 29 February), years 1000-9999: narrower than RFC 3339, never wider
    "date": r'[1-9] [0-9]{3} "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | '
            r'("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))',
    "time": r'([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
            r'("Z" | [-+] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "uuid": r'[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}',
}
DEPENDS = {"string": ["char"], "value": ["object", "array", "string", "number", "boolean", "null"],
           "object": ["string", "value"], "array": ["value"]}


def literal(text: str) -> str:
    """A GBNF string literal for `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = re.sub(r"[\x00-\x1f]", lambda m: f"\\x{ord(m.group()):02X}", escaped.replace("\t", "\\t"))
    return f'"{escaped}"'


def labels_grammar(labels) -> str:
    """Exactly one of `labels` (a classification task's answers)."""
    return "root ::= " + " | ".join(literal(label) for label in labels) + "\n"


def answer_grammars(inputs, *, schema=None, labels=()) -> list[str] | None:
    """Each input's grammar for constrained decoding, as the evaluator and the Python API decode: the
    schema's (made with that input when the schema takes words from it, `x-input-words`), else exactly
    one of `labels`; None with neither."""
    if schema is not None:
        if uses_input(schema):
            return [schema_to_grammar(schema, text) for text in inputs]
        return [schema_to_grammar(schema)] * len(inputs)
    if labels:
        return [labels_grammar(labels)] * len(inputs)
    return None


def json_object_grammar() -> str:
    """`response_format: {"type": "json_object"}`: any JSON object, compact."""
    return schema_to_grammar({"type": "object", "additionalProperties": True})


def schema_to_grammar(schema, input_text: str | None = None) -> str:
    """GBNF whose root matches the canonical compact JSON of documents valid under `schema`; with
    `input_text`, a string marked `x-input-words` holds only words of that text and its own list."""
    grammar = _Converter(schema, input_text).grammar()
    check_schema(schema)  # what the converter reads is checked; this checks the rest (annotations...)
    return grammar


class _Converter:
    def __init__(self, root, input_text: str | None = None):
        if not isinstance(root, dict):
            raise SchemaError("/", f"a schema must be a JSON object, not {type(root).__name__}")
        self.root = root
        self.input_text = input_text
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}  # "$ref" -> rule name

    def grammar(self) -> str:
        self.rules["root"] = self.visit(self.root, "")
        return "\n".join(f"{name} ::= {body}" for name, body in self.rules.items()) + "\n"

    # --- rules --------------------------------------------------------------------------------
    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dependency in DEPENDS.get(name, []):
                self.primitive(dependency)
        return name

    def rule(self, hint: str, body: str) -> str:
        """Name a rule (bodies that are already one name are used directly)."""
        if re.fullmatch(r"[a-z0-9-]+", body):
            return body
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "node"
        name, n = base, 1
        while name in self.rules or name in PRIMITIVES:
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    # --- schema nodes -------------------------------------------------------------------------
    def visit(self, schema, where: str) -> str:
        """The GBNF expression (a rule name or a group) for `schema` at JSON pointer `where`."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise SchemaError(where, "the schema `false` accepts nothing", "false")
        if not isinstance(schema, dict):
            raise SchemaError(where, f"expected a schema object, not {type(schema).__name__}")
        unknown = sorted(k for k in schema if k not in SUPPORTED)
        if unknown:
            raise SchemaError(where, f"{unknown[0]!r} is not supported in structured output "
                                     f"(supported: {', '.join(sorted(SUPPORTED - ANNOTATIONS))})", unknown[0])
        if "$ref" in schema:
            if len(set(schema) - ANNOTATIONS) > 1:
                raise SchemaError(where, "$ref together with other keywords is not supported", "$ref")
            return self.ref(schema["$ref"], where)
        if "anyOf" in schema:
            branches = schema["anyOf"]
            if not isinstance(branches, list) or not branches:
                raise SchemaError(where + "/anyOf", "expected a non-empty list of schemas")
            others = set(schema) - ANNOTATIONS - {"anyOf"}
            if others:
                raise SchemaError(where, f"anyOf together with {sorted(others)[0]!r} is not supported "
                                         f"(move it into each branch)", "anyOf")
            return "(" + " | ".join(self.visit(b, f"{where}/anyOf/{i}") for i, b in enumerate(branches)) + ")"
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or any(k not in TYPES for k in kind) or len(set(kind)) != len(kind):
                raise SchemaError(where + "/type", f"expected distinct types among {', '.join(TYPES)}")
            return "(" + " | ".join(self.visit({**schema, "type": k}, where) for k in kind) + ")"
        if kind is not None and kind not in TYPES:
            raise SchemaError(where + "/type", f"{kind!r} is not a JSON schema type ({', '.join(TYPES)})")
        if "const" in schema or "enum" in schema:
            return self.constants(schema, kind, where)
        if kind is None:
            kind = self.implied_type(schema, where)
        return getattr(self, f"of_{kind}")(schema, where)

    def implied_type(self, schema: dict, where: str) -> str:
        keys = set(schema) - ANNOTATIONS
        for kind, marks in (("object", {"properties", "required", "additionalProperties"}),
                            ("array", {"items", "prefixItems", "minItems", "maxItems"}),
                            ("string", {"minLength", "maxLength", "format"})):
            if keys & marks:
                return kind
        if not keys:
            return "value"
        raise SchemaError(where, f"cannot tell the type from {sorted(keys)} (add \"type\")", "type")

    def of_value(self, schema, where):
        return self.primitive("value")

    def constants(self, schema: dict, kind, where: str) -> str:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(where + "/enum", "expected a non-empty list of values")
        if kind is not None:
            values = [v for v in values if json_type(v) == kind or (kind == "number" and json_type(v) == "integer")
                      or (kind == "integer" and isinstance(v, float) and v.is_integer())]
            if not values:
                raise SchemaError(where, f"no enum/const value is of type {kind}")
        rest = set(schema) - ANNOTATIONS - {"type", "enum", "const"}
        if rest:
            raise SchemaError(where, f"{sorted(rest)[0]!r} next to enum/const is not supported", sorted(rest)[0])
        return "(" + " | ".join(literal(canonical_json(v)) for v in values) + ")"

    def ref(self, ref, where: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(where + "/$ref", f"only local references (#/$defs/...) are supported, not {ref!r}",
                              "$ref")
        if ref in self.refs:
            return self.refs[ref]
        target = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(where + "/$ref", f"{ref!r} points at nothing in this schema")
            target = target[part]
        name = self.rule("ref-" + ref.rsplit("/", 1)[-1], "(placeholder)")
        self.refs[ref] = name
        self.rules[name] = self.visit(target, ref[1:])
        return name

    def of_object(self, schema: dict, where: str) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", False)
        if not isinstance(properties, dict):
            raise SchemaError(where + "/properties", "expected an object of schemas")
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise SchemaError(where + "/required", "expected a list of property names")
        missing = [r for r in required if r not in properties]
        if missing:
            raise SchemaError(where + "/required", f"{missing[0]!r} is required: give it a schema in properties")
        if properties and extra is not False:
            # an extra key could repeat a declared one with another value, and JSON keeps the last
            raise SchemaError(where + "/additionalProperties", "additionalProperties next to properties is not "
                                                               "supported (set it to false)", "additionalProperties")
        pairs = []  # (rule for `"key":value`, required?)
        for key, sub in properties.items():
            value = self.visit(sub, f"{where}/properties/{_escape_pointer(key)}")
            pairs.append((self.rule(f"{where}-{key}-kv", f"{literal(canonical_json(key))} \":\" {value}"),
                          key in required))
        additional = None
        if extra is not False:
            value = self.visit({} if extra is True else extra, f"{where}/additionalProperties")
            additional = self.rule(f"{where}-extra-kv", f"{self.primitive('string')} \":\" {value}")

        def rest(start: int) -> str:  # properties after the first one written: each with its comma
            parts = [f'"," {kv}' if needed else f'("," {kv})?' for kv, needed in pairs[start:]]
            if additional:
                parts.append(f'("," {additional})*')
            return " ".join(parts)

        firsts = []  # which property is written first: any up to (and including) the first required one
        for index, (kv, needed) in enumerate(pairs):
            firsts.append(f"{kv} {rest(index + 1)}".strip())
            if needed:
                break
        else:
            if additional:
                firsts.append(f'{additional} ("," {additional})*')
        body = "(" + " | ".join(firsts) + ")" if firsts else ""
        if firsts and not any(needed for _, needed in pairs):
            body += "?"
        return self.rule(f"{where}-object", f'"{{" {body} "}}"'.replace("  ", " "))

    def of_array(self, schema: dict, where: str) -> str:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        _check_count(low, where + "/minItems")
        if high is not None:
            _check_count(high, where + "/maxItems")
            if high < low:
                raise SchemaError(where, f"maxItems {high} is below minItems {low}")
        if "prefixItems" in schema:
            prefix = schema["prefixItems"]
            if "items" in schema and schema["items"] is not False:
                raise SchemaError(where, "items together with prefixItems is not supported", "prefixItems")
            if not isinstance(prefix, list) or not prefix:
                raise SchemaError(where + "/prefixItems", "expected a non-empty list of schemas")
            if low > len(prefix) or (high is not None and high < len(prefix)):
                raise SchemaError(where, "minItems/maxItems must allow exactly the prefixItems", "prefixItems")
            parts = [self.visit(s, f"{where}/prefixItems/{i}") for i, s in enumerate(prefix)]
            return self.rule(f"{where}-tuple", '"[" ' + ' "," '.join(parts) + ' "]"')
        item = self.visit(schema.get("items", {}), where + "/items")
        if high == 0:
            return self.rule(f"{where}-array", '"[" "]"')
        more_low, more_high = max(low - 1, 0), "" if high is None else str(high - 1)
        repeat = f'("," {item})' + ("*" if (more_low, more_high) == (0, "") else f"{{{more_low},{more_high}}}")
        body = f"{item} {repeat}"
        return self.rule(f"{where}-array", f'"[" {body} "]"' if low > 0 else f'"[" ({body})? "]"')

    def of_string(self, schema: dict, where: str) -> str:
        if INPUT_WORDS in schema:
            return self.of_words(schema, where)
        if "format" in schema:
            fmt = schema["format"]
            if fmt not in FORMATS:
                raise SchemaError(where + "/format", f"format {fmt!r} is not supported ({', '.join(FORMATS)})",
                                  "format")
            if "minLength" in schema or "maxLength" in schema:
                raise SchemaError(where, "minLength/maxLength together with format is not supported", "format")
            if fmt == "date-time":
                inner = f'{self.primitive("date")} "T" {self.primitive("time")}'
            else:
                inner = self.primitive(fmt)
            return self.rule(f"{where}-{fmt}-string", f'"\\"" {inner} "\\""')
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if low == 0 and high is None:
            return self.primitive("string")
        _check_count(low, where + "/minLength")
        if high is not None:
            _check_count(high, where + "/maxLength")
            if high < low:
                raise SchemaError(where, f"maxLength {high} is below minLength {low}")
        char = self.primitive("char")
        return self.rule(f"{where}-string", f'"\\"" {char}{{{low},{"" if high is None else high}}} "\\""')

    def of_words(self, schema: dict, where: str) -> str:
        extra = schema[INPUT_WORDS]
        if not isinstance(extra, list) or not all(isinstance(w, str) and w and not re.search(r"\s", w)
                                                  for w in extra):
            raise SchemaError(where + "/" + INPUT_WORDS, "expected a list of words (text without whitespace)")
        if {"format", "minLength", "maxLength"} & set(schema):
            raise SchemaError(where, f"{INPUT_WORDS} together with format/minLength/maxLength is not supported",
                              INPUT_WORDS)
        if self.input_text is None:  # no input to take words from: an annotation
            return self.primitive("string")
        words = sorted(input_words(self.input_text) | set(extra))
        # each word as the JSON string body writes it (`"` -> `\"`), as a GBNF literal
        alternatives = " | ".join(literal(canonical_json(w)[1:-1]) for w in words)
        if not alternatives:
            return self.rule(f"{where}-words", '"\\"\\""')
        word = self.rule(f"{where}-word", f"({alternatives})")
        return self.rule(f"{where}-words", f'"\\"" ({word} (" " {word})*)? "\\""')

    def of_integer(self, schema, where):
        return self.primitive("integer")

    def of_number(self, schema, where):
        return self.primitive("number")

    def of_boolean(self, schema, where):
        return self.primitive("boolean")

    def of_null(self, schema, where):
        return self.primitive("null")


def _check_count(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT:
        raise SchemaError(where, f"expected a whole number in [0, {MAX_REPEAT}], not {value!r}")


def _escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
