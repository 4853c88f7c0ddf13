"""The README's Python API runs as written, and answers as `tinytitan eval` decodes.

The README's ```python blocks under "Python API" run in a folder laid out as the README's paths: the tiny
`files` recipe, named `ingredients`, at recipes/ingredients.toml, and runs/ingredients made from it by
`tinytitan run`. The README's `base` is the embedded 270M; the tiny run's adapter was trained on the tiny
model, which stands in for it here. Then: what `load` and `run` say to mistakes, one line each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import pytest

from tests.conftest import ROOT
from tinytitan.errors import TinyTitanError


def api_blocks() -> list[str]:
    """The README's ```python blocks in its "Python API" section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Python API")
    section = readme[start:readme.index("\n## ", start + 1)]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


@pytest.fixture(scope="module")
def workspace(recipe, tmp_path_factory):
    """(a folder laid out as the README's paths, what `tinytitan run recipes/ingredients.toml --json` printed)."""
    folder = tmp_path_factory.mktemp("workspace")
    (folder / "recipes").mkdir()
    shutil.copy(recipe / "rows.jsonl", folder / "recipes" / "rows.jsonl")
    text = (recipe / "tiny.toml").read_text()
    for old, new in (('name = "tiny"', 'name = "ingredients"'),
                     (f'output = "{recipe / "run"}"', 'output = "runs/ingredients"'),
                     ("max_tokens = 16", "max_tokens = 32")):  # room for a whole record, the tiny tokens being short
        assert old in text, old
        text = text.replace(old, new)
    (folder / "recipes" / "ingredients.toml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "tinytitan", "run", "recipes/ingredients.toml", "--json"],
                          cwd=folder, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr
    return folder, json.loads(done.stdout)


def test_the_readme_python_api_runs_as_written(workspace, tiny, monkeypatch):
    folder, printed = workspace
    monkeypatch.chdir(folder)
    monkeypatch.setattr("tinytitan.model.registry.default_model_path", lambda: tiny[0])
    blocks = api_blocks()
    assert len(blocks) == 3, blocks
    names: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), names)  # noqa: S102 (the README's own code)
    # tinytitan.run returns what `tinytitan run --json` printed; the run is up to date, so it did nothing
    summary = names["summary"]
    assert summary.keys() == printed.keys() and summary["nothing_to_do"] and not printed["nothing_to_do"]
    this_time = ("stages", "seconds", "nothing_to_do")
    assert {k: v for k, v in summary.items() if k not in this_time} == \
        {k: v for k, v in printed.items() if k not in this_time}
    schema = json.loads((folder / "runs" / "ingredients" / "schema.json").read_text())
    specialist, adapter = names["specialist"], names["adapter"]
    try:
        # a run: its recommended artifact, a JSON task, schema-valid dicts; a batch answers as one at a time
        assert specialist.answers == "json" and specialist.schema == schema and specialist.max_tokens == 32
        jsonschema.validate(names["answer"], schema)
        assert len(names["answers"]) == len(names["lines"]) == 2
        for record in names["answers"]:
            jsonschema.validate(record, schema)
        assert names["answers"] == [specialist(line) for line in names["lines"]]
        # base + adapter, with the schema from its file
        assert adapter.adapter.name == "ingredients-adapter-f16.gguf" and adapter.schema == schema
        jsonschema.validate(names["record"], schema)
    finally:
        specialist.close()
        adapter.close()
    # the dry run of a variant: the overrides' folder, the stages that would run there, nothing trained
    plan = names["plan"]
    assert plan["run"] == "runs/ingredients-1epoch" and plan["seconds"] > 0
    assert {s["stage"] for s in plan["stages"] if s["status"] == "would run"} >= {"prepare", "finetune", "report"}
    assert not (folder / "runs" / "ingredients-1epoch").exists()


