"""A bare aiohttp pass-through proxy: no auth, no metering, no parsing. The ceiling for a
Python proxy hop, to compare Tollway with.

It does what any aiohttp reverse proxy must: read the request body, forward method, path,
query, body and headers (less hop-by-hop ones) on a pooled keep-alive connection, and
relay the answer chunk by chunk as it arrives. Same server, client and connector settings
as Tollway's (`proxy/runtime/serve.py`, `proxy/runtime/app.py`), same event loop (uvloop).

    python -m bench.bare_proxy --port 9002 --upstream http://127.0.0.1:9001 [--reuse-port]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _headers(headers: CIMultiDict[str] | object) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():  # type: ignore[attr-defined]
        if name.lower() not in _DROP:
            out.add(name, value)
    return out


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    client = request.app[CLIENT]
    async with client.request(
        request.method,
        request.app[UPSTREAM] + request.rel_url.raw_path_qs,
        data=body or None,
        headers=_headers(request.headers),
        allow_redirects=False,
    ) as upstream:
        resp = web.StreamResponse(status=upstream.status, headers=_headers(upstream.headers))
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def _client(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    app[CLIENT] = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
    yield
    await app[CLIENT].close()


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str, reuse_port: bool) -> None:
    runner = web.AppRunner(create_app(upstream), access_log=None, handler_cancellation=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--reuse-port", action="store_true")
    args = p.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.upstream, args.reuse_port))


if __name__ == "__main__":
    main()
