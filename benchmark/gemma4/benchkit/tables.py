"""Markdown tables: one header row, the ``|---|`` rule and the body rows, as lines."""

from __future__ import annotations

from typing import Any, Iterable, List, Sequence


def row(cells: Sequence[Any]) -> str:
    """``| a | b |``: the cells as ``str()`` gives them, one space either side of every ``|``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rule(columns: int) -> str:
    """``|---|---|`` for ``columns`` columns."""
    return "|" + "---|" * columns


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]] = ()) -> List[str]:
    """The lines of a table: header, rule, then one line per row."""
    return [row(header), rule(len(header)), *(row(r) for r in rows)]
