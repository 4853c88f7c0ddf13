"""Tables for people, written one way: fixed-width columns for the terminal (`fixed_row`), intervals
(`interval`), and "-" in a cell that has no value (`format_cell`). Rich tables (`info`, `export`,
`parity`) are drawn by `rich`; the report's tables by its templates (report/templates/)."""

from __future__ import annotations

from collections.abc import Sequence


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
