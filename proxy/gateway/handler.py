"""The request pipeline: identify → admit → forward → meter → settle.

Every request gets an id (``x-request-id``; ``request-id`` on Anthropic routes) that names
it in logs, ledger events and settlement. A request refused before forwarding changes
nothing; a forwarded one is settled exactly once, even when the client goes away or the
server shuts down mid-stream (settlement is shielded from cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from tollway.config.reload import ConfigSource
from tollway.config.schema import Config
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import Clock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Meter
from tollway.limits.outcomes import Decision, Refusal
from tollway.limits.prices import cost_micro, rates_for
from tollway.limits.usage import Usage, tier_name
from tollway.proxy.gateway import models_list, passthrough, providers, routes
from tollway.proxy.gateway.call import Call, Reject
from tollway.proxy.gateway.forward import Drain, Relayed, relay, relay_whole, upstream_headers
from tollway.proxy.gateway.identify import client_workspace, identify, request_secret
from tollway.proxy.gateway.inbound import (
    BUDGET_HEADER,
    escapes,
    parse,
    read_body,
    session_budget,
    session_id,
)
from tollway.proxy.gateway.member_requests import refusal_hint
from tollway.proxy.gateway.providers import OPENAI, Problem
from tollway.proxy.gateway.settling import Settler
from tollway.proxy.gateway.tokens import TokenCounter, declared_max_output
from tollway.proxy.metrics import Metrics
from tollway.proxy.wire.taps import UsageTap, make_tap

log = logging.getLogger("tollway.request")

# Routes whose streams take stream_options.include_usage.
STREAM_USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


# (base URL, auth headers, timeout, client headers not forwarded) of one upstream.
_Upstream = tuple[str, dict[str, str], aiohttp.ClientTimeout, frozenset[str]]


class ProxyHandler:
    """The proxied routes. Settlement is composed in: `settler` (shared with the journal
    replayer, which the app wires)."""

    def __init__(
        self,
        holder: ConfigSource,
        meter: Meter,
        apikeys: ApiKeys,
        client: aiohttp.ClientSession,
        counter: TokenCounter,
        metrics: Metrics,
        clock: Clock,
        settler: Settler,
    ) -> None:
        self.holder = holder
        self.meter = meter
        self.apikeys = apikeys
        self.client = client
        self.counter = counter
        self.metrics = metrics
        self.clock = clock
        self.settler = settler
        self._upstream_cfg: Config | None = None
        self._upstreams: dict[str, _Upstream] = {}
        self.releasing: set[asyncio.Task[Any]] = set()  # passthrough.release_later

    # --- entry point ------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = routes.route_of(request)
        provider = routes.provider_of(route, request.headers)
        # The route's pattern, never the path: a path holding a client's text would make
        # the metrics' label set unbounded.
        label = route.path if route is not None else routes.UNKNOWN_ROUTE
        call = Call(label, provider, route is not None and route.kind == "metered")
        self.metrics.in_flight.inc()
        try:
            upstreams = self.holder.current.upstreams
            problem = routes.gate(route, request.method, request.headers, upstreams)
            if problem is not None or route is None:
                raise Reject(problem or Problem(404, "not_found", "Unknown URL."))
            return await self._serve(request, call, route.kind)
        except Reject as r:
            if r.problem.status == 405:
                r.headers.update(routes.allow_header(route))
            return self._problem(call, r.problem, r.headers)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(call.route, call.outcome, call.org).inc()

    def _problem(self, call: Call, problem: Problem, headers: dict[str, str]) -> web.Response:
        if call.outcome == "ok":
            call.outcome = {
                "key": "unauthorized",
                "unavailable": "unavailable",
                "upstream": "upstream_error",
                "timeout": "upstream_error",
                "no_upstream": "no_upstream",
            }.get(problem.kind, "refused" if problem.status == 429 else "bad_request")
        status, body = providers.error_body(call.provider, problem, call.rid)
        h = {**headers, **providers.error_headers(call.provider, problem)}
        h[providers.request_id_header(call.provider)] = call.rid
        log.info(
            "refused",
            extra={
                "rid": call.rid,
                "org": call.org,
                "route": call.route,
                "status": status,
                "kind": problem.kind,
            },
        )
        return web.Response(status=status, body=body, headers=h)

    # --- pipeline -----------------------------------------------------------------------
    async def _serve(
        self, request: web.Request, call: Call, kind: routes.Kind
    ) -> web.StreamResponse:
        cfg = self.holder.current
        try:
            call.principal, call.secret = await identify(
                request.headers, self.apikeys, cfg, metered=call.metered
            )
        except StoreUnavailable:
            # A key the revocation poll saw revoked is refused as such, store or not.
            record = self.apikeys.record(request_secret(request.headers) or "")
            if record is not None and record.key_id in self.apikeys.revoked:
                message = "Invalid API key: this key has been revoked."
                raise Reject(Problem(401, "key", message)) from None
            raise Reject(self._store_down()) from None
        refresh = getattr(self.holder, "refresh", None)
        if refresh is not None:  # run-time users of the organization (cached ~1 s)
            with contextlib.suppress(StoreUnavailable):  # admit applies the store policy
                await refresh(call.principal.org)
        call.principal = client_workspace(call.principal, request.headers, cfg)
        model_id = request.match_info.get("model_id")
        if model_id is not None and (escapes(model_id) or not self._usable(cfg, call)(model_id)):
            # A model the key may not use is as unknown to it as one that does not exist.
            raise Reject(Problem(404, "not_found", f"The model '{model_id}' does not exist."))
        server = cfg.server
        body = await read_body(request, server.max_body_bytes, server.client_body_timeout)
        if kind == "free":
            if model_id is None:
                return await passthrough.model_list(self, request, call, cfg)
            return await self._forward_unmetered(request, call, cfg, body)
        if kind == "counted":
            return await passthrough.count_tokens(self, request, call, cfg, body)

        payload = parse(body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise Reject(Problem(400, "bad_request", "The request has no 'model'."))
        call.model = model
        if call.route == "/v1/responses" and payload.get("background") is True:
            # Its answer is fetched later on a route Tollway does not meter, so its usage
            # could never be charged: refused before anything is spent (README, Decisions).
            message = (
                "Background responses ('background': true) are not supported through "
                "Tollway: their usage cannot be metered. Send the request without it."
            )
            raise Reject(Problem(400, "bad_request", message))
        record = self.apikeys.record(call.secret) if call.secret is not None else None
        if record is not None and not record.allows(model):
            message = f"This API key may not use the model '{model}'."
            raise Reject(Problem(403, "permission", message))
        # The price in force now, at admission, is the one the request pays.
        call.price = price = cfg.price_book.find(model, self.clock.now_ms())
        if price is None:
            raise Reject(
                Problem(
                    400,
                    "bad_request",
                    f"The model '{model}' has no price configured in Tollway, so it cannot "
                    "be metered. Ask your administrator to add it to the price table.",
                )
            )
        call.est = est = self.counter.estimate_request(payload, call.route)
        body, call.strip = self._with_stream_usage(call, payload, body)
        principal = call.principal
        assert principal is not None
        call.session = session_id(request, cfg)
        budget = session_budget(request.headers)
        # The hold is priced at the tier the request asks for (OpenAI service_tier).
        estimate = Usage(input_tokens=est, service_tier=tier_name(payload.get("service_tier")))
        try:
            decision = await self.meter.admit(
                principal,
                call.rid,
                model,
                est,
                cost_micro(price, estimate),
                max_output=declared_max_output(payload),
                output_price=rates_for(price, estimate).output,
                session=call.session,
                session_budget=budget,
            )
        except StoreUnavailable:
            # The admit may still run on a slow store, after we answered: give it back.
            passthrough.release_later(self, principal, call.rid)
            if cfg.store.on_unavailable != "open":
                raise Reject(self._store_down()) from None
            # Fail-open: served without limits; its settlement goes to the journal.
            self.metrics.store_unavailable.labels("open").inc()
            decision = Decision(True)
        call.headers = providers.ratelimit_headers(call.provider, decision, self.clock.now_ms())
        self._observe_buckets(principal.org, decision)
        if not decision.admitted:
            self.metrics.refusals.labels(str(decision.reason or ""), principal.org).inc()
            if decision.reason is Refusal.KEY and call.secret is not None:
                self.apikeys.forget(call.secret)
            hint = refusal_hint(decision, principal)
            problem = providers.refusal(call.provider, decision, self.clock.now_ms(), hint)
            raise Reject(problem, call.headers)
        self.metrics.added_latency.observe(time.perf_counter() - call.started)
        return await self._forward_metered(request, call, cfg, body)

    def _usable(self, cfg: Config, call: Call) -> models_list.Usable:
        """Whether a model id is one this request's key may use (priced and allowed)."""
        record = self.apikeys.record(call.secret) if call.secret is not None else None
        return models_list.usable(cfg, record, self.clock.now_ms())

    def _with_stream_usage(
        self, call: Call, payload: dict[str, Any], body: bytes
    ) -> tuple[bytes, bool]:
        """Ask an OpenAI stream for its usage chunk when the client did not; the tap then
        removes that chunk, so the client sees exactly what it asked for."""
        if call.provider != OPENAI or call.route not in STREAM_USAGE_ROUTES:
            return body, False
        if payload.get("stream") is not True:
            return body, False
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return body, False
        payload["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        return orjson.dumps(payload), True

    def _store_down(self) -> Problem:
        """A refusal because the store is unavailable (counted as policy "closed": the
        request was refused, whatever the configured policy)."""
        self.metrics.store_unavailable.labels("closed").inc()
        return Problem(
            503, "unavailable", "Tollway cannot reach its store right now; please retry."
        )

    def _observe_buckets(self, org: str, decision: Decision) -> None:
        for b in decision.buckets:
            if b.spec.scope == "org":
                self.metrics.bucket_remaining.labels(org, b.spec.limit).set(b.remaining)

    # --- forwarding -------------------------------------------------------------------------
    def _upstream(self, cfg: Config, call: Call) -> _Upstream:
        """Where and how to reach `call`'s provider under `cfg`: built once per config and
        provider (it was ~2% of a request's CPU, rebuilt per request)."""
        if cfg is not self._upstream_cfg:
            self._upstreams = {}
            self._upstream_cfg = cfg
        hit = self._upstreams.get(call.provider)
        if hit is None:
            up = cfg.upstreams[call.provider]
            auth = providers.upstream_auth(call.provider, up.api_key.get_secret_value())
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=cfg.server.upstream_connect_timeout,
                sock_read=up.timeout or cfg.server.upstream_read_timeout,
            )
            drop = frozenset(h.lower() for h in cfg.server.session_headers) | {BUDGET_HEADER}
            hit = self._upstreams[call.provider] = (up.base_url, auth, timeout, drop)
        return hit

    async def _open(
        self, request: web.Request, call: Call, cfg: Config, body: bytes
    ) -> aiohttp.ClientResponse:
        base, auth, timeout, drop = self._upstream(cfg, call)
        try:
            return await self.client.request(
                request.method,
                base + request.rel_url.raw_path_qs,
                data=body or None,
                headers=upstream_headers(request.headers, auth, drop),
                timeout=timeout,
                allow_redirects=False,
            )
        except TimeoutError:
            raise Reject(Problem(504, "timeout", "The model API did not answer in time.")) from None
        except aiohttp.ClientError as e:
            log.warning("upstream unreachable", extra={"rid": call.rid, "error": str(e)})
            raise Reject(Problem(502, "upstream", "The model API could not be reached.")) from None

    async def _forward_unmetered(
        self,
        request: web.Request,
        call: Call,
        cfg: Config,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        ours = {**(headers or {}), providers.request_id_header(call.provider): call.rid}
        started = time.perf_counter()
        upstream = await self._open(request, call, cfg, body)
        async with upstream:
            resp, info = await self._relay(request, call, cfg, upstream, ours, None, started)
        call.outcome = "ok" if info.status < 400 else "upstream_error"
        if resp is None:
            raise Reject(Problem(502, "upstream", "The model API's answer was cut off."))
        return resp

    async def _relay(
        self,
        request: web.Request,
        call: Call,
        cfg: Config,
        upstream: aiohttp.ClientResponse,
        ours: dict[str, str],
        tap: UsageTap | None,
        started: float,
    ) -> tuple[web.StreamResponse | None, Relayed]:
        """Relay an upstream answer: streams as they come; a metered JSON answer, or an
        error, read whole first (None when it was cut off or does not parse)."""
        if upstream.content_type == "text/event-stream" or (tap is None and upstream.ok):
            m = cfg.metering
            drain = Drain(m.drain_max_bytes, m.drain_max_seconds)
            return await relay(request, upstream, ours, tap, started, drain)
        key = cfg.upstreams[call.provider].api_key.get_secret_value()
        return await relay_whole(request, upstream, ours, tap, started, redact=key)

    async def _forward_metered(
        self, request: web.Request, call: Call, cfg: Config, body: bytes
    ) -> web.StreamResponse:
        """Forward an admitted request and relay its answer; settle it exactly once
        whatever happens (success, failure, a client that left, cancellation)."""
        ours = {**call.headers, providers.request_id_header(call.provider): call.rid}
        started = time.perf_counter()
        usage: Usage | None = None
        tap = None
        try:
            upstream = await self._open(request, call, cfg, body)
            async with upstream:
                ok_status = 200 <= upstream.status < 300
                streaming = upstream.content_type == "text/event-stream"
                tap = (
                    make_tap(call.provider, call.route, streaming, call.strip)
                    if ok_status
                    else None
                )
                resp, info = await self._relay(request, call, cfg, upstream, ours, tap, started)
            call.upstream_ms = int(info.upstream_s * 1000)
            self.metrics.upstream_ttfb.labels(call.provider).observe(info.first_byte_s)
            self.metrics.upstream_latency.labels(call.provider).observe(info.upstream_s)
            usage = await self.settler.charged_usage(info, call.est)
            if resp is None:
                call.outcome = "upstream_error"
                message = "The model API sent an incomplete or malformed answer."
                raise Reject(Problem(502, "upstream", message), call.headers)
            if usage is None:
                call.outcome = "upstream_error" if not ok_status else "failed"
            return resp
        except asyncio.CancelledError:
            # Only a shutdown whose drain timeout ran out cancels a handler: the answer is
            # cut, and charged what was relayed, like any stream cut short.
            if tap is not None and usage is None:
                usage = self.settler.cut_usage(tap.finish()[1], call.est)
            raise
        finally:
            # Runs on success, on failure, on a client that left and on cancellation alike;
            # cancelled or not, the settlement runs to its end (shutdown waits for it).
            await self.settler.finish(call, usage)
