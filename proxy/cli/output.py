"""How every `tollway` command prints: errors on stderr, aligned tables, JSON."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any


def fail(message: str, code: int) -> int:
    """Print ``tollway: message`` on stderr; return the exit code to use."""
    print(f"tollway: {message}", file=sys.stderr)
    return code


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; the columns in `right` aligned right."""
    right = set(right)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def print_rows(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    """Print dicts as a table of `cols` (upper-cased headers, '-' for a missing value)."""
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols] for r in rows]
    print(format_table([c.upper() for c in cols], cells))
