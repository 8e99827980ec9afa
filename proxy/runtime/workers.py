"""`tollway serve --workers N`: N worker processes on one port, one parent watching them.

Each worker is a forked process with its own uvloop event loop, its own store client and
its own listening socket on the same address (``SO_REUSEPORT``: the kernel spreads new
connections over the workers). Nothing but the store is shared, so every limit, cap and
balance holds once across all workers, exactly as across replicas on several machines.
When the store is the embedded Valkey, the parent starts it before forking and hands its
URL to the workers (they never start one), and stops it after the last worker is gone.

Signals to the parent:

* SIGTERM / SIGINT: graceful stop. Each worker closes its listener, finishes in-flight
  requests and streams (up to the drain timeout), settles them and exits; the parent
  returns once all have (a worker still alive well past the drain timeout is killed).
* SIGHUP: forwarded; every worker reloads the config file at once (they also watch it).

A worker that dies is started again after a back-off (0.5 s doubling up to 30 s, reset
once a worker has lived a minute). A worker that cannot start at all (the port is taken,
say) exits with `EXIT_CANNOT_START`; the parent then stops the others and returns 2.

Log lines of a worker carry ``"worker": i`` (0..N-1) and ``"pid"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tollway.config.reload import ConfigHolder
from tollway.proxy.runtime.locate import StoreHandle, store_url

log = logging.getLogger("tollway.workers")

EXIT_CANNOT_START = 2
PR_SET_PDEATHSIG = 1
EXIT_CRASHED = 70
DRAIN_SECONDS = 30.0
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 60.0
# A worker's own shutdown can take up to twice the drain timeout (wait for handlers, then
# cancel and wait again) plus the settlements' final wait; past that it is killed.
KILL_GRACE = 15.0

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


@dataclass
class _Slot:
    index: int
    pid: int | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        record.pid = os.getpid()
        return True


def _stop_with_parent(parent: int) -> None:
    """Linux: get SIGTERM (a graceful stop) if the parent dies, even by SIGKILL, rather
    than serve on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    index: int,
    parent: int,
    holder: ConfigHolder,
    url: str,
    host: str,
    port: int,
    drain_seconds: float,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Body of a forked worker: serve until SIGTERM/SIGINT, then drain. Its exit code."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _stop_with_parent(parent)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        pass
    from tollway.proxy.runtime.serve import serve

    started = False

    def ready() -> None:
        nonlocal started
        started = True

    handle = StoreHandle(url, None)  # the parent owns the store (embedded or not)
    try:
        asyncio.run(
            serve(
                holder,
                handle,
                host,
                port,
                reuse_port=True,
                drain_seconds=drain_seconds,
                ready=ready,
                metrics=metrics,
            )
        )
    except Exception:
        log.exception("worker failed", extra={"started": started})
        return EXIT_CRASHED if started else EXIT_CANNOT_START
    return 0


def _spawn(
    slot: _Slot,
    holder: ConfigHolder,
    url: str,
    host: str,
    port: int,
    drain: float,
    metrics: tuple[str, int] | None = None,
) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        code = EXIT_CRASHED
        try:
            code = _worker(slot.index, parent, holder, url, host, port, drain, metrics)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class _Parent:
    def __init__(
        self,
        holder: ConfigHolder,
        url: str,
        host: str,
        port: int,
        n: int,
        drain: float,
        metrics: tuple[str, int] | None = None,
    ):
        self.holder, self.url, self.host, self.port = holder, url, host, port
        self.drain, self.metrics = drain, metrics
        self.slots = [_Slot(i) for i in range(n)]
        self.stopping_since: float | None = None
        self.result = 0

    def spawn(self, slot: _Slot) -> None:
        _spawn(slot, self.holder, self.url, self.host, self.port, self.drain, self.metrics)

    def alive(self) -> list[_Slot]:
        return [s for s in self.slots if s.pid is not None]

    def signal_all(self, sig: int) -> None:
        for slot in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)  # type: ignore[arg-type]

    def stop(self, why: str) -> None:
        if self.stopping_since is None:
            log.info("stopping workers: draining in-flight requests", extra={"why": why})
            self.stopping_since = time.monotonic()
            for slot in self.slots:
                slot.restart_at = None
        self.signal_all(signal.SIGTERM)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue  # not a worker (e.g. a helper process of the embedded store)
            slot.pid = None
            code = os.waitstatus_to_exitcode(status)
            if self.stopping_since is not None:
                log.info("worker stopped", extra={"worker": slot.index, "how": _describe(status)})
                continue
            if code == EXIT_CANNOT_START:
                log.error("worker could not start: stopping", extra={"worker": slot.index})
                self.result = EXIT_CANNOT_START
                self.stop("a worker could not start")
                continue
            now = time.monotonic()
            if now - slot.started >= STABLE_AFTER:
                slot.backoff = BACKOFF_FIRST
            slot.restart_at = now + slot.backoff
            log.error(
                "worker died: restarting",
                extra={"worker": slot.index, "how": _describe(status), "in_s": slot.backoff},
            )
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and slot.restart_at is not None and slot.restart_at <= now:
                self.spawn(slot)

    def next_wakeup(self) -> float:
        now = time.monotonic()
        due = [s.restart_at - now for s in self.slots if s.restart_at is not None]
        if self.stopping_since is not None:
            due.append(self.stopping_since + 2 * self.drain + KILL_GRACE - now)
        return max(0.01, min([1.0, *due]))

    def run(self) -> int:
        for slot in self.slots:
            self.spawn(slot)
        log.info("workers started", extra={"workers": len(self.slots), "port": self.port})
        while True:
            info = signal.sigtimedwait(_SIGNALS, self.next_wakeup())
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    self.stop(signal.Signals(info.si_signo).name)
                elif info.si_signo == signal.SIGHUP:
                    self.signal_all(signal.SIGHUP)
            self.reap()
            if self.stopping_since is None:
                self.restart_due()
            elif not self.alive():
                return self.result
            elif time.monotonic() > self.stopping_since + 2 * self.drain + KILL_GRACE:
                log.error("workers still running past the drain timeout: killing them")
                self.signal_all(signal.SIGKILL)


def run_workers(
    holder: ConfigHolder,
    config_path: str | Path | None,
    host: str,
    port: int,
    n: int,
    drain_seconds: float = DRAIN_SECONDS,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run `n` workers on host:port until SIGTERM/SIGINT; returns the exit code. Each
    worker also binds the metrics listener (`metrics`: (host, port), overriding
    server.metrics_host and server.metrics_port)."""
    handle: StoreHandle = store_url(holder.current, Path(config_path or "tollway.yaml"))
    # Signals are taken synchronously (sigtimedwait); workers unblock them after fork. They
    # stay blocked to the end: a second SIGTERM while the store stops must not kill us.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    from tollway.proxy.runtime.serve import announce, startup_line

    announce(startup_line(holder.current, handle, host, port, n, metrics))
    try:
        return _Parent(holder, handle.url, host, port, n, drain_seconds, metrics).run()
    finally:
        handle.stop()
