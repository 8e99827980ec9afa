"""Live config: edits to the YAML of a running proxy apply within two seconds, an invalid
edit is rejected whole (old config kept, error logged with file, line and key path,
counted, readiness still up), a fix applies, and requests running all along never fail
because of a reload. Then the same through a real `tollway serve` process, with SIGHUP.

These tests wait on real time by nature (the file watcher polls): every wait has an upper
bound (the two seconds promised, or a start-up bound) and polls, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import uuid

import openai
import pytest
import requests
from tollway.config.reload import watch

from tests.support.faultkit import ProxyProcess, config_yaml, fetch, metric, wait_for

RELOAD_BOUND = 2.0  # seconds: the promise

ORGS = """
organizations:
  acme:
    users:
      alice: {}
      bob: {limits: {rpm: %s}}
"""
INVALID = ORGS % "1" + "      carol: {limits: {rpm: -5}}\n"
HELLO = [{"role": "user", "content": "Say hello"}]


def bob_admitted(stack, bob: str) -> bool:
    try:
        stack.openai(bob).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    except openai.RateLimitError:
        return False
    return True


def seconds_until(predicate, bound: float) -> float:
    """Poll `predicate` until true; the seconds it took (fails past `bound`)."""
    started = time.monotonic()
    wait_for(predicate, bound, "the config change to take effect")
    return time.monotonic() - started


class Background:
    """SDK calls in a thread, all along: every one must succeed."""

    def __init__(self, stack, key: str) -> None:
        self.client = stack.openai(key)
        self.ok = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                stream = self.ok % 2 == 0
                r = self.client.chat.completions.create(
                    model="gpt-4o-mini", messages=HELLO, stream=stream
                )
                if stream:
                    list(r)
                self.ok += 1
            except Exception as e:  # every failure is a test failure, reported below
                self.errors.append(e)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


def test_edits_apply_live_and_invalid_ones_are_rejected(stack_factory, caplog):
    stack = stack_factory(ORGS % "1000")
    alice, bob = stack.key("acme", user="alice"), stack.key("acme", user="bob")
    watcher = stack.run(_start_watch(stack))
    background = Background(stack, alice)
    caplog.set_level(logging.INFO, logger="tollway.config")
    try:
        assert bob_admitted(stack, bob)

        # 1. Lower bob's limit: in force within two seconds (at most one more request).
        stack.write_config(ORGS % "1")
        took = seconds_until(lambda: not bob_admitted(stack, bob), RELOAD_BOUND)
        assert stack.holder.reload_count == 1
        assert metric(stack, "tollway_config_reloads_total", result="success") == 1

        # 2. An invalid edit: rejected whole, the previous config stays, logged, counted.
        stack.write_config(INVALID)
        seconds_until(lambda: stack.holder.failure_count == 1, RELOAD_BOUND)
        error = stack.holder.last_error
        assert f"{stack.config_path}:" in error
        assert "organizations.acme.users.carol.limits.rpm" in error
        assert metric(stack, "tollway_config_reloads_total", result="failure") == 1
        assert metric(stack, "tollway_config_reload_failures_total") == 1
        logged = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert logged and "organizations.acme.users.carol.limits.rpm" in logged[-1].getMessage()
        assert "carol" not in stack.holder.current.organizations["acme"].users
        assert requests.get(stack.url + "/readyz", timeout=5).status_code == 200
        # bob is still held to rpm 1: a second refills 1/60 of a request (rpm 1000: 16).
        stack.clock.advance(seconds=1)
        assert not bob_admitted(stack, bob)

        # 3. The fix applies.
        stack.write_config(ORGS % "1000")
        took_fix = seconds_until(lambda: bob_admitted(stack, bob), RELOAD_BOUND)
        assert stack.holder.reload_count == 2
    finally:
        background.finish()
        stack.run(_stop(watcher))
    assert background.errors == []
    assert background.ok > 20, "the background requests did not run throughout"
    print(f"lowered limit in force after {took:.2f}s; fix after {took_fix:.2f}s")


async def _start_watch(stack) -> asyncio.Task:
    return asyncio.ensure_future(watch(stack.holder))  # the serve default: 0.5 s polls


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def served(redis_url, tmp_path):
    path = tmp_path / "tollway.yaml"
    prefix = "t" + uuid.uuid4().hex[:10]

    def write(orgs: str) -> None:
        path.write_text(config_yaml(redis_url, prefix, "http://127.0.0.1:9", orgs))

    write(ORGS % "1000")
    proc = ProxyProcess(path, tmp_path / "data")
    proc.wait_ready(timeout=30)
    proc.write = write  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def test_serve_reloads_on_edit_and_on_sighup(served):
    reloads = lambda result: served.metric("tollway_config_reloads_total", result=result)  # noqa: E731
    served.write(ORGS % "5")
    wait_for(lambda: reloads("success") == 1, RELOAD_BOUND, "the watcher's reload")
    # SIGHUP reloads at once, even when the file did not change (the watcher would not).
    served.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads("success") == 2, RELOAD_BOUND, "the SIGHUP reload")
    served.write(INVALID)
    wait_for(lambda: reloads("failure") == 1, RELOAD_BOUND, "the rejected reload")
    served.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads("failure") == 2, RELOAD_BOUND, "the rejected SIGHUP reload")
    assert fetch("GET", served.url + "/readyz").status == 200
    assert reloads("success") == 2
    served.write(ORGS % "1000")
    wait_for(lambda: reloads("success") == 3, RELOAD_BOUND, "the fixed config")
    assert served.proc.poll() is None
    log = served.log_path.read_text()
    assert "organizations.acme.users.carol.limits.rpm" in log
    assert f"{served.config_path}:" in log
