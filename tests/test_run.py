"""`tinytitan run RECIPE` on the tiny model: every stage, then re-runs that redo only what changed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def stages(result) -> dict:
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    return {s["stage"]: s["status"] for s in summary["stages"]}, summary


def test_run_then_rerun_then_change_the_quant_list(recipe):
    first, summary = stages(run_cli("run", str(recipe / "tiny.toml"), "--json"))
    assert first == {"prepare": "ran", "check": "ran", "schema": "ran", "vocab": "not needed", "finetune": "ran",
                     "export": "ran", "distill": "not needed", "eval": "ran", "bench": "not needed", "report": "ran"}
    run = recipe / "run"
    assert (run / "report" / "report.html").exists() and (run / "fleet.toml").exists()
    schema = json.loads((run / "schema.json").read_text())
    assert list(schema["properties"]) == ["w", "n"] and schema["properties"]["w"]["enum"] == ["cat", "dog", "red"]
    artifacts = [r["artifact"] for r in summary["table"]]
    assert artifacts[0].startswith("torch") and any("f16" in a for a in artifacts) and artifacts[-2] == "base (few-shot)"
    # the classical baseline, trained on the same training rows (a record of two labels: one model per field)
    baseline = summary["table"][-1]
    assert baseline["artifact"] == "classical baseline (logistic regression per field)" and not baseline["servable"]
    assert baseline["answer_ms"] > 0 and baseline["size_mb"] > 0 and 0 <= baseline["score"] <= 1
    assert summary["verdict"].startswith(("The specialist", "The classical baseline"))
    assert "paired 95% CI" in summary["verdict"]
    report = (run / "report" / "report.md").read_text()
    assert f"**Verdict:** {summary['verdict'][:40]}" in report and "classical baseline (logistic regression" in report
    assert all(r["constrained"] is not None for r in summary["table"] if "torch" not in r["artifact"]
               and r["kind"] != "baseline")  # llama.cpp artifacts decode constrained too
    # the base's solved examples come from the training split: the first 8 test rows are all scored, by every artifact
    test_rows = [f"{run / 'data' / 'test.jsonl'}:{n}" for n in range(1, 9)]
    for scored in (run / "report" / "examples").glob("*.jsonl"):
        assert [json.loads(line)["source"] for line in scored.read_text().splitlines()] == test_rows, scored.name

    again = run_cli("run", str(recipe / "tiny.toml"))  # a finished recipe: nothing to do, and it says so
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert again.stderr.count("up to date") == 7

    changed, summary = stages(run_cli("run", str(recipe / "tiny.toml"), "--set", "export.quant=f16,q8_0", "--json"))
    assert changed == {"prepare": "up to date", "check": "up to date", "schema": "up to date",
                       "vocab": "not needed", "finetune": "up to date", "export": "ran", "distill": "not needed",
                       "eval": "ran", "bench": "not needed", "report": "ran"}
    assert any("q8_0" in r["artifact"] for r in summary["table"])


def test_a_dry_run_checks_everything_and_says_what_would_run(recipe, tmp_path):
    fresh = run_cli("run", str(recipe / "tiny.toml"), "--output", str(tmp_path / "new"), "--dry-run", "--json")
    assert fresh.returncode == 0, fresh.stderr
    plan = json.loads(fresh.stdout)
    assert [s["status"] for s in plan["stages"]] == ["would run"] * 3 + ["not needed"] + ["would run"] * 2 + \
        ["not needed", "would run", "not needed", "would run"]  # vocab, distill and bench are not asked for
    assert plan["rows"]["train"] > 0 and plan["fields"] == 2 and plan["seconds"] > 0
    assert not (tmp_path / "new").exists()  # nothing written where the run would go
    # the module's run ended with quant f16,q8_0: that is up to date, and a quant change redoes export onwards
    same = json.loads(run_cli("run", str(recipe / "tiny.toml"), "--set", "export.quant=f16,q8_0", "--dry-run",
                              "--json").stdout)
    assert {s["status"] for s in same["stages"]} == {"up to date", "not needed"}
    shown = run_cli("run", str(recipe / "tiny.toml"), "--dry-run")
    assert shown.returncode == 0 and "[5/10] finetune: up to date" in shown.stdout
    assert "[6/10] export: would run, about" in shown.stdout and "nothing was trained" in shown.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": {"v": NaN}}\n' * 3)
    (tmp_path / "bad.toml").write_text(f'[task]\ntrain = "{bad}"\n')
    failed = run_cli("run", str(tmp_path / "bad.toml"), "--dry-run")
    assert failed.returncode == 1 and "bad JSON (NaN is not a JSON value)" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_report_on_a_run_folder_is_the_report_stage_and_reuses_its_evaluations(recipe):
    run = recipe / "run"
    stage = json.loads((run / "summary.json").read_text())
    result = run_cli("report", str(run), "--no-bench", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    # the run's settings (8 rows, 2 shots from training, the schema): every artifact's rows are reused
    # (the classical baseline is trained anew: it takes a second and decodes nothing)
    assert result.stderr.count("its decoded rows are reused") == len(stage["table"]) - 1 == len(summary["table"]) - 1
    assert [(r["artifact"], r["score"], r["constrained"]) for r in summary["table"]] == \
        [(r["artifact"], r["score"], r["constrained"]) for r in stage["table"]]
    assert summary["recommended"]["artifact"] == stage["recommended"]["artifact"]
    assert summary["serve"] == f"tinytitan serve --fleet {run / 'fleet.toml'}"
    assert 'schema = "schema.json"' in (run / "fleet.toml").read_text()
    shown = run_cli("report", str(run / "train"), "--no-bench")  # the training folder names the same run
    assert shown.returncode == 0 and f"serve the recommended artifact: tinytitan serve --fleet {run / 'fleet.toml'}" \
        in shown.stdout


def test_recipe_errors_are_one_line(recipe, tmp_path):
    bad = tmp_path / "bad.toml"
    cases = [("[task]\nkind = 'files'\n", "[task] needs train"),
             ("[task]\nkind = 'nope'\ntrain = 'x'\n", "kind 'nope' is not one of"),
             ("[task]\nkind = 'files'\ntrain = 'x'\n[finetune]\nepoch = 2\n", "[finetune] unknown key 'epoch'"),
             ("[task]\nkind = 'files'\ntrain = 'x'\n[finetune]\noutput = 'y'\n", "output is set by the recipe"),
             ("[task]\nkind = 'files'\ntrain = 'x'\n[eval]\ntolerance = 'small'\n", "[eval] tolerance: expected a number"),
             ("[task]\nkind = 'files'\ntrain = 'x'\n[deploy]\n", "unknown key or section 'deploy'"),
             ("[task]\nkind = 'ingredients'\ncsv = 'x.csv'\nmax_rows = 3\n", "unknown key 'max_rows' for kind 'ingredients'"),
             ("[task]\nkind = 'ingredients'\nextra_csv = 'x.csv'\n", "[task] needs csv"),
             ("[task]\ntrain = 'x'\n[vocab]\ntrim = 'yes'\n", "[vocab] trim 'yes': expected one of train, export, off"),
             ("[task]\ntrain = 'x'\n[vocab]\nnegatives = -1\n", "[vocab] negatives must be >= 0"),
             ("[task]\ntrain = 'x'\n[vocab]\nkeep_top = -1\n", "[vocab] keep_top must be >= 0"),
             ("[task]\ntrain = 'x'\n[distill]\nhead_vocab = 'task'\n", "[distill] head_vocab: 'task' is not valid"),
             ("[task]\ntrain = 'x'\n[finetune]\ntrain_layers = 6\n[distill]\nstudent = 'layers:4'\n",
              "[distill] train_layers 6 is more than the student's 4 layers")]
    for text, message in cases:
        bad.write_text(text)
        result = run_cli("run", str(bad))
        assert result.returncode == 1 and message in result.stderr, (text, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = run_cli("run", str(recipe / "tiny.toml"), "--set", "finetune.epochs")
    assert result.returncode == 1 and "expected SECTION.KEY=VALUE" in result.stderr
    from tinytitan.pipeline.recipe import load_recipe

    bad.write_text("[task]\ntrain = 'x'\n[finetune]\nhead_vocab = 'task'\n[distill]\nstudent = 'layers:4'\n")
    assert load_recipe(bad).distill_finetune["head_vocab"] == "full"  # the specialist's task softmax: not the student's


def test_a_failed_data_check_leaves_the_report_it_points_to(recipe, tmp_path):
    out = tmp_path / "short"
    result = run_cli("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", "finetune.max_length=8")
    last = result.stderr.strip().splitlines()[-1]  # after the stage lines: one error line
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert last.startswith("error: no usable training rows") and "leaves no completion token" in last
    # no time estimate before the data is checked (a guess without its size jumped from 3 to 102 minutes)
    assert "[1/10] prepare: running (the time left is estimated once the data is checked)" in result.stderr
    assert "[2/10] check: running (the time left is estimated once the data is checked)" in result.stderr
    check = json.loads((out / "data" / "check.json").read_text())
    assert check["rejected"] > 0 and check["errors"][0].endswith("leaves no completion token to learn from")


def test_recommend_takes_the_smallest_within_tolerance_that_passed():
    from pathlib import Path

    from tinytitan.model.artifacts import Artifact
    from tinytitan.report.summary import recommend

    def row(label, kind, size, score, **fields):  # an eval row: what the Artifact says about itself, and scores
        artifact = Artifact(label, label, kind, Path(label), **fields)
        return {"artifact": label, **artifact.describe(), "size_mb": size, "score": score}

    rows = [row("torch (run)", "run", 1000, 0.95),
            row("x-f16", "gguf", 500, 0.90, gate="passed"),
            row("x-q8_0", "gguf", 280, 0.895, gate="passed"),
            row("x-q4_k_m (gate failed)", "gguf", 240, 0.90, gate="failed"),
            row("base+x-adapter-f16", "adapter", 250, 0.87, gate="passed"),
            row("base (few-shot)", "gguf", 240, 0.1, is_base=True)]
    assert [r["servable"] for r in rows] == [False, True, True, False, True, False]
    assert recommend(rows, 0.01)["artifact"] == "x-q8_0"  # within 1 point of the best servable (0.90)
    assert recommend(rows, 0.05)["artifact"] == "base+x-adapter-f16"
    assert recommend(rows, 0.0)["artifact"] == "x-f16"
    assert recommend(rows[:1] + rows[3:4] + rows[-1:], 0.5) is None  # nothing servable passed
    # served with the schema: judged by the constrained score (a trimmed copy level with the rest once constrained)
    served = [{**r, "constrained": r["score"]} for r in rows] + \
        [{**row("x-base-task+x-adapter-f16", "adapter", 100, 0.85, gate="passed", vocabulary=6000), "constrained": 0.895}]
    assert recommend(served, 0.01)["artifact"] == "x-q8_0"  # by the free score it is 5 points behind
    assert recommend(served, 0.01, constrained=True)["artifact"] == "x-base-task+x-adapter-f16"


def test_fleet_file_is_valid_toml_with_any_text():
    import tomllib

    from tinytitan.serve.fleet import toml_string

    text = 'Réponds en JSON 😀 "quoted" \\ back\nline'
    assert tomllib.loads(f"system = {toml_string(text)}")["system"] == text


def test_a_run_in_the_task_vocabulary_trains_exports_and_scores_the_trimmed_model(recipe, tmp_path):
    from tinytitan.model.gguf import read_gguf

    out = tmp_path / "task-vocab"
    first, summary = stages(run_cli("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", "vocab.trim=train",
                                    "--set", "vocab.keep_top=0", "--json"))
    assert first["vocab"] == "ran" and all(first[s] == "ran" for s in ("finetune", "export", "eval", "report"))
    base = out / "vocab" / "base-task.gguf"
    described = json.loads(base.with_suffix(".json").read_text())
    assert 0 < described["kept"] < described["of"]
    config = json.loads((out / "train" / "config.json").read_text())
    assert config["model"] == str(base)  # fine-tuned on the trimmed base
    # ... with the dropped tokens the untrained model found likeliest kept in its softmax
    assert config["head_negatives"] == str(out / "vocab" / "negatives.npy")
    import numpy as np

    negatives = np.load(out / "vocab" / "negatives.npy")
    assert negatives.shape == (described["negatives"], 64) and 0 < described["negatives"] <= described["of"] - described["kept"]
    kept = described["kept"]
    for gguf in (out / "train" / "export").glob("*.gguf"):
        if "adapter" not in gguf.name:  # every merged artifact holds the task vocabulary
            assert len(read_gguf(gguf).get("tokenizer.ggml.tokens")) == kept, gguf.name
    assert any(r["artifact"].startswith("base+") for r in summary["table"])
    import tomllib

    served = tomllib.loads((out / "fleet.toml").read_text())["tasks"]["tiny"]  # a model file or the base of an adapter
    assert len(read_gguf(served["model"]).get("tokenizer.ggml.tokens")) == kept
    # the vocabulary follows the data: a changed keep_top redoes vocab and everything trained on it
    again, _ = stages(run_cli("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", "vocab.trim=train",
                              "--set", "vocab.keep_top=0", "--json"))
    assert set(again.values()) <= {"up to date", "not needed"}
    planned = json.loads(run_cli("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", "vocab.trim=train",
                                 "--set", "vocab.keep_top=5", "--dry-run", "--json").stdout)
    statuses = {s["stage"]: s["status"] for s in planned["stages"]}
    assert statuses["vocab"] == statuses["finetune"] == statuses["eval"] == "would run"
    assert statuses["prepare"] == statuses["schema"] == "up to date"


def test_a_distill_stage_teaches_a_student_and_the_report_puts_it_beside_its_teacher(recipe, tmp_path):
    from tinytitan.model.gguf import read_gguf

    (recipe / "inputs.txt").write_text("".join(f"mat cup {500 + i}\n" for i in range(12)))
    out = tmp_path / "distilled"
    given = ("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", 'distill.student="layers:1"',
             "--set", 'distill.unlabelled="inputs.txt"', "--set", "distill.min_confidence=0",
             "--set", "distill.max_steps=3", "--set", "distill.kd_top_k=8", "--json")
    first, summary = stages(run_cli(*given))
    assert first["distill"] == "ran" and first["eval"] == "ran" and first["report"] == "ran", first
    student = out / "student"
    assert read_gguf(student / "distill" / "student.gguf").get("gemma3.block_count") == 1
    labels = json.loads((student / "distill" / "labels.json").read_text())["labels"]
    assert labels["inputs"] == 12 and labels["kept"] + sum(labels["dropped"].values()) == 12
    config = json.loads((student / "config.json").read_text())
    assert config["teacher"] == str(out / "train") and config["max_steps"] == 3 and config["kd_top_k"] == 8
    rows = {r["artifact"]: r for r in summary["table"]}
    assert "tiny-student-f16" in rows and "tiny-f16" in rows, list(rows)  # the student beside its teacher
    assert rows["tiny-student-f16"]["size_mb"] < rows["tiny-f16"]["size_mb"]
    assert "tiny-student-f16" in (out / "report" / "report.md").read_text()
    again, _ = stages(run_cli(*given))
    assert set(again.values()) <= {"up to date", "not needed"}, again
    changed, _ = stages(run_cli(*given, "--set", "distill.kd_weight=0.9"))
    assert changed["finetune"] == changed["export"] == "up to date" and changed["distill"] == changed["eval"] == "ran"


def test_a_resume_that_cannot_save_keeps_every_checkpoint_and_resumes_later(recipe, tmp_path, monkeypatch, capsys):
    """Given a fine-tune stopped by a full disk, when the resumed run hits the full disk again, then it exits
    with the error and every checkpoint remains; once there is room, the next run continues from the newest."""
    import errno

    from tinytitan.train import checkpoint
    from tinytitan.errors import TinyTitanError
    from tinytitan.pipeline.recipe import load_recipe
    from tinytitan.pipeline.run import Pipeline

    settings = load_recipe(recipe / "tiny.toml", ["finetune.save_every=2", "finetune.eval_every=2",
                                                   "finetune.keep_checkpoints=5", "vocab.trim=off"])
    settings.output = tmp_path / "run"
    real = checkpoint.write_atomic_dir
    saves = {"left": 1}

    def disk_fills(final, write):
        if final.name.startswith("step-"):
            if saves["left"] <= 0:
                def write(folder):  # noqa: F811 - the disk is full from here on
                    raise OSError(errno.ENOSPC, "No space left on device")
            saves["left"] -= 1
        return real(final, write)

    monkeypatch.setattr(checkpoint, "write_atomic_dir", disk_fills)
    steps = settings.output / "train" / "checkpoints"
    with pytest.raises(TinyTitanError, match="No space left on device; the previous checkpoint step-0000002 is intact"):
        Pipeline(settings, quiet=True).run()
    assert [p.name for p in steps.glob("step-*")] == ["step-0000002"]
    saves["left"] = 0  # resumed, and the disk is still full: an error, and nothing is deleted
    with pytest.raises(TinyTitanError, match="No space left on device"):
        Pipeline(settings, quiet=True).run()
    assert [p.name for p in steps.glob("step-*")] == ["step-0000002"]
    monkeypatch.setattr(checkpoint, "write_atomic_dir", real)  # room again: it continues from step 2
    capsys.readouterr()
    summary = Pipeline(settings, quiet=True).run()
    assert "resuming at step 2" in capsys.readouterr().err
    assert {s["stage"]: s["status"] for s in summary["stages"]}["finetune"] == "ran"
    assert not list(tmp_path.glob("run/train.replaced-*"))
    # a changed setting cannot continue: the earlier training is set aside, never deleted
    changed = load_recipe(recipe / "tiny.toml", ["finetune.save_every=2", "finetune.learning_rate=1e-3",
                                                  "vocab.trim=off"])
    changed.output = settings.output
    Pipeline(changed, quiet=True).run()
    aside = list(tmp_path.glob("run/train.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoints").is_dir()
