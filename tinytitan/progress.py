"""Progress bars for long work: on stderr (stdout stays clean for --json), gone when done."""

from __future__ import annotations


def progress_bar(label: str, *, bytes_: bool = False):
    """A rich Progress with a bar, done/total, ETA, and a free `{task.fields[note]}` column."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    count = DownloadColumn() if bytes_ else MofNCompleteColumn()
    # off when stderr is not a terminal: a log gets no half-drawn bars or stray blank lines
    return Progress(TextColumn(f"[bold]{label}"), TextColumn("{task.description}"), BarColumn(), count,
                    TextColumn("{task.fields[note]}"), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)
