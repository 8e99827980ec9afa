"""Relaying a request to the upstream and its answer back: headers and the byte pump.

The client's key is replaced by the operator's, hop-by-hop headers are dropped both ways,
client headers that could select another upstream account or address are dropped, and
the upstream's own rate-limit headers never reach the client. The answer is relayed
chunk by chunk as it arrives, through a usage tap when the request is metered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from tollway.proxy.gateway.providers import is_upstream_ratelimit_header
from tollway.proxy.wire.taps import TapResult, UsageTap

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# Client headers never forwarded: hop-by-hop, credentials (replaced by the operator's),
# the operator account selectors, addressing and forwarding claims, and our own.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    # aiohttp inflated the body Tollway read and forwards (routes.gate refuses a coding it
    # cannot): the upstream gets plain bytes, so their old label must not go with them.
    "content-encoding",
    "openai-organization",
    "openai-project",
    "forwarded",
    "x-real-ip",
    "x-host",
    "via",
    # Headers some servers obey to rewrite the path or the method of a request.
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
}

_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie", "x-request-id", "request-id"}


def upstream_headers(
    client: Mapping[str, str], auth: dict[str, str], extra_drop: frozenset[str]
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        n = name.lower()
        if n in _DROP_REQUEST or n in extra_drop or n.startswith(("x-forwarded-", "x-tollway-")):
            continue
        out.add(name, value)
    out.update(auth)
    # Usage is read off the bytes: they must arrive uncompressed.
    out["accept-encoding"] = "identity"
    return out


def response_headers(upstream: aiohttp.ClientResponse, ours: dict[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        n = name.lower()
        if n in _DROP_RESPONSE or is_upstream_ratelimit_header(n):
            continue
        out.add(name, value)
    upstream_id = upstream.headers.get("x-request-id") or upstream.headers.get("request-id")
    if upstream_id:
        out["x-upstream-request-id"] = upstream_id
    out.update(ours)
    return out


@dataclass(frozen=True, slots=True)
class Drain:
    """How far a metered stream is read on after its client left, waiting for the usage
    the upstream bills (``metering.drain_max_bytes`` / ``drain_max_seconds``)."""

    max_bytes: int
    max_seconds: float


@dataclass(slots=True)
class Relayed:
    """What happened while relaying one upstream answer."""

    status: int
    streaming: bool
    result: TapResult | None  # None when nothing was tapped (an error status)
    client_gone: bool = False  # the client went away before the end
    upstream_cut: bool = False  # the upstream body ended abnormally (reset, timeout)
    drained: int = -1  # bytes read after the client left (-1: it did not leave mid-stream)
    drain_stopped: bool = False  # a drain bound was reached before the usage arrived
    first_byte_s: float = 0.0
    upstream_s: float = 0.0


async def relay_whole(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    tap: UsageTap | None,
    started: float,
    redact: str = "",
) -> tuple[web.Response | None, Relayed]:
    """Read an answer that is not a stream whole before answering it: a metered JSON answer
    (through `tap`), or an error. One that is cut off, or that `tap` cannot parse, is not
    sent (None): the caller answers an error in the client's format, so a client never
    receives a truncated or broken 200. `redact` (the operator's key) is blanked out of the
    body: an upstream that echoes the key it was sent must not hand it to a client. The
    answer is sent before this returns (the settlement that follows never delays it).
    Never raises for an upstream or a client that goes away mid-body."""
    info = Relayed(upstream.status, False, None, first_byte_s=time.perf_counter() - started)
    try:
        body = await upstream.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        info.upstream_cut = True
        upstream.close()  # the connection is in an unknown state: never reuse it
        info.upstream_s = time.perf_counter() - started
        return None, info
    info.upstream_s = time.perf_counter() - started
    if tap is not None:
        tap.feed(body)
        _, info.result = tap.finish()
        if not info.result.complete:
            return None, info
    if redact:
        body = body.replace(redact.encode(), b"[redacted]")
    resp = web.Response(
        status=upstream.status, body=body, headers=response_headers(upstream, headers)
    )
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        info.client_gone = True
    return resp, info


async def _drain(
    upstream: aiohttp.ClientResponse, tap: UsageTap, drain: Drain, info: Relayed
) -> None:
    """Read on after the client left, through `tap`, until the usage arrives (the upstream
    bills the whole answer, reasoning and server-side context included, whether or not
    anyone reads it), or until a bound of `drain` is reached (`info.drain_stopped`)."""
    info.drained = 0
    if tap.complete:
        return
    try:
        async with asyncio.timeout(drain.max_seconds):
            async for chunk in upstream.content.iter_any():
                tap.feed(chunk)
                info.drained += len(chunk)
                if tap.complete:
                    return
                if info.drained >= drain.max_bytes:
                    info.drain_stopped = True
                    return
    except TimeoutError:
        info.drain_stopped = True
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        info.upstream_cut = True


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: dict[str, str],
    tap: UsageTap | None,
    started: float,
    drain: Drain | None = None,
) -> tuple[web.StreamResponse, Relayed]:
    """Pump `upstream` to the client. Never raises for a client or upstream that goes away
    mid-body: that is recorded in the returned `Relayed`. A metered stream whose client
    left is read on within `drain` (None: not at all) until its usage arrives."""
    streaming = upstream.content_type == "text/event-stream"
    info = Relayed(upstream.status, streaming, None, first_byte_s=time.perf_counter() - started)
    resp = web.StreamResponse(status=upstream.status, headers=response_headers(upstream, headers))
    try:
        await resp.prepare(request)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        info.client_gone = True
    try:
        async for chunk in upstream.content.iter_any():
            out = tap.feed(chunk) if tap is not None else chunk
            if out and not info.client_gone:
                try:
                    await resp.write(out)
                except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                    info.client_gone = True
            if info.client_gone and (streaming or tap is None):
                # A metered stream is read on until its usage arrives (bounded); then,
                # or at once for an unmetered one, we hang up and it stops generating. A
                # JSON body is read to its end so that its usage is charged exactly.
                if tap is not None and drain is not None:
                    await _drain(upstream, tap, drain, info)
                break
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
        info.upstream_cut = True
    if tap is not None:
        rest, info.result = tap.finish()
        if rest and not info.client_gone:
            try:
                await resp.write(rest)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                info.client_gone = True
    if info.client_gone or info.upstream_cut:
        upstream.close()  # the connection is in an unknown state: never reuse it
    if not info.client_gone and not info.upstream_cut:
        try:
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            info.client_gone = True
    elif info.upstream_cut and not info.client_gone and request.transport is not None:
        # End the client's response abruptly too, so it can tell it was cut.
        request.transport.close()
    info.upstream_s = time.perf_counter() - started
    return resp, info
