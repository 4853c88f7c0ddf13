"""JSON schema -> grammar: what it enforces, what it refuses, and that sampled outputs always validate."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tinytitan.errors import TinyTitanError
from tinytitan.data.schema import infer_schema
from tinytitan.data.structured import SchemaError
from tinytitan.data.grammar import json_object_grammar, schema_to_grammar
from tinytitan.data.json_values import canonical_json

RECORD = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "count": {"type": "integer"},
    "unit": {"enum": ["cup", "tbsp", None]},
    "fresh": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}, "minItems": 1, "maxItems": 3},
    "note": {"type": ["string", "null"], "maxLength": 6},
}, "required": ["name", "count", "unit"]}

SCHEMAS = {
    "record": RECORD,
    "nested": {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"const": "k"}}, "required": ["x", "y"]},
        "b": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
    }, "required": ["a"]},
    "refs": {"$defs": {"pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": [1, 2]}]}},
             "type": "object", "properties": {"p": {"$ref": "#/$defs/pair"}, "q": {"$ref": "#/$defs/pair"}},
             "required": ["p", "q"]},
    "formats": {"type": "object", "properties": {"d": {"type": "string", "format": "date"},
                                                "u": {"type": "string", "format": "uuid"}}, "required": ["d", "u"]},
    "all-optional": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}},
    "top-level-array": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 4},
}


@pytest.fixture(scope="module")
def tiny_model(tiny):
    from tinytitan.serve.backend import LoadedModel

    model = LoadedModel(tiny[0], n_ctx=512)
    yield model
    model.close()


def sample(model, grammar: str, seed: int, max_tokens: int = 200) -> tuple[str, str]:
    """One output of the tiny (random) model under the grammar: a random walk through it."""
    from tinytitan.model.engines.sampling import SamplingParams
    from tinytitan.serve.backend import Job, generate_choice

    pieces: list[str] = []
    prompt = model.tokenize("hello", bos=True)
    job = Job(model, None, 1.0, [prompt], SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed), grammar,
              emit=lambda event: pieces.append(event[2]) if event[0] == "delta" else None)
    context = model.new_context(threads=1)
    try:
        finish, _ = generate_choice(context, model, job, 0, prompt)
    finally:
        context.free()
    return "".join(pieces), finish


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_sampled_output_is_canonical_json_that_validates(tiny_model, name):
    schema = SCHEMAS[name]
    grammar = schema_to_grammar(schema)
    for seed in range(12):
        text, finish = sample(tiny_model, grammar, seed)
        assert finish == "stop", (name, seed, text)
        value = json.loads(text)
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        assert canonical_json(value) == text or name == "nested"  # nested: numbers like 1E5 re-spell
        if name == "record":  # keys in the schema's order, optional ones where they belong
            order = [k for k in RECORD["properties"] if k in value]
            assert list(value) == order


def test_json_object_grammar_gives_objects(tiny_model):
    grammar = json_object_grammar()
    for seed in range(6):
        text, finish = sample(tiny_model, grammar, seed, max_tokens=300)
        if finish == "stop":  # an unbounded object may run out of tokens; when it closes it parses
            assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema, feature", [
    ({"type": "integer", "minimum": 3}, "minimum"),
    ({"type": "string", "pattern": "^a+$"}, "pattern"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, "not"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
    ({"type": "string", "format": "email"}, "format"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
    ({"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}}, "multipleOf"),
    ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, "patternProperties"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}, "additionalProperties"),
])
def test_unsupported_features_are_named(schema, feature):
    with pytest.raises(SchemaError) as caught:
        schema_to_grammar(schema)
    assert caught.value.feature == feature and feature in str(caught.value)


def test_bad_schemas_say_where():
    with pytest.raises(SchemaError, match=r"/properties/a/type: 'text' is not a JSON schema type"):
        schema_to_grammar({"type": "object", "properties": {"a": {"type": "text"}}})
    with pytest.raises(SchemaError, match="points at nothing"):
        schema_to_grammar({"$ref": "#/$defs/missing"})
    with pytest.raises(SchemaError, match="maxItems 1 is below minItems 2"):
        schema_to_grammar({"type": "array", "minItems": 2, "maxItems": 1})
    with pytest.raises(SchemaError, match="a schema must be a JSON object"):
        schema_to_grammar(["type"])
    with pytest.raises(SchemaError, match=r"/maxLength: expected a whole number in \[0, 2000\]"):
        schema_to_grammar({"type": "string", "maxLength": 5000})  # llama.cpp would drop the bound silently
    with pytest.raises(SchemaError, match="only local references"):
        schema_to_grammar({"$ref": []})
    with pytest.raises(SchemaError, match="'x' is required: give it a schema in properties"):
        schema_to_grammar({"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}})
    with pytest.raises(SchemaError, match="no enum/const value is of type integer"):
        schema_to_grammar({"type": "integer", "enum": [1.5]})
    assert '"2.0"' in schema_to_grammar({"type": "integer", "enum": [1.5, 2.0]})  # 2.0 is an integer


def test_grammars_llama_cpp_refuses_are_found_before_use(tiny_model):
    from tinytitan.model.engines.sampling import grammar_error

    assert grammar_error(tiny_model, schema_to_grammar(RECORD)) is None
    looping = schema_to_grammar({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
                                 "$ref": "#/$defs/a"})
    assert "refuses" in grammar_error(tiny_model, looping)  # left recursion: llama.cpp will not run it


def test_grammar_accepts_exactly_the_canonical_form(tiny_model):
    from tinytitan.model.engines.sampling import grammar_accepts

    grammar = schema_to_grammar(RECORD)
    good = {"name": "flour", "count": 2, "unit": "cup", "tags": ["a"]}
    assert grammar_accepts(tiny_model, grammar, canonical_json(good))
    assert not grammar_accepts(tiny_model, grammar, json.dumps(good))  # spaces after ':' and ','
    assert not grammar_accepts(tiny_model, grammar, canonical_json({**good, "unit": "kg"}))  # not in the enum
    assert not grammar_accepts(tiny_model, grammar, canonical_json({"count": 2, "name": "flour", "unit": None}))
    assert not grammar_accepts(tiny_model, grammar, canonical_json({"name": "flour", "count": 2}))  # required
    assert not grammar_accepts(tiny_model, grammar, '{"name":"a\nb","count":1,"unit":null}')  # raw newline
    assert grammar_accepts(tiny_model, grammar, '{"name":"a\\nb","count":1,"unit":null}')


def test_infer_schema_from_targets():
    rows = [{"name": "flour", "unit": "cup", "qty": 2, "size": ""},
            {"name": "salt", "unit": "tsp", "qty": 0.5, "size": "large"},
            {"name": "egg", "unit": "", "qty": None, "extra": [1, 2], "size": ""}] * 4
    schema = infer_schema(rows, max_enum=3, min_rows_per_value=2)
    assert list(schema["properties"]) == ["name", "unit", "qty", "size", "extra"]  # first-seen order
    assert schema["required"] == ["name", "unit", "qty", "size"]
    assert schema["properties"]["name"] == {"type": "string", "enum": ["egg", "flour", "salt"]}
    assert schema["properties"]["unit"]["enum"] == ["", "cup", "tsp"]
    assert schema["properties"]["qty"] == {"type": ["number", "null"]}
    assert schema["properties"]["extra"] == {"type": "array", "items": {"type": "integer"}}
    assert infer_schema(rows, max_enum=2)["properties"]["name"] == {"type": "string"}  # too many values
    for row in rows:
        jsonschema.validate(row, schema)


def test_inferred_grammar_accepts_every_training_target(tiny_model):
    from tinytitan.data.json_values import canonical_completion
    from tinytitan.model.engines.sampling import grammar_accepts

    rows = [{"name": "flour", "unit": "cup", "note": {"b": 1, "a": "x"}}, {"name": "salt", "unit": "", "note": {"a": "", "b": 2}}]
    targets = [canonical_completion(row, key_order=["name", "unit", "note"]) for row in rows]
    grammar = schema_to_grammar(infer_schema([json.loads(t) for t in targets]))
    assert all(grammar_accepts(tiny_model, grammar, t) for t in targets)


COPIED = {"type": "object", "properties": {"name": {"type": "string", "x-input-words": ["leaf"]},
                                           "note": {"type": "string"}},
          "required": ["name", "note"], "additionalProperties": False}


def test_input_words_hold_a_field_to_the_input(tiny_model):
    from tinytitan.model.engines.sampling import grammar_accepts
    from tinytitan.data.structured import input_words, uses_input

    text = '2 c "fresh" basil leaves, chopped (1-inch)'
    assert input_words(text) >= {"2", "c", "fresh", '"fresh"', "basil", "leaves", "leaves,", "chopped", "1-inch",
                                 "1", "inch", "(1-inch)"}
    grammar = schema_to_grammar(COPIED, text)
    accepts = lambda name, note="": grammar_accepts(tiny_model, grammar, canonical_json({"name": name, "note": note}))  # noqa: E731
    assert accepts("fresh basil leaf") and accepts("basil leaves") and accepts("") and accepts('"fresh" basil')
    assert accepts("1-inch", note="any text at all")  # only the marked field is held
    assert not accepts("fresh basil leafs") and not accepts("sliver") and not accepts("basil  leaf")
    assert not accepts(" basil") and not accepts("basil ")  # single spaces between words, none around them
    assert grammar_accepts(tiny_model, schema_to_grammar(COPIED), canonical_json({"name": "sliver", "note": ""}))
    assert grammar_accepts(tiny_model, schema_to_grammar(COPIED, ""), canonical_json({"name": "leaf", "note": ""}))
    empty = {"type": "string", "x-input-words": []}
    assert grammar_accepts(tiny_model, schema_to_grammar(empty, ""), '""')
    assert not grammar_accepts(tiny_model, schema_to_grammar(empty, ""), '"a"')
    assert uses_input(COPIED) and uses_input({"anyOf": [empty]}) and not uses_input(RECORD)
    with pytest.raises(SchemaError, match="expected a list of words"):
        schema_to_grammar({"type": "string", "x-input-words": ["two words"]}, "x")
    with pytest.raises(SchemaError, match="together with format/minLength/maxLength"):
        schema_to_grammar({"type": "string", "x-input-words": [], "maxLength": 3}, "x")


def test_infer_schema_marks_fields_copied_from_the_input(tiny_model):
    from tinytitan.model.engines.sampling import grammar_accepts

    herbs = ["basil", "mint", "sage", "thyme", "dill", "chive", "parsley", "tarragon", "oregano", "cilantro"]
    inputs, targets = [], []
    for i in range(60):
        herb = herbs[i % len(herbs)]
        cut = ["chopped", "minced", "sliced", "torn"][i % 4]
        inputs.append(f"{i % 4 + 1} c fresh {herb} leaves, {cut}")
        targets.append({"name": f"fresh {herb} leaf", "quantity": f"{i % 4 + 1}.0", "unit": "c", "preparation": cut})
    schema = infer_schema(targets, inputs=inputs, max_enum=3)
    fields = schema["properties"]
    assert fields["name"]["x-input-words"] == ["leaf"]  # copied, with the one word written in its own form
    assert "x-input-words" not in fields["quantity"]  # "2.0" is never in "2 c ...": not copied
    assert fields["unit"] == {"type": "string", "enum": ["c"]}  # an enum is narrower still
    assert fields["preparation"]["x-input-words"] == []  # every word from the input
    assert "x-input-words" not in infer_schema(targets)["properties"]["name"]  # no inputs, no marks
    # a field whose own words do not recur is not copied: the held-out half cannot spell its values
    novel = [{"name": f"word{i}"} for i in range(60)]
    assert "x-input-words" not in infer_schema(novel, inputs=["x"] * 60)["properties"]["name"]
    assert "x-input-words" not in infer_schema(targets[:10], inputs=inputs[:10])["properties"]["name"]  # too few
    with pytest.raises(TinyTitanError, match="3 inputs for 60 targets"):
        infer_schema(targets, inputs=inputs[:3])
    for text, target in list(zip(inputs, targets))[:12]:  # every training target stays writable
        assert grammar_accepts(tiny_model, schema_to_grammar(schema, text), canonical_json(target))
    assert not grammar_accepts(tiny_model, schema_to_grammar(schema, inputs[0]), canonical_json(targets[1]))
