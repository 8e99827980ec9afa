"""Summaries of py-spy's collapsed stacks (``py-spy record --format raw``).

    python -m bench.profile_summary FILE [--top 30] [--self]

Inclusive share: the fraction of samples with the function anywhere on the stack (counted
once per sample); self share: the fraction with the function on top. Idle samples (the
event loop waiting in epoll) are counted, so shares are of wall time of the main thread.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)")


def _frame(f: str) -> str:
    """``handle (gateway/handler.py:123)`` → ``handle (gateway/handler.py)``: paths shortened."""
    f = _LINE.sub(")", f)
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in f:
            head, _, tail = f.partition("(")
            tail = tail.split(marker, 1)[-1]
            f = f"{head}({tail}"
    return f.strip()


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([_frame(f) for f in stack.split(";")], int(count)))
    return stacks


def summarize(path: Path, top: int = 30) -> dict:
    stacks = load(path)
    total = sum(c for _, c in stacks) or 1
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for frames, count in stacks:
        for f in set(frames):
            inclusive[f] += count
        if frames:
            self_[frames[-1]] += count
    # The entry chain (main, run, Runner.run...) is on every stack: it says nothing.
    root = max(inclusive.values(), default=0)
    ranked = [(f, c) for f, c in inclusive.most_common() if c < root]
    return {
        "samples": total,
        "top": [(f, 100 * c / total) for f, c in ranked[:top]],
        "self": [(f, 100 * c / total) for f, c in self_.most_common(top)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--self", action="store_true", help="rank by self time")
    args = p.parse_args()
    s = summarize(args.file, args.top)
    print(f"{s['samples']} samples")
    for fn, pct in s["self" if args.self else "top"]:
        print(f"{pct:6.1f}%  {fn}")


if __name__ == "__main__":
    main()
