"""The routes forwarded without metering: the model list (filtered per key) and
count_tokens (one request off the RPM buckets, nothing else). And the release of an
admission whose admit timed out (see `release_later`).

These functions are the handler's: they take it as their first argument (typed by the
`Handler` protocol, so this module does not import the handler that imports it) and use
its upstream connection, its relay and its error type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from tollway.config.schema import Config
from tollway.limits.clock import Clock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Decision, Meter
from tollway.limits.plans import Principal
from tollway.proxy.gateway import models_list, providers
from tollway.proxy.gateway.call import Call, Reject
from tollway.proxy.gateway.forward import Relayed, response_headers
from tollway.proxy.gateway.providers import Problem
from tollway.proxy.gateway.settling import Settler
from tollway.proxy.metrics import Metrics
from tollway.proxy.wire.taps import UsageTap

log = logging.getLogger("tollway.request")

RELEASE_TRIES = 60  # one a second: a store away longer lets the hold expire by its TTL


class Handler(Protocol):
    """What these routes use of the handler (`ProxyHandler` is one)."""

    meter: Meter
    metrics: Metrics
    clock: Clock
    settler: Settler
    releasing: set[asyncio.Task[Any]]

    def _usable(self, cfg: Config, call: Call) -> models_list.Usable: ...

    def _store_down(self) -> Problem: ...

    async def _open(
        self, request: web.Request, call: Call, cfg: Config, body: bytes
    ) -> aiohttp.ClientResponse: ...

    async def _forward_unmetered(
        self,
        request: web.Request,
        call: Call,
        cfg: Config,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse: ...

    async def _relay(
        self,
        request: web.Request,
        call: Call,
        cfg: Config,
        upstream: aiohttp.ClientResponse,
        ours: dict[str, str],
        tap: UsageTap | None,
        started: float,
    ) -> tuple[web.StreamResponse | None, Relayed]: ...


async def model_list(
    h: Handler, request: web.Request, call: Call, cfg: Config
) -> web.StreamResponse:
    """GET /v1/models: the upstream's list with only the models this key may use."""
    ours = {providers.request_id_header(call.provider): call.rid}
    upstream = await h._open(request, call, cfg, b"")
    async with upstream:
        if upstream.status >= 400:
            resp, _ = await h._relay(request, call, cfg, upstream, ours, None, time.perf_counter())
            call.outcome = "upstream_error"
            if resp is None:
                raise Reject(Problem(502, "upstream", "The model API's answer was cut off."))
            return resp
        try:
            raw = await upstream.read()
        except Exception:
            raw = b""
        body = models_list.filter_list(call.provider, raw, h._usable(cfg, call))
        if body is None:
            call.outcome = "upstream_error"
            raise Reject(Problem(502, "upstream", "The model API sent no model list."))
        headers = response_headers(upstream, ours)
        headers.popall("content-encoding", None)
        headers["content-type"] = "application/json"
        return web.Response(status=upstream.status, body=body, headers=headers)


async def count_tokens(
    h: Handler, request: web.Request, call: Call, cfg: Config, body: bytes
) -> web.StreamResponse:
    """POST /v1/messages/count_tokens: admitted against the RPM buckets (no tokens, no
    money) like any request, forwarded, then its admission is given back but for its
    one request."""
    principal = call.principal
    assert principal is not None
    model = _model_of(body)
    call.model = model
    try:
        decision = await h.meter.admit(principal, call.rid, model, 0, None)
    except StoreUnavailable:
        release_later(h, principal, call.rid)
        if cfg.store.on_unavailable != "open":
            raise Reject(h._store_down()) from None
        h.metrics.store_unavailable.labels("open").inc()
        decision = Decision(True)
    headers = providers.ratelimit_headers(call.provider, decision, h.clock.now_ms())
    if not decision.admitted:
        h.metrics.refusals.labels(str(decision.reason or ""), principal.org).inc()
        raise Reject(providers.refusal(call.provider, decision, h.clock.now_ms()), headers)
    try:
        return await h._forward_unmetered(request, call, cfg, body, headers)
    finally:
        if decision.buckets:  # admitted by the store (not fail-open): free its hold
            # Tracked with the settlements: shutdown and tests wait for it.
            release_later(h, principal, call.rid, keep_ms=0, tasks=h.settler.pending)


def _model_of(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) and model else None


def release_later(
    h: Handler,
    principal: Principal,
    rid: str,
    keep_ms: int | None = None,
    tasks: set[asyncio.Task[Any]] | None = None,
) -> None:
    """Give back `rid`'s admission in the background, retrying while the store is away
    (up to `RELEASE_TRIES` seconds; past that the hold expires by its TTL). The task goes
    in `tasks` (default: the handler's `releasing`)."""

    async def run() -> None:
        for _ in range(RELEASE_TRIES):
            try:
                if await h.meter.release(principal, rid, keep_ms) and keep_ms is None:
                    log.warning("late admission released", extra={"rid": rid})
                return
            except StoreUnavailable:
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("release failed", extra={"rid": rid})
                return

    task = asyncio.ensure_future(run())
    into = h.releasing if tasks is None else tasks
    into.add(task)
    task.add_done_callback(into.discard)
