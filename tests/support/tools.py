"""Where the tests find the command-line tools they drive.

First the checkout's ``.tools/bin`` (``tests/install-tools.sh`` extracts promtool there,
never installing a system package), then the environment running the tests (the test
extra installs hadolint and kubernetes-validate there, and `make test` does not put it on
PATH), then PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"


def find_tool(name: str) -> str | None:
    """The path of command `name`, or None."""
    here = Path(sys.executable).parent
    path = os.pathsep.join([str(TOOLS), str(here), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)
