"""`AlertSender`: threshold alerts delivered to the operator's webhook.

A `Settler.on_settled` callback: after a settlement (never delaying the answer) it
asks `tollway.limits.alerts.Alerts` which thresholds this request crossed (claimed in
the store, so one replica sends each once per period), and POSTs each as JSON ::

    {"type": "threshold", "org": "acme", "kind": "cap", "subject": "user 'alice' spend cap",
     "threshold": 80, "used": 8000000, "limit": 10000000, "period": "2026-01",
     "at_ms": 1767225600000, "id": "acme:2026-01:cap:...:80"}

(``kind``: cap | included | balance; money in micro-USD; for ``balance`` the threshold
is an amount), signed like the payment webhook (``X-Tollway-Signature: sha256=<HMAC>``
of the exact body, when `notifications.alerts.secret_env` is set) with an
``Idempotency-Key`` header (``id``). A delivery that fails (not 2xx, timeout, connection
error) is retried with exponential back-off, 1 s, 2 s, 4 s..., up to `max_attempts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from tollway.config.reload import ConfigSource
from tollway.config.settings import Alerts as AlertSettings
from tollway.limits.alerts import Alert, Alerts
from tollway.limits.clock import Clock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Charge, Settlement, periods
from tollway.limits.plans import Principal
from tollway.limits.store import Store
from tollway.limits.windows import windows
from tollway.proxy.runtime.payment_webhook import SIGNATURE_HEADER, sign

log = logging.getLogger("tollway.alerts")


class AlertSender:
    def __init__(
        self,
        holder: ConfigSource,
        store: Store,
        clock: Clock,
        session: aiohttp.ClientSession,
        base_delay: float = 1.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.holder = holder
        self.alerts = Alerts(store)
        self.clock = clock
        self.session = session
        self.base_delay = base_delay
        self.sleep = sleep
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sent: list[dict[str, Any]] = []  # delivered bodies, newest last (bounded)

    def on_settled(self, charge: Charge, settlement: Settlement) -> None:
        cfg = self.holder.current
        if cfg.notifications.alerts is None or settlement.duplicate:
            return
        task = asyncio.ensure_future(self._check(charge.principal, settlement, charge.model))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _check(self, principal: Principal, settlement: Settlement, model: str | None) -> None:
        cfg = self.holder.current
        settings = cfg.notifications.alerts
        org_cfg = cfg.organizations.get(principal.org)
        if settings is None or org_cfg is None:
            return
        now = self.clock.now_ms()
        month = periods(now, cfg.server.tzinfo)[0]
        prepaid = org_cfg.billing.mode == "prepaid"
        try:
            found = await self.alerts.check(
                org_cfg,
                principal,
                month,
                windows(now, cfg.server.tzinfo),
                now,
                settings.thresholds,
                settings.low_balance if prepaid else None,
                settlement.available,
                model,
            )
        except StoreUnavailable as e:
            log.warning("alerts: store unavailable", extra={"error": str(e)})
            return
        except Exception:
            log.exception("alerts: check failed")
            return
        for alert in found:
            await self.deliver(alert, settings)

    async def deliver(self, alert: Alert, settings: AlertSettings) -> bool:
        """POST one alert, retried with back-off; True once delivered."""
        ident = f"{alert.org}:{alert.period}:{alert.kind}:{alert.subject}:{alert.threshold}"
        doc = {"type": "threshold", **alert.to_dict(), "id": ident}
        body = orjson.dumps(doc)
        headers = {"Content-Type": "application/json", "Idempotency-Key": ident}
        if settings.secret is not None:
            headers[SIGNATURE_HEADER] = sign(settings.secret.get_secret_value(), body)
        timeout = aiohttp.ClientTimeout(total=10)
        for attempt in range(1, settings.max_attempts + 1):
            try:
                async with self.session.post(
                    settings.webhook_url, data=body, headers=headers, timeout=timeout
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.sent = [*self.sent[-99:], doc]
                        log.info("alert sent", extra={"org": alert.org, "alert": ident})
                        return True
                    error = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                error = str(e) or type(e).__name__
            log.warning(
                "alert delivery failed", extra={"alert": ident, "attempt": attempt, "error": error}
            )
            if attempt < settings.max_attempts:
                await self.sleep(self.base_delay * 2 ** (attempt - 1))
        return False

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
