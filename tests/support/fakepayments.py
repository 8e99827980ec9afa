"""A fake payment webhook (a real aiohttp app on loopback) for the payment seam
(`tollway.proxy.runtime.payment_webhook`): auto-reload's and the console's purchases."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from tollway.proxy.runtime.payment_webhook import SIGNATURE_HEADER, sign

SECRET = "whsec-test-secret"


@dataclass
class FakePayments:
    """A payment webhook: answers per `mode` (ok | 500 | no_id | bad_json), after `delay`
    seconds; `fail_first` failures (500) before answering normally. Idempotent as real
    providers are: a key that was paid already answers its first payment again (`paid`:
    idempotency key -> payment id), never a second charge."""

    secret: str | None = SECRET
    mode: str = "ok"
    delay: float = 0.0
    fail_first: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    paid: dict[str, str] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = request.headers.get(SIGNATURE_HEADER)
        call = {
            "json": orjson.loads(body),
            "idempotency_header": request.headers.get("Idempotency-Key"),
            "signature_ok": self.secret is None
            or (signed is not None and hmac.compare_digest(signed, sign(self.secret, body))),
        }
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if not call["signature_ok"]:
                return web.json_response({"error": "bad signature"}, status=401)
            if self.fail_first > 0:
                self.fail_first -= 1
                return web.json_response({"error": "card declined"}, status=500)
            if self.mode == "500":
                return web.json_response({"error": "card declined"}, status=500)
            if self.mode == "no_id":
                return web.json_response({"status": "ok"})
            if self.mode == "bad_json":
                return web.Response(text="<html>ok</html>", content_type="text/html")
            key = call["json"]["idempotency_key"]
            payment_id = self.paid.setdefault(key, f"pay_{len(self.calls)}")
            return web.json_response({"payment_id": payment_id})
        finally:
            self.in_flight -= 1

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/pay", self.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/pay"
