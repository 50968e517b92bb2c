"""Plain aligned text tables with optional per-cell colour.

Cells are padded on their plain text and styled afterwards, so colour codes
never shift columns; click.echo strips the codes when stdout is not a TTY.
Every cell goes through `printable` first: names, owners and causes come from
etcd, where any writer could put terminal escapes that fake or hide rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import click

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with C0/C1 control characters and DEL shown as `\\xNN` (terminal-safe);
    `lines` keeps newlines (multi-line messages)."""
    pattern = _CONTROLS_BUT_NEWLINE if lines else _CONTROLS
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class Cell:
    text: str
    fg: str | None = None
    bold: bool = False


def render(headers: Sequence[str], rows: Sequence[Sequence[Cell | str]]) -> str:
    """Columns separated by two spaces, a bold header row, no trailing blanks."""
    cells = [
        [
            Cell(printable(c.text), c.fg, c.bold) if isinstance(c, Cell) else Cell(printable(c))
            for c in row
        ]
        for row in rows
    ]
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
