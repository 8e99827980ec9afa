"""Auto-reload: buy credit when a settlement leaves a prepaid balance below its threshold.

`AutoReloader.on_settled` is a `Settler.on_settled` callback. When a settlement
reports ``reload > 0`` (settle.lua compares the balance with the threshold in force), the
reloader starts one purchase for that organization in the background:

1. Payment method: ``billing.payment.provider`` ``none`` means no payment method is
   registered: nothing is bought, ever; counted as ``skipped``.
2. Never two in flight: an in-process guard per organization, then a Redis lock
   (``SET NX PX`` on ``Keys.reload_lock``) shared by every proxy replica. A reloader that
   finds either taken does nothing: the holder is buying already.
3. Under the lock the balance and the settings are read again: if another purchase has
   already lifted the balance to the threshold or above, nothing is bought. Otherwise the
   amount is ``target - available`` as of now (the settlement's figure, unless the balance
   moved since).
4. The payment is attempted up to `max_attempts` times with exponential back-off
   (`base_delay`, doubled each time), always with the same idempotency key. Each failure
   is a ``reload_failed`` ledger event and a ``failed`` count; a failure never creates
   credit. A success adds a purchased lot (source ``reload``, reference = payment id),
   counted as ``paid``.

Metrics: ``tollway_auto_reloads_total{org, result}`` with result ``paid``, ``failed``
(one per failed attempt) and ``skipped`` (no payment method).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from tollway.limits.clock import Clock
from tollway.limits.credits import Credits, new_lot_id
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Settlement
from tollway.limits.payments import NoPaymentProvider, PaymentProvider, PaymentResult
from tollway.limits.plans import Principal
from tollway.limits.store import Store
from tollway.proxy.metrics import Metrics
from tollway.proxy.runtime.payment_webhook import WebhookPaymentProvider

log = logging.getLogger("tollway.autoreload")


class AutoReloader:
    def __init__(
        self,
        holder: Any,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        *,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        payment_timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.holder = holder
        self.store = store
        self.credits = Credits(store, clock)
        self.clock = clock
        self.metrics = metrics
        self.session = session
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.payment_timeout = payment_timeout
        self.sleep = sleep
        self._busy: set[str] = set()
        self._stopped = False
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- the callback ---------------------------------------------------------------------
    def on_settled(self, principal: Principal, settlement: Settlement) -> None:
        """Start a reload when the settlement asks for one (never blocks the request)."""
        if settlement.reload <= 0 or settlement.duplicate:
            return
        org_cfg = self.holder.current.organizations.get(principal.org)
        if org_cfg is not None and isinstance(self.provider(org_cfg), NoPaymentProvider):
            # Counted here, once per settlement that asked, whatever is in flight.
            self.metrics.auto_reloads.labels(principal.org, "skipped").inc()
            return
        self.start(principal.org)

    def start(self, org: str) -> asyncio.Task[Any] | None:
        """Start a reload of `org` unless one is running in this process already."""
        if org in self._busy or self._stopped:
            return None
        self._busy.add(org)
        task = asyncio.ensure_future(self._run(org))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(self, org: str) -> str:
        try:
            return await self.reload(org)
        except StoreUnavailable as e:
            log.error("auto-reload: store unavailable", extra={"org": org, "error": str(e)})
            return "error"
        except Exception:
            log.exception("auto-reload failed", extra={"org": org})
            return "error"
        finally:
            self._busy.discard(org)

    # --- one reload -------------------------------------------------------------------------
    def provider(self, org_cfg: Any) -> PaymentProvider:
        """The organization's payment provider (`NoPaymentProvider`: none registered)."""
        payment = org_cfg.billing.payment
        if payment.provider != "webhook" or payment.webhook_url is None:
            return NoPaymentProvider()
        secret = payment.secret.get_secret_value() if payment.secret is not None else None
        return WebhookPaymentProvider(
            payment.webhook_url, secret, self.session, self.payment_timeout
        )

    def lock_ttl_ms(self) -> int:
        """How long one attempt (payment, back-off before it, crediting) may hold the lock;
        extended before every attempt."""
        longest_delay = self.base_delay * 2 ** max(self.max_attempts - 2, 0)
        return int((self.payment_timeout + longest_delay + 30) * 1000)

    async def reload(self, org: str) -> str:
        """Run one reload of `org` to its end; returns what happened: paid, failed,
        skipped (no payment method), busy (another one holds the lock), not_needed."""
        org_cfg = self.holder.current.organizations.get(org)
        if org_cfg is None or org_cfg.billing.mode != "prepaid":
            return "not_needed"
        provider = self.provider(org_cfg)
        if isinstance(provider, NoPaymentProvider):
            self.metrics.auto_reloads.labels(org, "skipped").inc()
            return "skipped"
        lock = self.store.keys.reload_lock(org)
        token = f"rl_{org}_{self.clock.now_ms()}_{secrets.token_hex(6)}"
        client = self.store.client
        taken = await self.store.call(
            "reload_lock", client.set, lock, token, nx=True, px=self.lock_ttl_ms()
        )
        if not taken:
            return "busy"
        try:
            return await self._locked(org, org_cfg, provider, lock, token)
        finally:
            with contextlib.suppress(Exception):
                await self.store.run("reload_lock", [lock], [token, "release", 0])

    async def _locked(
        self, org: str, org_cfg: Any, provider: PaymentProvider, lock: str, token: str
    ) -> str:
        settings = await self.credits.reload_settings(org, org_cfg.billing.auto_reload)
        balance = await self.credits.balance(org)
        if settings is None or balance.available >= settings.threshold:
            return "not_needed"
        amount = settings.target - balance.available
        key = token  # the idempotency key: one per purchase, the same for its retries
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                await self.sleep(self.base_delay * 2 ** (attempt - 2))
            owned = await self.store.run(
                "reload_lock", [lock], [token, "extend", self.lock_ttl_ms()]
            )
            if not owned:
                log.error("auto-reload: lost the lock", extra={"org": org})
                return "busy"
            result = await self._charge(provider, org, amount, key)
            if result.ok and result.payment_id:
                await self._credit(org, amount, result.payment_id)
                self.metrics.auto_reloads.labels(org, "paid").inc()
                return "paid"
            await self.credits.record_event(
                org,
                "reload_failed",
                {
                    "amount": amount,
                    "attempt": attempt,
                    "of": self.max_attempts,
                    "key": key,
                    "error": result.error or "payment failed",
                },
            )
            self.metrics.auto_reloads.labels(org, "failed").inc()
            log.warning(
                "auto-reload payment failed",
                extra={"org": org, "attempt": attempt, "error": result.error},
            )
        return "failed"

    async def _credit(self, org: str, amount: int, payment_id: str) -> None:
        """Add the paid lot. The payment is made: a store that fails here is retried (the
        lot id is fixed, so a lot that was added despite an error is not added twice)."""
        lot_id = new_lot_id(self.clock.now_ms())
        for attempt in range(1, 4):
            try:
                await self.credits.buy(org, amount, source="reload", ref=payment_id, lot_id=lot_id)
                break
            except StoreUnavailable:
                if attempt == 3 or await self.credits.has_lot(org, lot_id):
                    raise
                await self.sleep(self.base_delay * attempt)
        log.info(
            "auto-reload paid",
            extra={"org": org, "amount_micro": amount, "lot": lot_id, "payment_id": payment_id},
        )

    async def _charge(
        self, provider: PaymentProvider, org: str, amount: int, key: str
    ) -> PaymentResult:
        try:
            return await provider.charge(org, amount, key)
        except Exception as e:  # a provider that breaks its contract is a failed payment
            return PaymentResult(False, None, f"payment provider error: {e}")

    # --- lifecycle --------------------------------------------------------------------------
    async def stop(self, timeout: float = 5.0) -> None:
        """Start no more reloads; let running ones finish (up to `timeout` seconds), then
        cancel the rest (their lock expires on its own)."""
        self._stopped = True
        pending = list(self.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)
