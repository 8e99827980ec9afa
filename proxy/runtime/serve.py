"""`tollway serve`: run the proxy on one port until SIGINT/SIGTERM.

The config file is watched and applied live; SIGHUP reloads it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web
from tollway.config.reload import ConfigHolder, watch
from tollway.config.schema import Config
from tollway.proxy.runtime.app import METRICS, create_app
from tollway.proxy.runtime.locate import StoreHandle, version
from tollway.proxy.runtime.metrics_server import start_metrics_site

log = logging.getLogger("tollway")


async def serve(
    holder: ConfigHolder,
    handle: StoreHandle,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    drain_seconds: float = 30.0,
    ready: Any = None,
    metrics: tuple[str, int] | None = None,
) -> None:
    """Serve the proxy on host:port and the operators' metrics listener beside it on
    `metrics` (host, port), by default server.metrics_host and server.metrics_port (port 0:
    no metrics listener)."""
    cfg = holder.current
    store = handle.open(cfg)
    app = create_app(holder, store)
    runner = web.AppRunner(app, handler_cancellation=False, shutdown_timeout=drain_seconds)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    mhost, mport = metrics or (cfg.server.metrics_host, cfg.server.metrics_port)
    metrics_runner = await start_metrics_site(
        app[METRICS], cfg, mhost, mport, reuse_port=reuse_port
    )
    log.info("tollway listening", extra={"host": host, "port": port, "store": _redact(handle.url)})
    if metrics_runner is not None:
        log.info("metrics listening", extra={"host": mhost, "port": mport})
    if ready is not None:
        ready()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, holder.reload)
    watcher = asyncio.ensure_future(watch(holder)) if cfg.source else None
    try:
        await stop.wait()
    finally:
        log.info("tollway stopping: draining in-flight requests")
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()


def _redact(url: str) -> str:
    """A store URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def startup_line(
    cfg: Config,
    handle: StoreHandle,
    host: str,
    port: int,
    workers: int,
    metrics: tuple[str, int] | None,
) -> str:
    """The one human line `serve` prints once it listens: where, which config file, which
    store (the embedded Valkey's data directory, or the URL without its password), how
    many workers and where the metrics are. Printed on stdout; logs stay JSON on stderr."""
    if handle.embedded is not None:
        store = f"embedded Valkey, data in {handle.embedded.data_dir} ({handle.url})"
    else:
        store = _redact(handle.url)
    mhost, mport = metrics or (cfg.server.metrics_host, cfg.server.metrics_port)
    parts = [
        f"Tollway {version()} listening on http://{host}:{port}",
        f"config {cfg.source or '-'}",
        f"store {store}",
        f"{workers} worker" + ("s" if workers != 1 else ""),
        f"metrics on http://{mhost}:{mport}/metrics" if mport else "no metrics listener",
    ]
    return "; ".join(parts)


def announce(line: str) -> None:
    print(line, flush=True)


def run(
    holder: ConfigHolder,
    handle: StoreHandle,
    host: str,
    port: int,
    drain_seconds: float = 30.0,
    metrics: tuple[str, int] | None = None,
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        pass
    try:
        line = startup_line(holder.current, handle, host, port, 1, metrics)
        ready = lambda: announce(line)  # noqa: E731 - once the listener is up
        asyncio.run(
            serve(
                holder,
                handle,
                host,
                port,
                drain_seconds=drain_seconds,
                metrics=metrics,
                ready=ready,
            )
        )
    finally:
        handle.stop()


def default_config_hint(path: Path) -> str:
    return (
        f"no config at {path}: pass --config FILE, set TOLLWAY_CONFIG, or copy "
        "config/examples/tollway.yaml to ./tollway.yaml"
    )
