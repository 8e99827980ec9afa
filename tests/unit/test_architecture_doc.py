"""docs/architecture.md stays true: every file its "rule -> file -> test" table names
exists, every `file` `name` it cites is defined there, and every test it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# `path/to/file.ext` optionally followed by `Name` or `Class.method` cells' words.
CITED = re.compile(r"`((?:proxy|limits|config|tests|pyproject)[\w/.\-]*)(?:::(\w+))?`")
NAME = re.compile(r"`([A-Za-z_][\w.]*)`")


def table_rows(text: str) -> list[list[str]]:
    """The cells of the rule table (the lines after its ``| rule |`` header)."""
    lines = text.split("## Rule → file → test", 1)[1].splitlines()
    rows = [ln for ln in lines if ln.startswith("|") and not ln.startswith("|--")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def problems(text: str, root: Path) -> list[str]:
    """What the table cites that the tree does not have."""
    found = []
    for cells in table_rows(text):
        for cell in cells[1:]:
            for path, test in CITED.findall(cell):
                file = root / path
                if not file.exists():
                    found.append(f"{path}: no such file")
                    continue
                if test and not re.search(rf"def {test}\b", file.read_text()):
                    found.append(f"{path}::{test}: no such test")
            # `file` `Name` `Other.method`: each name defined in the file before it.
            parts = re.split(r"(`[^`]+`)", cell)
            current: Path | None = None
            for part in parts:
                m = CITED.fullmatch(part)
                if m:
                    current = root / m.group(1)
                    current = current if not m.group(2) and current.is_file() else None
                    continue
                n = NAME.fullmatch(part)
                if n and current is not None and current.suffix in (".py", ".lua"):
                    last = n.group(1).split(".")[-1]
                    if not re.search(rf"(def|class|function) {last}\b", current.read_text()):
                        found.append(f"{current.relative_to(root)}: {n.group(1)} not defined")
    return found


def test_every_file_name_and_test_of_the_rule_table_exists() -> None:
    assert problems(DOC.read_text(), ROOT) == []


def test_a_moved_rule_is_caught(tmp_path: Path) -> None:
    (tmp_path / "limits").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "limits" / "caps.py").write_text("class Caps:\n    def field(self): ...\n")
    (tmp_path / "tests" / "test_caps.py").write_text("def test_one(): ...\n")
    doc = (
        "## Rule → file → test\n\n| rule | decided in | proved by |\n|---|---|---|\n"
        "| ok | `limits/caps.py` `Caps.field` | `tests/test_caps.py::test_one` |\n"
        "| gone | `limits/spend.py` `Spend.approve` | `tests/test_caps.py::test_two` |\n"
        "| moved | `limits/caps.py` `Caps.approve` | `tests/test_caps.py` |\n"
    )
    assert problems(doc, tmp_path) == [
        "limits/spend.py: no such file",
        "tests/test_caps.py::test_two: no such test",
        "limits/caps.py: Caps.approve not defined",
    ]
