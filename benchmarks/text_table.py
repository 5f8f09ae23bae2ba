"""Printing a benchmark's rows as an aligned plain-text table."""
from __future__ import annotations

from collections.abc import Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """``header``, a rule and ``rows``, each cell left-aligned in its column, columns separated by ``|``."""
    lines = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in [lines[0], tuple("-" * width for width in widths), *lines[1:]]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths)))
