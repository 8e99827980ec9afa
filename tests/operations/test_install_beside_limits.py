"""Tollway installs beside the PyPI distribution named `limits` (and slowapi, which depends
on it): `pip install .` (not editable, with its dependencies) into a fresh venv that already
holds them leaves both importable and working, and the `tollway` command runs.

Real time and the network (PyPI, or pip's cache): about a minute and a half."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

CHECK = """
import limits, slowapi
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from slowapi import Limiter
from slowapi.util import get_remote_address

Limiter(key_func=get_remote_address)
limiter = FixedWindowRateLimiter(MemoryStorage())
assert [limiter.hit(RateLimitItemPerMinute(1)) for _ in range(2)] == [True, False]

import tollway.config, tollway.limits.meter, tollway.proxy.runtime.app
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage
assert cost_micro(tollway.config.parse_config_text(
    "prices:\\n  m: {input: 3, output: 15}\\n", env={}).prices["m"], Usage(1000, 100)) == 4500
print(limits.__file__)
print(tollway.limits.meter.__file__)
"""


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_pip_install_beside_limits_and_slowapi(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # slowapi imports starlette without depending on it.
    run([*pip, "limits", "slowapi", "starlette"], tmp_path)
    run([*pip, str(ROOT)], tmp_path)
    # Run from tmp_path: the repository's own limits/ folder must not shadow anything.
    where = run([py, "-c", CHECK], tmp_path).split()
    site = str(env_dir / "lib")
    assert where[0].startswith(site) and where[0].endswith("limits/__init__.py")
    assert where[1].startswith(site) and where[1].endswith("tollway/limits/meter.py")
    usage = run([str(env_dir / "bin" / "tollway"), "--help"], tmp_path)
    assert usage.startswith("usage: tollway")
