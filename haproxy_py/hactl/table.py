"""Plain aligned text tables with optional per-cell colour.

Cells are padded on their plain text and styled afterwards, so colour codes
never shift columns; click.echo strips the codes when stdout is not a TTY.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Cell:
    text: str
    fg: str | None = None
    bold: bool = False


def render(headers: Sequence[str], rows: Sequence[Sequence[Cell | str]]) -> str:
    """Columns separated by two spaces, a bold header row, no trailing blanks."""
    cells = [[c if isinstance(c, Cell) else Cell(c) for c in row] for row in rows]
    head = [Cell(h, bold=True) for h in headers]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell.text))
    lines = []
    for row in [head, *cells]:
        parts = []
        for i, cell in enumerate(row):
            padded = cell.text if i == len(row) - 1 else cell.text.ljust(widths[i])
            if cell.fg or cell.bold:
                padded = click.style(padded, fg=cell.fg, bold=cell.bold)
            parts.append(padded)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