def test_answers_are_the_constrained_decodes_eval_scored(workspace):
    """The run's recommended artifact answers its test rows as the eval stage decoded them (constrained)."""
    import tinytitan
    from tinytitan.evaluate.scoring import examples_file

    folder, printed = workspace
    run = folder / "runs" / "ingredients"
    scored = examples_file(run / "report" / "examples", printed["recommended"]["artifact"])
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    with tinytitan.load(run) as specialist:
        answers = specialist.batch([row["prompt"] for row in rows])
    assert answers == [json.loads(row["constrained_output"]) for row in rows]


def test_labels_text_and_a_classification_run(tiny, tmp_path):
    """(threads=1 here and below: on a busy 2-core machine, llama.cpp's threads wait on each other at every
    token; one thread decodes the tiny model as fast.)"""
    import tinytitan

    words = ["cat sat", "dog ran", "red mat", "blue cup", "one two"]
    with tinytitan.load(tiny[0], labels=["yes", "no", "maybe so"], max_tokens=8, threads=1) as labelled:
        assert labelled.answers == "label"
        picked = labelled.batch(words)
        assert all(label in ("yes", "no", "maybe so") for label in picked)
        assert picked == [labelled(word) for word in words]
    with tinytitan.load(str(tiny[0]), max_tokens=6, threads=1) as free:
        assert free.answers == "text" and all(isinstance(text, str) for text in free.batch(words))
    # a classification run: the labels of its training rows, from the report beside its fleet file
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "fleet.toml").write_text(f'[tasks.intent]\nmodel = "{tiny[0]}"\nmax_tokens = 8\n')
    (run / "summary.json").write_text(json.dumps({"task": "classification"}))
    labels = ["pet", "pet", "thing", "thing", "n"]
    rows = [{"prompt": word, "completion": label} for word, label in zip(words, labels)]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with tinytitan.load(run, threads=1) as intent:
        assert intent.answers == "label" and intent.labels == ("n", "pet", "thing") and intent.max_tokens == 8
        assert intent("cat sat") in intent.labels
    # a schema given replaces the run's labels: a JSON task
    schema = {"type": "object", "properties": {"pet": {"type": "boolean"}}, "required": ["pet"],
              "additionalProperties": False}
    with tinytitan.load(run, schema=schema, max_tokens=32, threads=1) as flagged:
        assert flagged.answers == "json" and flagged.labels == () and isinstance(flagged("cat sat"), dict)


