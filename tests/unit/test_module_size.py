"""No product module is over 400 lines (STYLE.md 13: split by concern before a file
becomes a grab-bag). Python modules and Lua scripts of proxy/, limits/ and config/ are
counted as `wc -l` counts them; generated data (the JSON schema) is not a module."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "limits", "config")
SUFFIXES = (".py", ".lua")
MAX_LINES = 400


def oversized(root: Path) -> list[str]:
    """Each module of `root`'s product packages over `MAX_LINES`, as "path: N lines"."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix not in SUFFIXES or "__pycache__" in path.parts:
                continue
            lines = path.read_bytes().count(b"\n")
            if lines > MAX_LINES:
                found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def test_no_product_module_is_over_400_lines() -> None:
    too_long = oversized(ROOT)
    assert too_long == [], f"over {MAX_LINES} lines, split by concern: {'; '.join(too_long)}"


def test_the_guard_names_each_module_over_the_limit(tmp_path: Path) -> None:
    def write(rel: str, lines: int) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n" * lines)

    write("proxy/gateway/big.py", 401)
    write("proxy/gateway/ok.py", 400)
    write("limits/scripts/long.lua", 512)
    write("config/tollway.schema.json", 2000)
    write("deploy/big.py", 900)
    assert oversized(tmp_path) == [
        "proxy/gateway/big.py: 401 lines",
        "limits/scripts/long.lua: 512 lines",
    ]
