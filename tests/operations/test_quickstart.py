"""The README's quick start, run as written: its commands are read from README.md between
``<!-- quickstart -->`` and ``<!-- /quickstart -->``, so a change there changes what runs
here and the front door cannot rot.

The first ``sh`` block (`make serve`) runs in the background in the checkout; the other
``sh`` blocks run line by line; the ``python`` block runs with the official SDKs. Only
the placeholders are filled in: the operator's keys (``sk-...``, ``sk-ant-...``) with the
fake upstream's, the Tollway key (``tw-...``) with the one ``keys create`` printed. The
environment points the upstreams at the fake upstream (``TOLLWAY_*_BASE_URL``, as the
README documents), keeps the embedded Valkey's data in a temporary directory
(``TOLLWAY_DATA``) and moves the ports (``SERVE_FLAGS``, and 8080 in the snippet) so that
parallel runs on one machine do not collide. `make serve` must print nothing but
Tollway's start-up line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tollway.limits.embedded import free_port

from tests.support.fakeupstream import ANTHROPIC_KEY, OPENAI_KEY, start_fake_upstream
from tests.support.faultkit import fetch, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"```(sh|python)\n(.*?)```", re.S)
INSTALL_BOUND = 540  # seconds: `make serve` pip installs into .venv when pyproject.toml changed


def quickstart_blocks() -> list[tuple[str, str]]:
    """(language, text) of the code blocks between the quick-start markers, in order."""
    text = README.read_text()
    start = text.index("<!-- quickstart -->")
    end = text.index("<!-- /quickstart -->", start)
    return BLOCK.findall(text[start:end])


@pytest.fixture
def fake_upstream():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake, runner, url = asyncio.run_coroutine_threadsafe(start_fake_upstream(), loop).result(10)
    try:
        yield fake, url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_the_readme_quick_start_works_as_written(fake_upstream, tmp_path):
    fake, upstream = fake_upstream
    blocks = quickstart_blocks()
    assert [lang for lang, _ in blocks] == ["sh", "sh", "python"], blocks
    port = free_port()
    # The README's defaults, whatever this shell has set (a LOG_LEVEL would add lines). Run
    # from `make test`, the make variables would turn `make serve` into a sub-make that
    # prints "make[1]: Entering directory": a user's shell has none of them.
    unset = ("REDIS_URL", "TOLLWAY_CONFIG", "CONFIG", "LOG_LEVEL", "SERVE_FLAGS", "VENV")
    unset += ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        TOLLWAY_DATA=str(tmp_path / "data"),
        TOLLWAY_OPENAI_BASE_URL=upstream,
        TOLLWAY_ANTHROPIC_BASE_URL=upstream,
        SERVE_FLAGS=f"--port {port} --metrics-port {free_port()}",
    )

    def fill(text: str) -> str:
        text = text.replace("sk-ant-...", ANTHROPIC_KEY).replace("sk-...", OPENAI_KEY)
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    [serve_line] = blocks[0][1].strip().splitlines()
    assert serve_line.endswith("make serve")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", fill(serve_line)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            assert server.poll() is None, log.read_text()
            return bool(log.read_text())

        wait_for(listening, INSTALL_BOUND, "make serve's start-up line")
        time.sleep(0.5)  # anything printed right after the line would show here
        [line] = log.read_text().splitlines()
        assert line.startswith(f"Tollway {version()} listening on http://127.0.0.1:{port}; ")
        assert "; config config/examples/tollway.yaml; " in line
        assert f"; store embedded Valkey, data in {tmp_path / 'data'} (redis://" in line
        assert fetch("GET", f"http://127.0.0.1:{port}/healthz").status == 200

        key = None
        for command in blocks[1][1].strip().splitlines():
            done = subprocess.run(
                ["bash", "-c", fill(command)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            found = re.search(r"^key:\s+(tw-\S+)$", done.stdout, re.M)
            key = found.group(1) if found else key
        assert key is not None, "the quick start creates a key"

        snippet = fill(blocks[2][1]).replace("tw-...", key)
        done = subprocess.run(
            [sys.executable, "-c", snippet],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        hello = fake.behavior.text
        assert done.stdout.splitlines() == [hello, hello]
        assert {r.path for r in fake.requests} == {"/v1/chat/completions", "/v1/messages"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def version() -> str:
    from importlib.metadata import version

    return version("tollway")


def test_make_test_enables_and_starts_no_service():
    """`make test` runs tests/install-tools.sh. promtool is extracted from Debian's
    `prometheus` package into .tools/, never installed (installing `prometheus` enables
    and starts a systemd service); a package the script must install (a browser that cannot
    run extracted) is named with its reason and ships no service unit; nothing drives the
    service manager."""
    script = (ROOT / "tests" / "install-tools.sh").read_text()
    makefile = (ROOT / "Makefile").read_text()
    code = "\n".join(
        line for text in (script, makefile) for line in text.splitlines()
        if not line.lstrip().startswith("#")
    )  # fmt: skip
    for forbidden in ("systemctl", "service ", "dpkg -i", "apt install", "invoke-rc.d"):
        assert forbidden not in code
    assert re.search(r"^fetch_deb_binary promtool prometheus ", script, re.M)
    installed = re.findall(r"^install_deb \S+ (\S+)$", script, re.M)
    assert "prometheus" not in installed
    for pkg in installed:
        assert f"`{pkg}`" in script, f"install-tools.sh says why it installs {pkg}"
        files = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True).stdout
        units = [f for f in files.splitlines() if re.search(r"/systemd/system/|/init\.d/", f)]
        assert units == [], f"{pkg} ships a service"
    assert code.count("apt-get install") <= 1  # once: inside install_deb, for those above
    assert re.search(r"^test: .*\btools\b", makefile, re.M)


def readme_claude_code_command() -> str:
    text = README.read_text()
    return re.search(
        r"```sh\n(ANTHROPIC_BASE_URL=\S+ ANTHROPIC_API_KEY=tw-\.\.\. claude)\n```", text
    )[1]


def test_the_readme_claude_code_recipe_with_the_shipped_config(
    fake_upstream, tmp_path, monkeypatch, capsys
):
    """What Claude Code sends when started as the README says, through `tollway serve` with
    config/examples/tollway.yaml unchanged: streamed beta Messages requests
    (`/v1/messages?beta=true`, its beta header and session header) for the models it uses,
    a main model and a small fast one. Every one is answered, priced and billed to the
    session, which `tollway session` then reports per model."""
    import anthropic
    from tollway.proxy.cli.main import main

    from tests.support.faultkit import ProxyProcess

    fake, upstream = fake_upstream
    command = readme_claude_code_command()
    base_url = re.search(r"ANTHROPIC_BASE_URL=(\S+)", command)[1]
    assert base_url == "http://127.0.0.1:8080"  # the README's; the test's own port below
    monkeypatch.setenv("TOLLWAY_ANTHROPIC_BASE_URL", upstream)
    monkeypatch.setenv("TOLLWAY_OPENAI_BASE_URL", upstream)
    monkeypatch.setenv("TOLLWAY_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = ROOT / "config" / "examples" / "tollway.yaml"
    proc = ProxyProcess(config, tmp_path / "data", log_path=tmp_path / "proxy.log")
    try:
        proc.wait_ready(timeout=60)
        for name, value in {
            "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["keys", "create", "--org", "acme", "--config", str(config)]) == 0
        key = re.search(r"^key:\s+(tw-\S+)$", capsys.readouterr().out, re.M)[1]
        assert (
            main(["credits", "buy", "--org", "acme", "--amount", "20", "--config", str(config)])
            == 0
        )
        client = anthropic.Anthropic(base_url=proc.url, api_key=key, max_retries=0)
        session = "0b9e6a3c-claude-code"
        for model in ("claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-opus-4-6"):
            with client.beta.messages.stream(
                model=model,
                max_tokens=1024,
                messages=[{"role": "user", "content": "Explain this repository"}],
                betas=["claude-code-20250219", "interleaved-thinking-2025-05-14"],
                extra_headers={"x-claude-code-session-id": session},
                extra_query={"beta": "true"},  # Claude Code's TypeScript SDK adds it
            ) as stream:
                assert stream.get_final_text() == fake.behavior.text
        assert {(r.path, r.query.get("beta")) for r in fake.requests} == {("/v1/messages", "true")}

        def settled() -> bool:
            capsys.readouterr()
            if main(["session", session, "--format", "json", "--config", str(config)]) != 0:
                return False
            return json.loads(capsys.readouterr().out)["sessions"][0]["requests"] == 3

        wait_for(settled, 10, "the three settlements")
        assert main(["session", session, "--format", "json", "--config", str(config)]) == 0
        [report] = json.loads(capsys.readouterr().out)["sessions"]
        models = {m["model"]: m for m in report["models"]}
        assert set(models) == {"claude-sonnet-4-6", "claude-haiku-4-5-20251001", "claude-opus-4-6"}
        assert all(m["cost_micro"] > 0 for m in models.values())
        assert report["cost_micro"] == sum(m["cost_micro"] for m in models.values())
    finally:
        proc.stop()
