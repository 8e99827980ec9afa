"""One Tollway process for the benchmark, in one of two modes.

``--reuse-port``: exactly what ``tollway serve`` runs (`runtime.serve.serve`), bound with
SO_REUSEPORT so that several such processes share one port. The benchmark uses it for
the two-worker rows when ``tollway serve --workers`` is not available.

``--lag-probe``: Tollway's app (`runtime.app.create_app`, full metering) plus a probe task
that sleeps 1 ms in a loop and records how late it wakes up: the longest time the event
loop was held by anything else. ``GET /bench/lag`` returns the lags recorded since the
previous call (max, p99, p50 in ms, count) and starts a new window.

    python -m bench.worker --config FILE --port N (--reuse-port | --lag-probe)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiohttp import web
from tollway.config import load_config
from tollway.config.reload import ConfigHolder
from tollway.proxy.runtime import logs
from tollway.proxy.runtime.app import create_app
from tollway.proxy.runtime.locate import store_url

PROBE_SLEEP = 0.001


class LagProbe:
    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            t = clock()
            await asyncio.sleep(PROBE_SLEEP)
            self.lags.append(clock() - t - PROBE_SLEEP)

    async def view(self, request: web.Request) -> web.Response:
        lags, self.lags = sorted(self.lags), []
        n = len(lags)

        def at(q: float) -> float:
            return round(lags[min(n - 1, int(q * n))] * 1000, 3) if n else 0.0

        return web.json_response(
            {"count": n, "max_ms": at(1.0), "p99_ms": at(0.99), "p50_ms": at(0.5)}
        )


async def lag_probe_server(holder: ConfigHolder, url_handle, port: int) -> None:
    store = url_handle.open(holder.current)
    app = create_app(holder, store)
    probe = LagProbe()
    app.router.add_get("/bench/lag", probe.view)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    task = asyncio.ensure_future(probe.run())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        task.cancel()
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--port", type=int, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reuse-port", action="store_true")
    mode.add_argument("--lag-probe", action="store_true")
    args = p.parse_args()
    import uvloop

    logs.setup("INFO")
    cfg = load_config(args.config)
    holder = ConfigHolder(cfg)
    handle = store_url(cfg, args.config)
    if args.lag_probe:
        uvloop.run(lag_probe_server(holder, handle, args.port))
        return
    from tollway.proxy.runtime.serve import serve

    uvloop.run(serve(holder, handle, "127.0.0.1", args.port, reuse_port=True))


if __name__ == "__main__":
    main()
