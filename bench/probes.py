"""Measurements wrk cannot make: time to the first streamed event, and event-loop lag.

`first_event_times` speaks raw HTTP/1.1 over one keep-alive connection per target (no
client library between the socket and the clock) and times, for each streamed request,
when the first SSE ``data:`` line arrives. The upstream is asked to wait
``x-bench-chunk-delay-ms`` between content chunks, so a proxy that buffered would show a
first event later than that delay.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class Target:
    name: str
    port: int


class RawClient:
    """One keep-alive HTTP/1.1 connection; bodies must be chunked or have a length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, float | None, float, bytes]:
        """(status, seconds to the first "data:" line or None, seconds to the end, body)."""
        assert self.reader is not None and self.writer is not None
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        req = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        self.writer.write(req)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        first: float | None = None
        parts: list[bytes] = []
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data = (await self.reader.readexactly(size + 2))[:-2]
                if first is None and b"data:" in data:
                    first = time.perf_counter() - t0
                parts.append(data)
        else:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            parts.append(await self.reader.readexactly(length))
        return status, first, time.perf_counter() - t0, b"".join(parts)


async def first_event_times(
    targets: list[Target],
    body: bytes,
    headers: dict[str, str],
    n: int,
    path: str = "/v1/chat/completions",
) -> dict[str, list[float]]:
    """Seconds to the first streamed event, `n` requests per target, targets interleaved."""
    clients = {t.name: RawClient(t.port) for t in targets}
    for c in clients.values():
        await c.connect()
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for _ in range(n):
            for t in targets:
                status, first, _total, data = await clients[t.name].post(path, body, headers)
                if status != 200 or first is None:
                    raise RuntimeError(f"{t.name}: status {status}: {data[:300]!r}")
                out[t.name].append(first)
    finally:
        for c in clients.values():
            await c.close()
    return out


def summary_ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    n = len(v)
    return {
        "p50": round(statistics.median(v) * 1000, 3),
        "p90": round(v[min(n - 1, int(0.9 * n))] * 1000, 3),
        "p99": round(v[min(n - 1, int(0.99 * n))] * 1000, 3),
        "max": round(v[-1] * 1000, 3),
    }


async def drive(port: int, path: str, bodies: list[bytes], headers: dict[str, str], conc: int):
    """Send every body once, `conc` at a time; returns the statuses."""
    queue = list(bodies)
    statuses: list[int] = []

    async def worker() -> None:
        c = RawClient(port)
        await c.connect()
        try:
            while queue:
                body = queue.pop()
                status, _first, _total, data = await c.post(path, body, headers)
                if status != 200:
                    raise RuntimeError(f"status {status}: {data[:300]!r}")
                statuses.append(status)
        finally:
            await c.close()

    await asyncio.gather(*(worker() for _ in range(conc)))
    return statuses
