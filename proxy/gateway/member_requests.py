"""The client-facing limit-increase endpoint: a user stopped by a spend cap or by the end
of their included usage asks for more with their own Tollway key.

    POST /v1/tollway/limit-requests   body {"reason": "..."} (optional; may be empty)
         201 the request filed         409 one is pending already (the pending one is named)
         400 a key without a user, bad JSON, a reason that is not text or too long
    GET  /v1/tollway/limit-requests
         200 the caller's latest request (pending, approved or denied) and their month
         404 they never filed one

Answers are JSON; errors are in the caller's provider format (Anthropic when the request
carries ``anthropic-version``, else OpenAI), like every other Tollway error, with 401 for
a bad or revoked key and 503 while the store is unreachable. These routes are not
metered and take nothing from any bucket. `setup` wires them; the app starts the daily
digest task (`tollway.proxy.runtime.digest`) when it is configured.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from tollway.config.reload import ConfigSource
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import Clock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.increases import LimitIncreases, LimitRequest, RequestPending
from tollway.limits.outcomes import Decision, Refusal
from tollway.limits.plans import Principal
from tollway.limits.spend import Spend, SpendError, UserStatus
from tollway.limits.store import Store
from tollway.proxy.gateway import providers
from tollway.proxy.gateway.call import Reject, new_request_id
from tollway.proxy.gateway.identify import identify
from tollway.proxy.gateway.providers import ANTHROPIC, OPENAI, Problem

log = logging.getLogger("tollway.limit_requests")

PATH = "/v1/tollway/limit-requests"
HINT = f" To ask for a higher limit, POST {PATH} with this key (or ask your Tollway administrator)."
ADMIN_HINT = " Ask your Tollway administrator to raise it."
CREDIT_HINT = " Ask your Tollway administrator to add credit."
MAX_BODY = 64 * 1024
INCREASES = web.AppKey("increases", LimitIncreases)


def refusal_hint(decision: Decision, principal: Principal) -> str:
    """The next step to append to a money refusal: a user stopped by a spend cap or the
    end of their included usage can file a limit-increase request with their own key;
    anyone else (a key without a user, no credit left) asks the administrator."""
    if decision.reason is Refusal.CREDIT:
        return CREDIT_HINT
    if decision.reason in (Refusal.CAP, Refusal.INCLUDED):
        return HINT if principal.user else ADMIN_HINT
    return ""


def rfc3339(ms: int | None) -> str | None:
    return None if ms is None else providers.rfc3339(ms)


def request_json(r: LimitRequest) -> dict[str, Any]:
    """A request as the endpoint shows it."""
    return {
        "object": "tollway.limit_request",
        "id": r.id,
        "organization": r.org,
        "user": r.user,
        "status": r.status,
        "reason": r.reason,
        "created_at": rfc3339(r.asked_ms),
        "decided_at": rfc3339(r.decided_ms),
        "note": r.note,
        "decision": r.decision,
    }


def month_json(s: UserStatus, resets_at_ms: int) -> dict[str, Any]:
    """The caller's month so far (micro-USD; cap None: no cap of their own)."""
    return {
        "seat": s.seat,
        "included_usage": s.included,
        "spend": s.spend,
        "extra_usage_spend": s.extra,
        "cap": s.cap,
        "extra_usage_enabled": s.extra_usage,
        "resets_at": rfc3339(resets_at_ms),
    }


class Endpoint:
    """The two views, bound to the app's config holder, keys and `LimitIncreases`."""

    def __init__(self, holder: ConfigSource, increases: LimitIncreases, apikeys: ApiKeys) -> None:
        self.holder = holder
        self.increases = increases
        self.spend = increases.spend
        self.apikeys = apikeys

    # --- helpers -------------------------------------------------------------------------
    @staticmethod
    def _provider(request: web.Request) -> str:
        return ANTHROPIC if "anthropic-version" in request.headers else OPENAI

    def _error(self, request: web.Request, problem: Problem) -> web.Response:
        provider = self._provider(request)
        rid = new_request_id()
        status, body = providers.error_body(provider, problem, rid)
        headers = providers.error_headers(provider, problem)
        headers[providers.request_id_header(provider)] = rid
        return web.Response(status=status, body=body, headers=headers)

    async def _principal(self, request: web.Request) -> Principal:
        principal, _ = await identify(
            request.headers, self.apikeys, self.holder.current, metered=False
        )
        if not principal.user:
            raise Reject(
                Problem(
                    400,
                    "bad_request",
                    "This key belongs to no user: limit-increase requests are filed by users "
                    "with their own key. Ask your administrator to change the limits.",
                )
            )
        return principal

    async def _reason(self, request: web.Request) -> str:
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise Reject(Problem(413, "too_large", f"The body is larger than {MAX_BODY} bytes."))
        if not body.strip():
            return ""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise Reject(Problem(400, "bad_request", f"The body is not valid JSON: {e}")) from None
        if not isinstance(payload, dict):
            raise Reject(Problem(400, "bad_request", "The body must be a JSON object."))
        reason = payload.get("reason", "")
        if not isinstance(reason, str):
            raise Reject(Problem(400, "bad_request", "'reason' must be a string."))
        return reason

    async def _guard(self, request: web.Request, view: Any) -> web.StreamResponse:
        try:
            return await view(request)
        except Reject as f:
            return self._error(request, f.problem)
        except StoreUnavailable:
            problem = Problem(503, "unavailable", "Tollway cannot reach its store; retry later.")
            return self._error(request, problem)

    # --- views ---------------------------------------------------------------------------
    async def file(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._file)

    async def latest(self, request: web.Request) -> web.StreamResponse:
        return await self._guard(request, self._latest)

    async def _file(self, request: web.Request) -> web.Response:
        p = await self._principal(request)
        reason = await self._reason(request)
        try:
            filed = await self.increases.file(p.org, p.user or "", reason, key_id=p.key_id)
        except RequestPending as e:
            message = (
                f"You already have a pending limit-increase request ({e.request.id}, filed "
                f"{rfc3339(e.request.asked_ms)}); an administrator will approve or deny it."
            )
            raise Reject(Problem(409, "bad_request", message)) from None
        except SpendError as e:
            raise Reject(Problem(400, "bad_request", str(e))) from None
        log.info("limit request filed", extra={"org": p.org, "user": p.user, "request": filed.id})
        return web.json_response(request_json(filed), status=201, dumps=_dumps)

    async def _latest(self, request: web.Request) -> web.Response:
        p = await self._principal(request)
        user = p.user or ""
        latest = await self.increases.latest(p.org, user)
        if latest is None:
            raise Reject(Problem(404, "not_found", "You have not filed a limit-increase request."))
        body = request_json(latest)
        try:
            status = await self.spend.user_status(p.org, user)
            body["month"] = month_json(status, self.spend.month_bounds()[2])
        except SpendError:  # a user no longer in the config: the request alone
            pass
        return web.json_response(body, dumps=_dumps)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def setup(
    app: web.Application, holder: ConfigSource, store: Store, clock: Clock, apikeys: ApiKeys
) -> None:
    """Wire the endpoint into the proxy app (and `app[INCREASES]`). The daily digest of
    pending requests is process wiring: `tollway.proxy.runtime.app` starts it."""
    increases = LimitIncreases(Spend(store, clock, lambda: holder.current))
    app[INCREASES] = increases
    endpoint = Endpoint(holder, increases, apikeys)
    app.router.add_post(PATH, endpoint.file)
    app.router.add_get(PATH, endpoint.latest)
