"""The aiohttp application: `create_app` wires routes, and resources open and close in
`cleanup_ctx`. State lives under typed `web.AppKey`s; there are no module globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from tollway.config.overlay import Overlay
from tollway.config.reload import ConfigSource
from tollway.limits.apikeys import REVOCATION_POLL, ApiKeys
from tollway.limits.clock import Clock, SystemClock
from tollway.limits.embedded import data_dir_for
from tollway.limits.errors import StoreUnavailable
from tollway.limits.history import History
from tollway.limits.journal import Journal
from tollway.limits.ledgerdb import open_ledger
from tollway.limits.meter import Meter
from tollway.limits.outcomes import Charge
from tollway.limits.replay import Replayer
from tollway.limits.shipper import Shipper
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers
from tollway.proxy.admin.app import create_admin_app
from tollway.proxy.admin.context import ADMIN, PAYMENTS
from tollway.proxy.console.app import setup as setup_console
from tollway.proxy.gateway import member_requests
from tollway.proxy.gateway.handler import ProxyHandler
from tollway.proxy.gateway.routes import ROUTES
from tollway.proxy.gateway.settling import Settler
from tollway.proxy.gateway.tokens import TokenCounter
from tollway.proxy.metrics import Metrics
from tollway.proxy.runtime import digest
from tollway.proxy.runtime.alerts import AlertSender
from tollway.proxy.runtime.autoreload import AutoReloader
from tollway.proxy.runtime.locate import ledger_url
from tollway.proxy.runtime.shipping import ShippingTask

log = logging.getLogger("tollway")

HOLDER = web.AppKey("holder", Overlay)
USERS = web.AppKey("users", RuntimeUsers)
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
CLOCK = web.AppKey("clock", Clock)
APIKEYS = web.AppKey("apikeys", ApiKeys)
METER = web.AppKey("meter", Meter)
HANDLER = web.AppKey("handler", ProxyHandler)
SETTLER = web.AppKey("settler", Settler)
COUNTER = web.AppKey("counter", TokenCounter)
DATA_DIR = web.AppKey("data_dir", Path)
JOURNAL = web.AppKey("journal", Journal)
REPLAYER = web.AppKey("replayer", Replayer)
AUTO_RELOADER = web.AppKey("auto_reloader", AutoReloader)
ALERTS = web.AppKey("alerts", AlertSender)
SHIPPING = web.AppKey("shipping", ShippingTask)
ACTIVE = web.AppKey("active", set)  # tasks of proxied requests being served

SETTLE_WAIT = 10.0  # seconds shutdown waits for cut requests to settle


def create_app(
    holder: ConfigSource,
    store: Store,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    *,
    close_store: bool = True,
    data_dir: str | Path | None = None,
) -> web.Application:
    """The proxy app. `holder.current` is the live `Config`; `store` is connected lazily.
    `data_dir` (default: `data_dir_for` the config file) holds the settlement journal."""
    cfg = holder.current
    app = web.Application(
        client_max_size=cfg.server.max_body_bytes + 1,
        # aiohttp closes a connection that has no complete request within its keep-alive
        # time, counted from the connection's start: the guard against slow headers.
        handler_args={"keepalive_timeout": cfg.server.client_header_timeout},
    )
    # Run-time users (`tollway users ...`) merged over the YAML's, for every part below.
    holder = Overlay(holder)
    app[USERS] = RuntimeUsers(store, holder.update)
    holder.reader = app[USERS].entries
    app[HOLDER] = holder
    app[STORE] = store
    app[CLOCK] = clock or SystemClock()
    app[METRICS] = metrics or Metrics()
    app[APIKEYS] = ApiKeys(store, app[CLOCK])
    app[METER] = Meter(store, app[CLOCK], lambda: holder.current)
    app[ACTIVE] = set()
    app[COUNTER] = TokenCounter(cfg.metering.tiktoken_encoding)
    app[DATA_DIR] = Path(data_dir) if data_dir is not None else data_dir_for(cfg.source)
    store.observers.append(app[METRICS].observe_store)
    if store.history is None:  # the ledger database of this setup (ledger.url)
        store.history = History(store, open_ledger(ledger_url(cfg), app[DATA_DIR]))
    shipper = Shipper(
        store, store.history.db, lambda: holder.current.organizations, cfg.ledger.ship_batch
    )
    store.history.shipper = shipper
    app[SHIPPING] = ShippingTask(shipper, lambda: holder.current, app[METRICS])
    listen = getattr(holder, "add_listener", None)
    if listen is not None:
        listen(lambda _cfg: app[METRICS].config_reloaded(True))
    listen_failures = getattr(holder, "add_failure_listener", None)
    if listen_failures is not None:
        listen_failures(lambda _err: app[METRICS].config_reloaded(False))
    app.cleanup_ctx.append(_upstream_client)
    app.cleanup_ctx.append(_store_lifecycle(close_store))
    app.cleanup_ctx.append(_shipping(close_store))
    app.cleanup_ctx.append(_auto_reload)
    app.cleanup_ctx.append(_alerts)
    app.cleanup_ctx.append(_journal)
    app.cleanup_ctx.append(_revocations)
    app.cleanup_ctx.append(_settlements)  # last in, so first out: see _settlements

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # No /metrics here: the client port answers 404 (see runtime/metrics_server.py).
    for route in ROUTES:
        app.router.add_route("*", route.path, _proxy_view)
    admin = create_admin_app(holder, store, app[CLOCK], app[APIKEYS], users=app[USERS])
    app.add_subapp("/admin", admin)
    setup_console(app, admin[ADMIN])
    member_requests.setup(app, holder, store, app[CLOCK], app[APIKEYS])
    if cfg.notifications.limit_requests_webhook is not None:
        increases = app[member_requests.INCREASES]
        app.cleanup_ctx.append(digest.lifecycle(holder, increases, app[CLOCK]))
    # Last: any other /v1 path is answered (404 in the provider's format), never forwarded.
    app.router.add_route("*", "/v1/{tail:.*}", _proxy_view)
    return app


async def _upstream_client(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    client = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    app[SETTLER] = settler = Settler(
        app[HOLDER], app[METER], app[COUNTER], app[METRICS], app[CLOCK]
    )
    app[HANDLER] = ProxyHandler(
        app[HOLDER],
        app[METER],
        app[APIKEYS],
        client,
        app[COUNTER],
        app[METRICS],
        app[CLOCK],
        settler,
    )
    yield
    await client.close()


async def _settlements(app: web.Application) -> AsyncIterator[None]:
    """At shutdown, requests cut by the drain timeout (their handlers were just cancelled)
    and their settlements finish before anything they use closes: the journal, the
    auto-reloader, the store."""
    yield
    deadline = asyncio.get_running_loop().time() + SETTLE_WAIT
    while pending := [*app[ACTIVE], *app[SETTLER].pending]:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.error("shutdown: settlements still running", extra={"count": len(pending)})
            return
        await asyncio.wait(pending, timeout=left)


async def _alerts(app: web.Application) -> AsyncIterator[None]:
    """Threshold alerts, checked after settlements; stopped before the store closes."""
    sender = AlertSender(app[HOLDER], app[STORE], app[CLOCK], app[HANDLER].client)
    app[ALERTS] = sender
    app[SETTLER].on_settled.append(sender.on_settled)
    yield
    await sender.stop()


async def _auto_reload(app: web.Application) -> AsyncIterator[None]:
    """Auto-reload purchases, started by settlements; stopped before the store closes."""
    client = app[HANDLER].client
    auto_reloader = AutoReloader(app[HOLDER], app[STORE], app[CLOCK], app[METRICS], client)
    app[AUTO_RELOADER] = auto_reloader
    app[PAYMENTS] = auto_reloader.provider  # the console's purchases pay through the same seam
    app[SETTLER].on_settled.append(auto_reloader.on_settled)
    auto_reloader.start_reconciling()  # purchases a dead process left unfinished
    yield
    await auto_reloader.stop()


async def _revocations(app: web.Application) -> AsyncIterator[None]:
    """Poll the revocation list every second while the store answers, so that fail-open
    never serves a key revoked before an outage (`ApiKeys.poll_revocations`)."""

    async def poll() -> None:
        while True:
            try:
                await app[APIKEYS].poll_revocations()
            except StoreUnavailable:
                pass  # fail-open relies on the last poll; the next one catches up
            except Exception:
                log.exception("revocation poll failed")
            await asyncio.sleep(REVOCATION_POLL)

    task = asyncio.ensure_future(poll())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _journal(app: web.Application) -> AsyncIterator[None]:
    """The journal of settlements the store could not take, and its replayer (stopped
    before the store closes; what it has not replayed waits on disk for the next start)."""
    settler = app[SETTLER]
    journal = Journal(app[DATA_DIR] / "journal", app[HOLDER].current.store.journal_max_bytes)
    journal.observers.append(app[METRICS].observe_journal)
    settler.journal = journal
    app[JOURNAL] = journal
    history = app[STORE].history

    async def replay(entry: Charge) -> object:
        # The settled marker lives store.settled_ttl_seconds; a replay may come later, so
        # the ledger (every settlement's event) is asked first.
        if await history.settled(entry.principal.org, entry.rid):
            return None
        return await settler.apply(entry)

    app[REPLAYER] = replayer = Replayer(journal, replay, app[STORE].ping)
    task = asyncio.ensure_future(replayer.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    journal.close()


def _store_lifecycle(close_store: bool):
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        with contextlib.suppress(Exception):
            await app[STORE].load_scripts()
        yield
        if close_store:
            await app[STORE].close()

    return lifecycle


def _shipping(close_store: bool):
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        """Ship ledger events in the background; at shutdown (after the last settlements,
        before the store closes) ship what they left."""
        app[SHIPPING].start()
        yield
        await app[SHIPPING].stop()
        if close_store:
            await app[STORE].history.close()

    return lifecycle


async def _proxy_view(request: web.Request) -> web.StreamResponse:
    active, task = request.app[ACTIVE], asyncio.current_task()
    active.add(task)  # type: ignore[arg-type]
    try:
        return await request.app[HANDLER].handle(request)
    finally:
        active.discard(task)  # type: ignore[arg-type]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: fails while the store is unreachable in fail-closed mode."""
    app = request.app
    cfg = app[HOLDER].current
    store_ok = await app[STORE].ping()
    ready = store_ok or cfg.store.on_unavailable == "open"
    body = {"status": "ready" if ready else "unavailable", "store": store_ok}
    return web.json_response(body, status=200 if ready else 503)
