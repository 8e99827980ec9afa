"""What a request brings in: its body (bounded), its JSON, its session id and budget, and the model
id of its path. Each refusal is a `Reject` in the caller's format, before anything was
forwarded."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from tollway.config.schema import Config
from tollway.limits.keysettings import usd_amount
from tollway.proxy.gateway.call import Reject
from tollway.proxy.gateway.providers import Problem


def escapes(model_id: str) -> bool:
    """A model id that is not one plain path segment: forwarded, it could name another
    path of the upstream (`..`, an encoded slash an upstream decodes)."""
    return "/" in model_id or "\\" in model_id or model_id in (".", "..")


def parse(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        problem = Problem(400, "bad_request", f"The request body is not valid JSON: {e}")
        raise Reject(problem) from None
    if not isinstance(payload, dict):
        raise Reject(Problem(400, "bad_request", "The request body must be a JSON object."))
    return payload


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The request body, at most `limit` bytes (else 413), arrived within `timeout`
    seconds (else 408). A body that came whole with the headers (most do) is taken from
    the buffer as it is: no timer, nothing to wait for."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Reject(_too_large(limit))
    content = request.content
    if content.is_eof():
        body = content.read_nowait(-1)
        if len(body) > limit:
            raise Reject(_too_large(limit))
        return body
    try:
        async with asyncio.timeout(timeout):
            chunks, size = [], 0
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise Reject(_too_large(limit))
                chunks.append(chunk)
    except TimeoutError:
        problem = Problem(408, "client_timeout", "The request body did not arrive in time.")
        raise Reject(problem) from None
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(413, "too_large", f"The request body is larger than the limit of {limit} bytes.")


def session_id(request: web.Request, cfg: Config) -> str | None:
    for name in cfg.server.session_headers:
        value = request.headers.get(name)
        if value:
            # Header bytes that are not UTF-8 arrive as surrogate escapes, which the
            # store cannot encode: the settlement would fail.
            return value[:128].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return None


BUDGET_HEADER = "x-tollway-session-budget"  # USD a client allows its session (not forwarded)


def session_budget(headers: Any) -> int | None:
    """The session budget a client sent (micro-USD), bounded as a key's session budget
    (`keysettings.usd_amount`); a malformed or out-of-bounds one is a 400."""
    value = headers.get(BUDGET_HEADER)
    if value is None:
        return None
    try:
        return usd_amount(value, positive=True)
    except ValueError as e:
        raise Reject(Problem(400, "bad_request", f"{BUDGET_HEADER}: {e}")) from None
