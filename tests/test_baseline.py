"""The classical baseline (evaluate/baseline.py): tags aligned and rebuilt, models that learn, rows in the
table, and the verdict line."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import run_cli
from tinytitan.evaluate.baseline import NoBaseline, RecordModel, align, field_kinds, fit_baseline, tokenize

UNITS = ["cup", "tbsp", "tsp", "oz", "pound", "clove"]
NAMES = ["sugar", "brown sugar", "olive oil", "garlic", "red onion", "salt", "plain flour", "whole milk"]
PREPARATIONS = ["", "chopped", "finely chopped", "sifted", "melted", "thinly sliced"]


def ingredient_lines(count: int, seed: int) -> tuple[list[str], list[dict]]:
    """Ingredient-like lines and their records: quantity, unit (plural in the text, singular in the record),
    name, preparation after a comma; quantities such as "1 ½" are written "1½" in the record."""
    rng = random.Random(seed)
    inputs, records = [], []
    for _ in range(count):
        quantity, unit = rng.choice(["1", "2", "3", "1 ½", "12"]), rng.choice(UNITS)
        name, preparation = rng.choice(NAMES), rng.choice(PREPARATIONS)
        said = unit + ("s" if quantity != "1" and unit != "oz" else "")
        inputs.append(f"{quantity} {said} {name}" + (f", {preparation}" if preparation else ""))
        records.append({"quantity": quantity.replace(" ", ""), "unit": unit, "name": name,
                        "preparation": preparation})
    return inputs, records


def test_tags_rebuild_every_aligned_record_exactly():
    """Gold tags from the alignment, rebuilt, give back the record: words joined ("1" "½" -> "1½"), a plural
    written in the record's form, an empty field as ""."""
    inputs, records = ingredient_lines(200, seed=1)
    model = RecordModel(inputs, records)
    assert model.details["aligned_rows"] == 200 and model.method == "CRF"
    assert model.forms[("unit", "cups")] == "cup" and ("name", "sugar") not in model.forms
    for text, record in zip(inputs, records):
        tokens = tokenize(text)
        tags, _ = align(tokens, record, model.kinds)
        assert model._rebuild(tokens, tags) == record, text
    tokens = tokenize("1 ½-inch (100g) tobymac's")
    assert [t[0] for t in tokens] == ["1", "½", "-", "inch", "(", "100", "g", ")", "tobymac", "'", "s"]
    assert align(tokenize("2 cups sugar"), {"quantity": "2", "unit": "cup", "name": "honey", "preparation": ""},
                 model.kinds) is None  # "honey" is no word of the input


def test_the_crf_learns_records_and_the_label_model_learns_labels():
    inputs, records = ingredient_lines(300, seed=2)
    baseline = fit_baseline("extraction", inputs, [json.dumps(r) for r in records])
    test_inputs, test_records = ingredient_lines(100, seed=3)
    predicted = [json.loads(answer) for answer in baseline.predict(test_inputs)]
    assert sum(p == r for p, r in zip(predicted, test_records)) >= 95  # a learnable pattern, learned
    assert baseline.size_bytes > 0 and baseline.train_seconds < 60

    rng = random.Random(4)
    topics = {"card": ["my card is lost", "card stopped working", "where is my new card"],
              "refund": ["I want my money back", "refund please", "how do I get a refund"]}
    rows = [(f"{rng.choice(texts)} {rng.randint(1, 99)}", label) for _ in range(60) for label, texts in topics.items()]
    labels = fit_baseline("classification", [t for t, _ in rows], [label for _, label in rows])
    assert labels.method == "TF-IDF + logistic regression"
    assert labels.predict(["my card was lost 7", "a refund for me 3"]) == ["card", "refund"]

    # a record of labels only: one label model per field
    both = fit_baseline("extraction", [t for t, _ in rows], [json.dumps({"topic": label}) for _, label in rows])
    assert both.method == "logistic regression per field"
    assert json.loads(both.predict(["refund please 5"])[0]) == {"topic": "refund"}


def test_no_baseline_says_why():
    with pytest.raises(NoBaseline, match="free text"):
        fit_baseline("generation", ["tell me a story"] * 3, ["Once upon a time.", "A fox.", "The end."])
    with pytest.raises(NoBaseline, match='field "where" holds object'):
        fit_baseline("extraction", ["a b"] * 3, [json.dumps({"where": {"x": "a"}})] * 3)
    with pytest.raises(NoBaseline, match="only 0 of 30 training records"):
        fit_baseline("extraction", [f"word {i}" for i in range(30)],
                     [json.dumps({"name": f"other{i} thing"}) for i in range(30)])
    kinds, required = field_kinds([{"a": "x y", "b": ["p", "q"]}, {"a": "z", "b": "p"}])
    assert kinds == {"a": "text", "b": "either"} and required == {"a", "b"}


