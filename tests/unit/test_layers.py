"""The layer contracts of `make lint` fail when an import breaks them: lint-imports runs on
a copy of the product tree with one forbidden import added, and on the copy as it is."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over `tree`/tollway with the repository's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of proxy/, limits/ and config/ laid out as the installed tollway.*."""
    for name in ("proxy", "limits", "config"):
        shutil.copytree(
            ROOT / name,
            tmp_path / "tollway" / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return tmp_path


def add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / "tollway" / module
    path.write_text(path.read_text() + f"\n{statement}\n")


def test_the_contracts_hold_on_the_tree_as_it_is(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("config/money.py", "import tollway.limits.meter", "One direction"),
        ("limits/meter.py", "import tollway.proxy.metrics", "One direction"),
        ("limits/meter.py", "import aiohttp", "never import aiohttp"),
        ("proxy/admin/orgs.py", "import tollway.proxy.cli.keys", "never import the CLI"),
        ("proxy/gateway/call.py", "import tollway.proxy.gateway.handler", "No import cycle"),
    ],
)
def test_a_forbidden_import_breaks_lint(
    tree: Path, module: str, statement: str, contract: str
) -> None:
    add_import(tree, module, statement)
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "Broken contracts" in result.stdout, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken, result.stdout
