"""The operators' metrics listener: ``GET /metrics`` on its own address, never the client port.

The client port answers 404 on ``/metrics``: anyone who can reach the proxy could otherwise
read every organization's name, balance, spend and traffic. The metrics listener binds
``server.metrics_host:server.metrics_port`` (loopback:9464 by default; port 0 turns it off).
When ``server.metrics_token_env`` names an environment variable, a scrape must carry
``Authorization: Bearer <its value>`` (compared in constant time, read on every scrape so it
can be rotated); a missing or wrong token is a 401, and a configured but unset or empty
variable disables the endpoint (403) rather than leaving it open.

Host and port are read at start-up (``tollway serve --metrics-host/--metrics-port`` override
them; a listener cannot move while serving); the token variable's value on every scrape.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from aiohttp import web
from tollway.config.schema import Config
from tollway.proxy.metrics import CONTENT_TYPE, Metrics

METRICS_OF = web.AppKey("metrics_of", Metrics)
# (the token's variable name or None, the environment to read it from or None: os.environ)
TOKEN_ENV: web.AppKey[tuple[str | None, Mapping[str, str] | None]] = web.AppKey("metrics_token_env")


def create_metrics_app(
    metrics: Metrics, token_env: str | None, env: Mapping[str, str] | None = None
) -> web.Application:
    """The metrics app: ``GET /metrics`` (Prometheus text format) and nothing else."""
    app = web.Application()
    app[METRICS_OF] = metrics
    app[TOKEN_ENV] = (token_env, env)
    app.router.add_get("/metrics", _metrics_view)
    return app


def _token(app: web.Application) -> tuple[bool, str | None]:
    """(a token is required, its value now)."""
    name, env = app[TOKEN_ENV]
    if not name:
        return False, None
    value = (env if env is not None else os.environ).get(name, "")
    return True, value or None


async def _metrics_view(request: web.Request) -> web.Response:
    required, token = _token(request.app)
    if required:
        if token is None:
            return web.Response(status=403, text="metrics disabled: the token is not set\n")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"),
            token.encode("utf-8", "surrogateescape"),
        )
        if not ok:
            headers = {"www-authenticate": 'Bearer realm="tollway-metrics"'}
            return web.Response(status=401, text="missing or wrong token\n", headers=headers)
    return web.Response(
        body=request.app[METRICS_OF].exposition(), headers={"content-type": CONTENT_TYPE}
    )


async def start_metrics_site(
    metrics: Metrics, cfg: Config, host: str, port: int, *, reuse_port: bool = False
) -> web.AppRunner | None:
    """Start the metrics listener on host:port (None when `port` is 0). With several
    workers each binds the port (``reuse_port``): a scrape reaches one of them and sees
    that worker's counters."""
    if port == 0:
        return None
    runner = web.AppRunner(create_metrics_app(metrics, cfg.server.metrics_token_env))
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
    await site.start()
    return runner
