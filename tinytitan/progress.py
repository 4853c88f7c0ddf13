"""Progress for long work, on stderr (stdout stays clean for --json): a bar on a terminal, gone when done;
in a log (CI, a notebook, `make demo > log 2>&1`) a plain line every 30 s instead, so a long step shows life.

In a log, `LogLines` prints its state on a timer, not only when the work reports (a batch of decodes may
take minutes between reports), and `heartbeat(label)` around a stage prints a line whenever nothing else
has for that long (loading, quantizing and other steps without a bar of their own)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

EVERY = 30.0  # seconds between log lines (TINYTITAN_PROGRESS_EVERY overrides)
_last_line = [time.monotonic()]  # when a progress line was last printed, by anyone


def log_interval() -> float:
    """Seconds between progress lines in a log."""
    return float(os.environ.get("TINYTITAN_PROGRESS_EVERY", EVERY))


def logging_to_file() -> bool:
    """True when stderr is not a terminal: progress goes to a log as lines."""
    return not sys.stderr.isatty()


class _Ticker:
    """Calls `tick` every second on a daemon thread until closed."""

    def __init__(self, tick) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(tick,), daemon=True)
        self.thread.start()

    def _loop(self, tick) -> None:
        while not self.stop.wait(1.0):
            tick()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def heartbeat(label: str):
    """While the body runs (in a log only): `LABEL: working, 2.5 min elapsed` whenever no progress line has been
    printed for `log_interval()` seconds."""
    began, interval = time.monotonic(), log_interval()
    if not logging_to_file() or interval <= 0:
        yield
        return

    def tick() -> None:
        now = time.monotonic()
        if now - _last_line[0] >= interval:
            _say(f"{label}: working, {duration(now - began)} elapsed")

    ticker = _Ticker(tick)
    try:
        yield
    finally:
        ticker.close()


def _say(line: str) -> None:
    _last_line[0] = time.monotonic()
    print(line, file=sys.stderr, flush=True)


def progress_bar(label: str, *, bytes_: bool = False):
    """A rich Progress with a bar, done/total, ETA, and a free `{task.fields[note]}` column; `LogLines` with
    the same methods when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    if not console.is_terminal:  # half-drawn bars would fill a log with escape codes: lines instead
        return LogLines(label, bytes_=bytes_)
    count = DownloadColumn() if bytes_ else MofNCompleteColumn()
    return Progress(TextColumn(f"[bold]{label}"), TextColumn("{task.description}"), BarColumn(), count,
                    TextColumn("{task.fields[note]}"), TimeRemainingColumn(), console=console, transient=True)


class LogLines:
    """Progress as plain lines: `LABEL: DESCRIPTION done/total (pct), NOTE, elapsed, about ... left` at most
    every `every` seconds while work goes on (none for work shorter than that), and one at the end of work
    that printed any. The methods rich's Progress has that tinytitan uses: add_task, update, advance."""

    def __init__(self, label: str, *, bytes_: bool = False, every: float | None = None):
        self.label, self.bytes = label, bytes_
        self.every = every if every is not None else log_interval()
        self.tasks: list[dict] = []
        self.lock = threading.Lock()
        self.ticker = None

    def __enter__(self):
        if self.every > 0:  # 0: a line at every report, no timer
            self.ticker = _Ticker(self._tick)
        return self

    def _tick(self) -> None:  # the latest task's state, when the work has not reported for a while
        with self.lock:
            if self.tasks:
                task = self.tasks[-1]
                if time.monotonic() - task["last"] >= self.every and not task.get("finished"):
                    task["last"] = time.monotonic()
                    self._print(task)

    def __exit__(self, *exc) -> None:
        if self.ticker:
            self.ticker.close()
        for task in self.tasks:
            if task["printed"] and exc[0] is None:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        now = time.monotonic()
        with self.lock:
            self.tasks.append({"description": description, "total": total, "completed": completed, "start": completed,
                               "fields": fields, "began": now, "last": now, "printed": False})
            return len(self.tasks) - 1

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields) -> None:
        with self.lock:
            self._update(self.tasks[task_id], completed, advance, total, description, fields)

    def _update(self, task: dict, completed, advance, total, description, fields) -> None:
        if completed is not None:
            task["completed"] = completed
        if advance:
            task["completed"] += advance
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)
        task["finished"] = bool(task["total"]) and task["completed"] >= task["total"]
        now = time.monotonic()
        if now - task["last"] >= self.every:
            task["last"] = now
            self._print(task)

    def advance(self, task_id: int, amount: float = 1) -> None:
        self.update(task_id, advance=amount)

    def _print(self, task: dict) -> None:
        done, total = task["completed"], task["total"]
        elapsed = time.monotonic() - task["began"]
        unit = (lambda n: f"{n / 2**20:.0f} MiB") if self.bytes else (lambda n: f"{n:,.0f}")
        parts = [f"{self.label}: {task['description']} {unit(done)}" + (f"/{unit(total)} ({done / total:.0%})"
                                                                         if total else "")]
        note = task["fields"].get("note")
        if note:
            parts.append(str(note))
        parts.append(f"{duration(elapsed)} elapsed")
        rate = (done - task["start"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            parts.append(f"about {duration((total - done) / rate)} left")
        _say(", ".join(parts))
        task["printed"] = True


def duration(seconds: float) -> str:
    """Seconds as people read them: "42 s", "3.5 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
