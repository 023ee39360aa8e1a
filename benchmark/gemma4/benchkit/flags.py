"""Command-line flags in argument lists: the value argparse would take for a flag."""

from __future__ import annotations

from typing import Optional, Sequence


def get_flag(args: Sequence[str], flag: str) -> Optional[str]:
    """The value the last occurrence of ``flag`` gives (argparse semantics: ``--f v`` or ``--f=v``), or None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1:]
    return value