def test_import_is_lazy():
    code = ("import sys, tinytitan\n"
            "heavy = ('tinytitan.specialist', 'tinytitan.pipeline', 'llama_cpp', 'numpy')\n"
            "print('LOADED', [m for m in heavy if m in sys.modules], callable(tinytitan.load), "
            "'load' in dir(tinytitan))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED [] True True" in out
    import tinytitan

    with pytest.raises(AttributeError, match="no attribute 'lode'"):
        tinytitan.lode  # noqa: B018


def one_line(call) -> str:
    with pytest.raises(TinyTitanError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_load_errors_name_the_thing_and_what_was_expected(tiny, recipe, tmp_path):
    from tinytitan import load

    gguf = str(tiny[0])
    assert "no such file or folder (expected a `tinytitan run` folder" in one_line(lambda: load(tmp_path / "nope"))
    for name, file in (("empty", None), ("finetuned", "config.json"), ("unreported", "stages.json"),
                       ("failed", "fleet.toml")):
        (tmp_path / name).mkdir()
        if file:
            (tmp_path / name / file).write_text("# no servable artifact passed its parity gate\n" if name == "failed"
                                                else "{}")
    assert "not a `tinytitan run` folder (no fleet.toml or stages.json)" in one_line(lambda: load(tmp_path / "empty"))
    assert "a fine-tuning folder: load a GGUF its export wrote" in one_line(lambda: load(tmp_path / "finetuned"))
    assert f"`tinytitan report {tmp_path / 'unreported'}`" in one_line(lambda: load(tmp_path / "unreported"))
    assert "passed its parity gate" in one_line(lambda: load(tmp_path / "failed"))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'[tasks.a]\nmodel = "{gguf}"\n[tasks.b]\nmodel = "{gguf}"\n')
    assert one_line(lambda: load(fleet)) == f"{fleet}: holds the tasks a, b: pass task=NAME"
    assert one_line(lambda: load(fleet, task="c")) == f"{fleet}: no task 'c' (known: a, b)"
    assert "a recipe, not a fleet file" in one_line(lambda: load(recipe / "tiny.toml"))
    assert "names a task of a fleet file" in one_line(lambda: load(gguf, task="a"))
    assert "'pattern' is not supported" in one_line(lambda: load(gguf, schema={"type": "string", "pattern": "a"}))
    assert "not a readable JSON file" in one_line(lambda: load(gguf, schema=str(tmp_path / "none.json")))
    assert "not both" in one_line(lambda: load(gguf, schema={"type": "string"}, labels=["a"]))
    assert one_line(lambda: load(gguf, max_tokens=0)) == "max_tokens=0: expected a whole number >= 1"
    assert one_line(lambda: load(gguf, threads="2")) == "threads='2': expected a whole number >= 1"
    assert "labels: expected a list of non-empty texts" in one_line(lambda: load(gguf, labels="yes"))


def test_call_errors_and_a_cut_answer(tiny):
    import tinytitan
    from tinytitan.specialist import AnswerError

    schema = {"type": "object", "properties": {"word": {"type": "string", "enum": ["alpha", "beta"]}},
              "required": ["word"], "additionalProperties": False}
    specialist = tinytitan.load(tiny[0], schema=schema, max_tokens=64, threads=1)
    assert "the input must be text, not int" in one_line(lambda: specialist(3))
    assert "batch() takes a list of texts, not one text" in one_line(lambda: specialist.batch("cat"))
    assert "texts[1] must be text" in one_line(lambda: specialist.batch(["cat", None]))
    assert specialist.batch([]) == []
    assert specialist("cat")["word"] in ("alpha", "beta")
    with pytest.raises(AnswerError) as caught:
        specialist("cat", max_tokens=3)  # `{"word":"alpha"}` takes more than 3 tokens
    assert "not complete JSON after max_tokens=3 tokens (raise max_tokens)" in str(caught.value)
    assert caught.value.input == "cat" and caught.value.text and not caught.value.text.endswith("}")
    with tinytitan.load(tiny[0], schema={"type": "string", "enum": ["a", "b"]}, threads=1) as word:
        assert word("cat") in ("a", "b")  # any JSON value a schema describes, not only objects
    specialist.close()
    assert "was closed" in one_line(lambda: specialist("cat"))


def test_run_errors_and_overrides_by_section(recipe, tmp_path):
    from tinytitan import run
    from tinytitan.pipeline.recipe import load_recipe

    toml = recipe / "tiny.toml"
    assert "no such recipe file" in one_line(lambda: run(tmp_path / "none.toml"))
    assert "unknown key or section 'trainer'" in one_line(lambda: run(toml, trainer={"a": 1}))
    assert "[finetune] unknown key 'epoch'" in one_line(lambda: run(toml, finetune={"epoch": 1}))
    assert "epochs" in one_line(lambda: run(toml, finetune={"epochs": "many"}))
    assert "threads=0: expected a whole number >= 1" in one_line(lambda: run(toml, threads=0))
    assert "output 3 must be a folder path" in one_line(lambda: load_recipe(toml, settings={"output": 3}))
    # sections as Python values take the path `--set` texts take
    by_text = load_recipe(toml, ["finetune.epochs=1", "export.quant=f16,q8_0", "name=quick"])
    by_value = load_recipe(toml, settings={"finetune": {"epochs": 1}, "export": {"quant": ["f16", "q8_0"]},
                                           "name": "quick"})
    assert by_text == by_value and by_value.finetune["epochs"] == 1 and by_value.name == "quick"
    # a dry run: the plan `--dry-run --json` prints
    plan = run(toml, export={"quant": ["f16", "q8_0"]}, output=tmp_path / "new", dry_run=True, quiet=True)
    assert plan["run"] == str(tmp_path / "new")
    assert {s["stage"] for s in plan["stages"] if s["status"] == "would run"} >= {"prepare", "finetune", "report"}