def test_eval_scores_the_baseline_like_an_artifact(tiny, tmp_path):
    """`tinytitan eval --baseline TRAIN`: a row of the table with the task's metrics, its interval, size and
    per-answer time, and its per-example file; a free-text task says that none applies."""
    inputs, records = ingredient_lines(160, seed=5)
    rows = [json.dumps({"prompt": text, "completion": record}) + "\n" for text, record in zip(inputs, records)]
    (tmp_path / "train.jsonl").write_text("".join(rows[:120]))
    (tmp_path / "test.jsonl").write_text("".join(rows[120:]))
    result = run_cli("eval", str(tiny[0]), "--data", str(tmp_path / "test.jsonl"), "--baseline",
                     str(tmp_path / "train.jsonl"), "--max-tokens", "8", "--no-constrained", "--out",
                     str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["task"]
    row = task["results"][-1]
    assert row["artifact"] == "classical baseline (CRF)" and row["kind"] == "baseline" and not row["servable"]
    assert row["headline"] == "exact_match" and row["score"] >= 0.9 and row["ci95"][0] <= row["score"]
    assert row["size_mb"] > 0 and row["baseline"]["ms_per_answer"] > 0 and row["baseline"]["train_rows"] == 120
    assert task["baseline"]["method"] == "CRF" and "classical baseline: CRF, trained on 120 rows" in result.stderr
    written = [json.loads(line) for line in (tmp_path / "out" / "classical_baseline__CRF.jsonl").read_text().splitlines()]
    assert len(written) == 40 and sum(r["correct"] for r in written) / 40 == row["score"]

    stories = tmp_path / "stories.jsonl"
    stories.write_text("".join(json.dumps({"prompt": f"story {i}", "completion": f"Once, {i} foxes ran far away "
                                           f"over the hill {i * 7}."}) + "\n" for i in range(12)))
    shown = run_cli("eval", str(tiny[0]), "--data", str(stories), "--baseline", str(stories), "--max-tokens", "4",
                    "--no-constrained")
    assert shown.returncode == 0, shown.stderr
    assert "classical baseline: none (free text" in shown.stdout


def test_the_verdict_line(tmp_path):
    """Beats, level or loses, with a paired interval; the advice reads the training run."""
    from tinytitan.report.verdict import verdict

    def write(label: str, verdicts: list[int]) -> None:
        from tinytitan.evaluate.scoring import examples_file

        path = examples_file(tmp_path / "examples", label)
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"correct": float(v), "constrained_correct": float(v)}) + "\n"
                                for v in verdicts))

    run = tmp_path / "train"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "lora", "lora_rank": 16}))
    (run / "metrics.jsonl").write_text('{"step": 5, "val_loss": 1.0, "best": true}\n'
                                       '{"step": 10, "val_loss": 0.9, "best": true}\n')
    evaluation = {"baseline": {"artifact": "classical baseline (CRF)", "method": "CRF", "train_seconds": 3.0}}
    pick = {"artifact": "q8_0", "metric": "exact_match"}
    write("classical baseline (CRF)", [1] * 50 + [0] * 50)
    write("q8_0", [1] * 90 + [0] * 10)
    said = verdict(evaluation, pick, tmp_path, run, constrained=True)
    assert said.startswith("The specialist (q8_0, constrained) beats the classical baseline (CRF, trained in 3.0 s) "
                           "by +40.0 points of record exact match (paired 95% CI +")
    write("q8_0", [1] * 50 + [0] * 50)
    said = verdict(evaluation, pick, tmp_path, run, constrained=False)
    assert "are level: +0.0 points" in said and "more epochs (the validation loss was still falling" in said
    assert "a bigger LoRA rank than 16" in said
    write("q8_0", [0] * 100)
    said = verdict(evaluation, pick, tmp_path, run, constrained=False)
    assert said.startswith("The classical baseline (CRF, trained in 3.0 s) beats the specialist (q8_0): -50.0 points")
    assert verdict({"baseline": {"none": "free text"}}, pick, tmp_path, run, False) == \
        "No classical baseline applies: free text."
    assert verdict({}, pick, tmp_path, run, False) is None
