"""Nothing a user made is lost: one writer per run folder, a run never writes into a folder of the
user's, a failed export leaves the previous one serving, and a kill at any point leaves no file cut
short (given -> when -> then; faults injected where a real one is impractical)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _start_run(recipe: Path, out: Path, *sets: str, json_output: bool = True) -> subprocess.Popen:
    args = [sys.executable, "-m", "tinytitan", "run", str(recipe / "tiny.toml"), "--output", str(out)]
    args += ["--json"] if json_output else []
    for setting in sets:
        args += ["--set", setting]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_on_the_same_folder_stops_naming_the_first_which_finishes(recipe, tmp_path):
    out = tmp_path / "run"
    first = _start_run(recipe, out)
    lock = out / ".tinytitan.lock"
    deadline = time.monotonic() + 120
    while "pid" not in (lock.read_text() if lock.exists() else "") and first.poll() is None:
        assert time.monotonic() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start: nothing was tested"
    second = run_cli("run", str(recipe / "tiny.toml"), "--output", str(out))
    still_running = first.poll() is None
    stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"error: {out}: in use by tinytitan run (pid {first.pid}, since "
        f"{second.stderr.split('since ')[1].split(')')[0]}); wait for it to finish, or give another folder"]
    assert still_running  # the second stopped while the first was working, not after it
    assert first.returncode == 0, stderr
    summary = json.loads(stdout)
    assert {s["status"] for s in summary["stages"]} <= {"ran", "not needed"}
    assert json.loads((out / "summary.json").read_text())["recommended"] == summary["recommended"]
    assert (out / "report" / "report.html").is_file()


def test_an_output_folder_holding_other_files_is_refused_and_left_alone(recipe, tmp_path):
    mine = tmp_path / "my-project"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "notes.txt").write_text("my notes")
    (mine / "train.py").write_text("print('mine')")
    before = _files(mine)
    result = run_cli("run", str(recipe / "tiny.toml"), "--output", str(mine))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {mine}: not empty and not a tinytitan run folder (it holds 'data' and "
                                     f"1 more); give a new or empty folder as --output (or the recipe's output)")
    assert _files(mine) == before and sorted(p.name for p in mine.iterdir()) == ["data", "train.py"]


def test_a_reexport_whose_quantizer_fails_leaves_the_previous_export_and_fleet_serving(recipe, tmp_path,
                                                                                       monkeypatch):
    from tinytitan.export import native_tools
    from tinytitan.errors import TinyTitanError
    from tinytitan.pipeline.recipe import load_recipe
    from tinytitan.pipeline.run import Pipeline
    from tinytitan.serve.fleet import load_fleet

    settings = load_recipe(recipe / "tiny.toml", ["vocab.trim=off"])
    settings.output = tmp_path / "run"
    Pipeline(settings, quiet=True).run()
    export = settings.output / "train" / "export"
    fleet = settings.output / "fleet.toml"
    before, fleet_before = _files(export), fleet.read_text()

    broken = tmp_path / "llama-quantize"  # writes half a file, then fails, as a full disk would
    broken.write_text('#!/bin/sh\nhead -c 1000 "$1" > "$2"\necho "write error: No space left on device" >&2\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setattr(native_tools, "find_tool", lambda name: broken)
    requantized = load_recipe(recipe / "tiny.toml", ["vocab.trim=off", "export.quant=f16,q8_0"])
    requantized.output = settings.output
    with pytest.raises(TinyTitanError, match="llama-quantize failed for q8_0: write error: No space left on device"):
        Pipeline(requantized, quiet=True).run()

    assert _files(export) == before and fleet.read_text() == fleet_before
    [task] = load_fleet(fleet)  # every file it names is still there, and serves
    from tinytitan.model.chat_format import encode_chat
    from tinytitan.model.engines import load_engine

    engine = load_engine("llama", str(task.model), lora=str(task.adapter) if task.adapter else None, n_ctx=256)
    prompt = encode_chat(engine, [{"role": "user", "content": "cat dog 1"}])
    assert len(engine.generate_greedy_batch([prompt], 4)) == 1
    engine.close()
    monkeypatch.undo()
    summary = Pipeline(requantized, quiet=True).run()  # fixed: the next run builds the new export in its place
    assert any("q8_0" in row["artifact"] for row in summary["table"])
    assert not (export.parent / "export.new").exists() and not (export.parent / "export.old").exists()


def _check_whole(out: Path) -> int:
    """Every JSON and TOML file of the run folder parses (temporary files of a killed writer aside)."""
    checked = 0
    for path in out.rglob("*"):
        if not path.is_file() or path.name.startswith(".") or ".staging-" in str(path) or "export.new" in str(path):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text())
        else:
            continue
        checked += 1
    return checked


def test_killed_at_random_points_of_export_eval_and_report_the_next_run_completes(recipe, tmp_path):
    """20 `kill -9`s of the whole process group at random moments of runs that redo export, eval and report:
    after each, every file of the run folder is whole; then a run finishes."""
    out = tmp_path / "run"
    first = _start_run(recipe, out)
    assert first.wait(timeout=600) == 0, first.stderr.read()

    def until_export(run: subprocess.Popen) -> float:
        """Read the run's progress until its export stage starts; returns when that was."""
        for line in run.stderr:
            if "export: running" in line:
                return time.monotonic()
        raise AssertionError(f"the run ended before its export stage (exit {run.wait()})")

    redo = _start_run(recipe, out, "export.gate_rows=7", json_output=False)  # export and everything after it
    began = until_export(redo)
    assert redo.wait(timeout=600) == 0
    span = time.monotonic() - began  # export, eval and report
    rng = random.Random(19)
    kills = attempts = 0
    while kills < 20:
        attempts += 1  # every run differs from the one before it, so each redoes the export
        run = _start_run(recipe, out, f"export.gate_rows={[5, 6][attempts % 2]}", json_output=False)
        time.sleep(max(0.0, until_export(run) + rng.uniform(0, 0.9 * span) - time.monotonic()))
        if run.poll() is None:  # else it was quicker this time: not a kill, and the loop goes on
            os.killpg(run.pid, signal.SIGKILL)
            kills += 1
        run.communicate(timeout=60)
        assert _check_whole(out) > 5
    last = _start_run(recipe, out, f"export.gate_rows={[5, 6][(attempts + 1) % 2]}")
    stdout, stderr = last.communicate(timeout=600)
    assert last.returncode == 0, stderr
    assert json.loads(stdout)["recommended"] and _check_whole(out) > 5
    # files cut short by something else (a full disk, an editor): read as absent and computed again
    for name in ("report/eval.json", "stages.json", "summary.json"):
        path = out / name
        path.write_bytes(path.read_bytes()[:40])
    report = run_cli("report", str(out), "--no-bench", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["recommended"] and json.loads((out / "report" / "eval.json").read_text())
    again = run_cli("run", str(recipe / "tiny.toml"), "--output", str(out), "--set", "export.gate_rows=6", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["recommended"]
