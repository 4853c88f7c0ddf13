"""Tables for people, written one way: fixed-width columns for the terminal (`fixed_row`), pipe tables
for the Markdown report (`markdown_table`), and "-" in a cell that has no value (`format_cell`).
Rich tables (`info`, `export`, `parity`) are drawn by `rich`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_cell(value, pattern: str) -> str:
    """`value` formatted by `pattern` ("{:.1f}"), or "-" where there is none."""
    return "-" if value is None else pattern.format(value)


def interval(bounds: Sequence[float]) -> str:
    """A 95% interval of fractions as a cell, spelled one way everywhere: "37.0-51.7%"."""
    low, high = bounds
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def fixed_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of a fixed-width table, one space between columns: a cell is right-aligned in its width,
    or, where the width is negative, left-aligned and cut to fit (the artifact names)."""
    return " ".join(cell[:-width].ljust(-width) if width < 0 else cell.rjust(width)
                    for cell, width in zip(cells, widths, strict=True))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown pipe table: the header, its rule and one line per row (cells already escaped)."""
    return [_markdown_row(header), "|" + "---|" * len(header)] + [_markdown_row(row) for row in rows]


def _markdown_row(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"  # an empty cell: "| |"
