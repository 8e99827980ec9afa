"""`WebhookPaymentProvider`: a payment made by POSTing to the operator's payment webhook.

Request: ``POST <url>`` with a JSON body ::

    {"org": "acme", "amount_usd": "40.00", "amount_micro": 40000000,
     "idempotency_key": "rl_acme_..."}

(``amount_usd`` is a string, exact: ``tollway.limits.money.format_usd``), headers
``Idempotency-Key`` (the same key) and, when a secret is configured,
``X-Tollway-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes with the secret>``.

Answer: a 2xx status with a JSON object holding a non-empty string ``payment_id`` means
paid. Anything else (another status, a body that is not such JSON, a timeout, a connection
error) is a failure, reported as ``PaymentResult(ok=False, error=...)``; `charge` never
raises for those.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import aiohttp
import orjson
from tollway.limits.money import format_usd
from tollway.limits.payments import PaymentResult

SIGNATURE_HEADER = "X-Tollway-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header value of `body` (what the webhook should recompute)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookPaymentProvider:
    def __init__(
        self,
        url: str,
        secret: str | None,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.secret = secret
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def charge(self, org: str, amount_micro: int, idempotency_key: str) -> PaymentResult:
        body = orjson.dumps(
            {
                "org": org,
                "amount_usd": format_usd(amount_micro),
                "amount_micro": amount_micro,
                "idempotency_key": idempotency_key,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",  # the shared session does not decompress
            "Idempotency-Key": idempotency_key,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        try:
            async with self.session.post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            return PaymentResult(False, None, "payment webhook timed out")
        except aiohttp.ClientError as e:
            return PaymentResult(False, None, f"payment webhook unreachable: {e}")
        if not 200 <= status < 300:
            return PaymentResult(False, None, f"payment webhook answered {status}")
        payment_id = _payment_id(raw)
        if payment_id is None:
            return PaymentResult(False, None, "payment webhook answered without a payment_id")
        return PaymentResult(True, payment_id, None)


def _payment_id(raw: bytes) -> str | None:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("payment_id")
    if not isinstance(pid, str) or not pid.strip():
        return None
    return pid[:200]
