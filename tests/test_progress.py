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
