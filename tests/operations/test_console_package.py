"""The console ships inside the package: a wheel built from this tree holds every file the
page loads, so `pip install tollway` serves /console with no build step."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "proxy" / "console" / "static"


def test_the_wheel_holds_every_console_asset(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tollway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("tollway/proxy/console/static/")}
    assert shipped == {p.name for p in STATIC.iterdir()}
    page = (STATIC / "index.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="/console/static/([^"]+)"', page))
    assert loaded and loaded <= shipped
    assert "tollway/proxy/console/app.py" in names
