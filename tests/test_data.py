"""Datasets: shapes, canonical targets, rejected rows named by file:line, splits, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinytitan.model.chat_format import Message
from tinytitan.train.config import FinetuneConfig
from tinytitan.data.rows import DataSpec, load_examples
from tinytitan.data.examples import Example
from tinytitan.data.json_values import canonical_completion
from tinytitan.data.splits import leakage, split_examples
from tinytitan.data.tokens import tokenize_example
from tinytitan.data.check import prepare_data
from tinytitan.errors import TinyTitanError
from tests.conftest import run_cli, shared_file

BAD = Path(__file__).parent / "data_bad"


@pytest.mark.parametrize("name, expected", [
    ("bad_json.jsonl", {2: '"completion" is empty', 3: "bad JSON (Expecting ',' delimiter at column 15)"}),
    ("wrong_fields.jsonl", {2: '"prompt" must be text, got number', 3: 'missing field "prompt"',
                            4: "expected a JSON object, got list", 5: 'expected "messages"'}),
    ("not_utf8.jsonl", {2: "not valid UTF-8"}),
    ("duplicate.jsonl", {3: "duplicate of line 1"}),
    ("messages.jsonl", {2: "the last message must be the assistant's reply", 3: "messages must alternate",
                        4: '"messages" must be a non-empty list'}),
    ("table.csv", {3: 'input column "input" is empty', 4: '"label" is empty', 5: "has 1 columns"}),
])
def test_bad_rows_are_named_by_file_and_line(name, expected):
    report = load_examples(BAD / name)
    assert len(report.examples) == 1  # every file has exactly one good row
    got = {int(r.source.rsplit(":", 1)[1]): r.reason for r in report.rejected}
    assert sorted(got) == sorted(expected)
    for line, reason in expected.items():
        assert got[line].startswith(reason), (line, got[line])
        assert all(r.source.startswith(str(BAD / name) + ":") for r in report.rejected)


def test_canonical_json_targets():
    order = ["name", "quantity", "unit"]
    a = canonical_completion({"unit": "tsp", "name": "salt", "quantity": "1"}, order)
    b = canonical_completion({"quantity": "1", "name": "salt", "unit": "tsp"}, order)
    assert a == b == '{"name":"salt","quantity":"1","unit":"tsp"}'
    assert canonical_completion({"b": {"y": 1, "x": [2, {"d": 0, "c": 1}]}, "a": "é"}) == \
        '{"a":"é","b":{"x":[2,{"c":1,"d":0}],"y":1}}'
    assert canonical_completion("  text  ") == "text"


def test_jsonl_shapes(tmp_path):
    path = tmp_path / "io.jsonl"
    path.write_text(json.dumps({"input": "2 cups flour", "output": {"unit": "cups", "name": "flour"},
                                "system": "Parse."}) + "\n" +
                    json.dumps({"input": "salt", "output": {"name": "salt", "unit": ""}}) + "\n")
    report = load_examples(path)
    assert report.shape == "input/output" and report.json_keys == ["unit", "name"]
    first, second = report.examples
    assert first.messages[0].role == "system" and first.completion == '{"unit":"cups","name":"flour"}'
    assert second.completion == '{"unit":"","name":"salt"}'  # first-seen key order, for every row


def test_csv_columns_and_template(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("title,body,label,extra\nHi,there,greet,x\n")
    assert load_examples(path, DataSpec(input_column="body", output_columns=("label",))).examples[0].completion == "greet"
    spec = DataSpec(input_template="{title}: {body}", output_columns=("label", "extra"))
    example = load_examples(path, spec).examples[0]
    assert example.messages[-1].content == "Hi: there" and example.completion == '{"label":"greet","extra":"x"}'
    with pytest.raises(TinyTitanError, match="no column 'nope'"):
        load_examples(path, DataSpec(input_column="nope"))
    with pytest.raises(TinyTitanError, match="--input-template names missing"):
        load_examples(path, DataSpec(input_template="{missing}"))


def test_ingredients_csv_is_read_as_json_records():
    report = load_examples(shared_file("ingredients", "tastecooking-ingredients-2024.csv"))
    assert report.rows == 6320 and len(report.examples) == 6316
    assert report.json_keys == ["name", "quantity", "unit", "size", "preparation", "comment", "purpose"]
    assert all(r.reason.startswith("duplicate of line") for r in report.rejected)
    assert json.loads(report.examples[0].completion)["quantity"] == "#3$4"


def test_split_is_deterministic_and_keeps_inputs_together():
    examples = [Example((Message("user", f"p{i % 7}"),), f"c{i}", f"f:{i}") for i in range(10)]
    a, b = split_examples(examples, (0.5, 0.25, 0.25)), split_examples(examples, (0.5, 0.25, 0.25))
    assert a == b
    assert leakage(a) == {}
    assert leakage({"train": examples[:5], "val": examples[5:8], "test": []}) != {}


def test_leakage_between_given_files_is_reported(tiny_torch, tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "x"}) + "\n" for i in range(5)))
    val.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "y"}) + "\n" for i in range(3, 7)))
    prepared = prepare_data(FinetuneConfig(train=str(train), val=str(val)), tiny_torch.tokenizer)
    assert prepared.leakage == {"train/val": 2} and prepared.split_mode == "files"


def test_truncation_cuts_completion_or_rejects(tiny_torch):
    tokenizer = tiny_torch.tokenizer
    example = Example((Message("user", "the cat sat"),), "on the mat", "f:1")
    full = tokenize_example(tokenizer, example, 512)
    assert not full.truncated and full.ids[-1] == tokenizer.token_id("<end_of_turn>")
    cut = tokenize_example(tokenizer, example, full.completion_start + 2)
    assert cut.truncated and cut.n_completion == 2
    with pytest.raises(Exception, match="leaves no completion token"):
        tokenize_example(tokenizer, example, full.completion_start)


def test_data_check_refuses_zero_rows_and_all_truncated(tmp_path, tiny):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    result = run_cli("data", "check", str(empty), "--model", str(tiny[0]))
    assert result.returncode == 1 and "the file is empty" in result.stderr
    bad_only = tmp_path / "bad.jsonl"
    bad_only.write_text('{"prompt": "a", "completion": ""}\n')
    result = run_cli("data", "check", str(bad_only), "--model", str(tiny[0]), "--skip-bad")
    assert result.returncode == 1 and "no usable training rows" in result.stderr
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"prompt": "the cat sat on the mat " * 8, "completion": "x"}) + "\n"
                            for _ in range(3)))
    result = run_cli("data", "check", str(long), "--model", str(tiny[0]), "--max-length", "16", "--skip-bad")
    assert result.returncode == 1 and "no usable training rows" in result.stderr
    assert "leaves no completion token" in result.stdout


def test_data_check_strict_and_skip_bad(tiny):
    strict = run_cli("data", "check", str(BAD / "wrong_fields.jsonl"), "--model", str(tiny[0]), "--json")
    report = json.loads(strict.stdout)
    assert strict.returncode == 1 and report["rejected"] == 4 and report["usable"] == 1
    assert strict.stderr.startswith("error: 4 bad rows (first: ") and strict.stderr.count("\n") == 1
    assert all(":" in e for e in report["errors"])
    lenient = run_cli("data", "check", str(BAD / "duplicate.jsonl"), "--model", str(tiny[0]),
                      "--skip-bad", "--max-bad-fraction", "0.6")
    assert lenient.returncode == 0, lenient.stderr
    over = run_cli("data", "check", str(BAD / "wrong_fields.jsonl"), "--model", str(tiny[0]), "--skip-bad")
    assert over.returncode == 1 and "more than --max-bad-fraction" in over.stderr


def test_data_check_report_on_real_classification_data(tiny):
    result = run_cli("data", "check", str(shared_file("banking77", "train.csv")), "--model", str(tiny[0]),
                     "--json", "--skip-bad")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and len(report["labels"]) == 77
    assert report["prompt_tokens"]["p50"] > 10 and report["truncated"] == 0


def test_awkward_inputs_are_clean_errors(tmp_path, tiny):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "a", "completion": {"x": 1}}\n{"prompt": "b", "completion": "plain"}\n')
    result = run_cli("data", "check", str(mixed), "--model", str(tiny[0]), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    table = tmp_path / "t.csv"
    table.write_bytes(b"\xef\xbb\xbfinput,label\nhello,greet\n")  # a spreadsheet's byte-order mark
    assert load_examples(table).examples[0].messages[-1].content == "hello"
    for template, message in [("{}: {label}", "name the columns in braces"), ("{input", "expected '}'"),
                              ("{label.x}", "name columns in braces")]:
        with pytest.raises(TinyTitanError, match=message):
            load_examples(table, DataSpec(input_template=template, output_columns=("label",)))
    huge = tmp_path / "huge.csv"
    huge.write_text("input,label\n" + "word " * 40000 + ",long\n")
    assert len(load_examples(huge).examples) == 1


def test_optional_fields_stay_absent_and_every_split_spells_keys_in_the_training_order(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [
        {"input": "12 Main St", "output": {"AddressNumber": "12", "StreetName": "Main", "StreetNamePostType": "St"}},
        {"input": "PO Box 7", "output": {"USPSBoxType": "PO Box", "USPSBoxID": "7"}},
        {"input": "Main St 12", "output": {"StreetNamePostType": "St", "AddressNumber": "12", "StreetName": "Main"}}]))
    # the test file meets the keys in another order first: its targets still follow the training file's
    test.write_text(json.dumps({"input": "Box 9, 3 Elm", "output": {"USPSBoxID": "9", "StreetName": "Elm",
                                                                     "AddressNumber": "3"}}) + "\n")
    report = load_examples(train)
    assert report.json_keys == ["AddressNumber", "StreetName", "StreetNamePostType", "USPSBoxType", "USPSBoxID"]
    assert [e.completion for e in report.examples] == [
        '{"AddressNumber":"12","StreetName":"Main","StreetNamePostType":"St"}',
        '{"USPSBoxType":"PO Box","USPSBoxID":"7"}',  # absent stays absent: no empty strings are added
        '{"AddressNumber":"12","StreetName":"Main","StreetNamePostType":"St"}']
    tested = load_examples(test, key_order=report.json_keys)
    assert tested.examples[0].completion == '{"AddressNumber":"3","StreetName":"Elm","USPSBoxID":"9"}'


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "x", "completion": {"v": NaN}}', "bad JSON (NaN is not a JSON value)"),
    ('{"prompt": "x", "completion": {"v": -Infinity}}', "bad JSON (-Infinity is not a JSON value)"),
    ('{"prompt": "x", "completion": {"v": 1, "v": 2}}', "bad JSON (the key 'v' appears twice in one object)"),
    ('{"prompt": "x", "completion": {"v": ' + "[" * 5000 + "]" * 5000 + "}}", "nested 5002 deep (at most 64)"),
    ('{"prompt": "x", "completion": {"v": 123456789012345678901}}', "completion.v: an integer of 21 digits"),
    ('{"prompt": "x", "completion": {"v": "a\u2581b"}}', 'completion.v: holds "\u2581" (U+2581), which Gemma'),
    ('{"prompt": "x", "completion": {"\u2581": "b"}}', 'completion (a key): holds "\u2581" (U+2581)'),
    ('{"prompt": "x", "completion": "two\u2581words"}', 'completion: holds "\u2581" (U+2581)'),
])
def test_values_json_has_no_spelling_for_are_bad_rows(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "ok", "completion": {"v": 1}}\n' + line + "\n")
    report = load_examples(path)
    assert len(report.examples) == 1 and [r.reason for r in report.rejected][0].startswith(reason)


def test_bom_crlf_and_a_10_mb_row_are_read_as_data(tmp_path):
    path = tmp_path / "rows.jsonl"
    long = "word " * 2_000_000
    rows = [{"prompt": "a [/INST] b", "completion": {"v": "x"}}, {"prompt": long, "completion": {"v": "y"}}]
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    report = load_examples(path)
    assert not report.rejected and [e.completion for e in report.examples] == ['{"v":"x"}', '{"v":"y"}']
    assert report.examples[1].messages[-1].content == long


def test_a_file_in_another_encoding_is_named_by_line_and_byte_and_read_when_told(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "ok", "completion": "a"}).encode() + b"\n" +
                     '{"prompt": "café", "completion": "b"}\n'.encode("latin-1"))
    report = load_examples(path)
    assert [str(r) for r in report.rejected] == [
        f"{path}:2: not valid UTF-8 (byte 0xE9 at byte 16 of the line); say the file's encoding with --encoding "
        f"(a recipe: encoding = \"...\"), e.g. latin-1, cp1252, cesu-8"]
    assert load_examples(path, DataSpec(encoding="latin-1")).examples[1].messages[-1].content == "café"
    check = run_cli("data", "check", str(path), "--model", "gemma-3-270m")
    assert check.returncode == 1 and "Traceback" not in check.stderr
    assert check.stderr.strip().splitlines()[-1].startswith(f"error: 1 bad row (first: {path}:2: not valid UTF-8 "
                                                             f"(byte 0xE9 at byte 16 of the line)")
    with pytest.raises(TinyTitanError, match="encoding 'klingon' is not one Python knows"):
        load_examples(path, DataSpec(encoding="klingon"))


def test_cesu_8_joins_surrogate_pairs_and_names_a_lone_one(tmp_path):
    from tinytitan.data.encodings import decode

    pizza = "🍕".encode("utf-16-le").decode("utf-16-le")
    cesu = "".join(chr(u) for u in (0xD83C, 0xDF55)).encode("utf-8", "surrogatepass")
    assert decode(b'"pie ' + cesu + b'"', "f.json", "cesu-8") == f'"pie {pizza}"'
    with pytest.raises(TinyTitanError, match=r"f.json:2: not valid UTF-8 \(byte 0xED at byte 3 of the line\)"):
        decode(b"ok\nab" + cesu, "f.json")
    with pytest.raises(TinyTitanError, match=r"f.json:1: not valid cesu-8 \(byte 0xED at byte 1 of the line\)"):
        decode(cesu[:3] + b"x", "f.json", "cesu-8")


def test_a_test_file_without_a_validation_file_splits_validation_off_training(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"row {i}", "completion": f"c{i % 3}"}) + "\n" for i in range(200)))
    test.write_text("".join(json.dumps({"prompt": f"test {i}", "completion": "c0"}) + "\n" for i in range(7)))
    result = run_cli("data", "check", str(train), "--test", str(test), "--model", "gemma-3-270m", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["split_mode"] == "hash-val" and stats["splits"]["test"] == 7
    assert stats["splits"]["train"] + stats["splits"]["val"] == 200 and 10 < stats["splits"]["val"] < 40
    shown = run_cli("data", "check", str(train), "--test", str(test), "--model", "gemma-3-270m")
    assert "validation split off the training file by hash of the input; test from its file" in shown.stdout


def test_data_schema_is_the_schema_run_infers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"input": f"{w} cat {i}", "output": {"w": w, **({"n": i} if i % 2 else {})}})
                            + "\n" for i, w in enumerate(["red", "blue"] * 20)))
    result = run_cli("data", "schema", str(path))
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["required"] == ["w"] and schema["properties"]["n"] == {"type": "integer"}  # n: optional
    assert schema["properties"]["w"]["enum"] == ["blue", "red"]
    text = tmp_path / "text.jsonl"
    text.write_text('{"input": "a", "output": "plain"}\n')
    refused = run_cli("data", "schema", str(text))
    assert refused.returncode == 1 and "needs every answer to be a JSON object" in refused.stderr


def test_data_check_never_wraps_a_value_when_piped(tmp_path):
    path = tmp_path / "rows.jsonl"
    place = "Cedar Rapids, a city on the Cedar River in Linn County, Iowa, United States of America [/INST]"
    path.write_text("".join(json.dumps({"prompt": f"where {i}", "completion": {"city": place, "n": str(i % 2)}})
                            + "\n" for i in range(30)))
    result = run_cli("data", "check", str(path), "--model", "gemma-3-270m", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("field city"))
    assert place in line  # one line, whatever the width; "[/INST]" printed as text, not read as markup
