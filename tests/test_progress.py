"""Progress in a log: when stderr is not a terminal, long work prints a plain line at a steady interval
instead of a bar (CI logs and notebooks show life), and nothing for work shorter than the interval."""

from __future__ import annotations

import re

from tests.conftest import run_cli


def test_log_lines_say_done_total_note_and_time_left(capsys, monkeypatch):
    from tinytitan.progress import LogLines, progress_bar

    assert isinstance(progress_bar("x"), LogLines)  # pytest's stderr is no terminal
    with LogLines("teacher t.gguf", every=0) as progress:
        task = progress.add_task("rows", total=200, note="")
        progress.update(task, completed=50, note="loss 0.1234")
        progress.advance(task, 50)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines  # two updates and the end
    assert re.fullmatch(r"teacher t\.gguf: rows 50/200 \(25%\), loss 0\.1234, \d+ s elapsed(, about \d+ s left)?",
                        lines[0]), lines[0]
    assert lines[1].startswith("teacher t.gguf: rows 100/200 (50%), loss 0.1234, ")
    assert lines[2].startswith("teacher t.gguf: rows 100/200 (50%)")
    with LogLines("quick", every=3600) as progress:  # shorter than the interval: silent, start to end
        progress.update(progress.add_task("rows", total=3), completed=3)
    assert capsys.readouterr().err == ""


def test_fine_tuning_into_a_log_prints_steps_loss_and_speed(tiny, tmp_path):
    from tests.test_finetune import finetune_args

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"prompt": "cup {i}", "completion": "mat {i % 3}"}}\n' for i in range(40)))
    result = run_cli(*finetune_args(tiny, rows, tmp_path / "run", "--max-steps", "4", "--eval-every", "100"),
                     env={"TINYTITAN_PROGRESS_EVERY": "0"})
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("finetune: steps ")]
    assert steps and re.match(r"finetune: steps 4/4 \(100%\), loss \d+\.\d{4}  \d+ tok/s, \d+ s elapsed$",
                              steps[-1]), result.stderr


def test_log_lines_keep_printing_while_the_work_is_silent(capsys):
    """A batch of decodes may report only at its end: the timer prints the state meanwhile."""
    import time

    from tinytitan.progress import LogLines

    with LogLines("eval x.gguf", every=1.0) as progress:
        task = progress.add_task("rows", total=10)
        progress.update(task, completed=4)
        time.sleep(2.6)  # no report: the ticker says where the work stands
        progress.update(task, completed=10)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("eval x.gguf: rows 4/10 (40%), ") and len(lines) >= 3, lines
    assert lines[-1].startswith("eval x.gguf: rows 10/10 (100%), ")


def test_heartbeat_speaks_only_when_nothing_else_does(capsys, monkeypatch):
    import time

    from tinytitan.progress import LogLines, heartbeat

    monkeypatch.setenv("TINYTITAN_PROGRESS_EVERY", "1")
    with heartbeat("[5/9] export"):
        time.sleep(2.5)
    quiet = capsys.readouterr().err.splitlines()
    assert len(quiet) >= 1 and all(re.fullmatch(r"\[5/9\] export: working, \d s elapsed", line) for line in quiet), quiet
    with heartbeat("[6/9] eval"), LogLines("eval", every=0.2) as progress:
        task = progress.add_task("rows", total=100)
        for done in range(1, 26):  # lines flow: the heartbeat stays silent
            progress.update(task, completed=done)
            time.sleep(0.1)
    busy = capsys.readouterr().err.splitlines()
    assert busy and not any("working" in line for line in busy), busy
