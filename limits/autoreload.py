"""The credit auto-reload workflow: one purchase at a time per organization, written down
before the payment is attempted, and finished after a crash.

`AutoReloadWorkflow.purchase(org, ...)` runs one purchase to its end:

1. Never two in flight: a Redis lock (``SET NX PX`` on ``Keys.reload_lock``) shared by
   every proxy replica. A caller that finds it taken does nothing: the holder is buying.
2. Under the lock the balance and the settings are read again: if another purchase has
   already lifted the balance to the threshold or above, nothing is bought. Otherwise the
   amount is ``target - available`` as of now.
3. Before the payment provider is called, the purchase is recorded: a ``reload_started``
   ledger event and a pending entry (``Keys.reload_pending``: idempotency key → amount,
   lot id, start time). The idempotency key and the lot id are fixed here, once.
4. The payment is attempted up to `max_attempts` times with exponential back-off
   (`base_delay`, doubled each time), always with the same idempotency key. Each failure
   is a ``reload_failed`` ledger event; a failure never creates credit. A success adds
   the purchased lot under the fixed lot id (source ``reload``, the stored name of an
   auto-reload; reference = payment id).
   Either way the pending entry is then removed.

`AutoReloadWorkflow.reconcile(org, provider)` finishes the purchases a process left pending
(it died between steps 3 and 4's end), each under the lock, once the lock it ran under
has expired: a lot already added → only the entry is removed; otherwise the provider is
asked again with the same idempotency key (a provider that honours it returns the
payment made earlier instead of charging twice, or makes the one that was decided) and
a success is credited. Run it on start and periodically.

Outcomes (`observe(org, outcome)`): ``paid``, ``failed`` (one per failed attempt),
``reconciled`` (a pending purchase credited after the fact). Return values of `purchase`:
paid, failed, busy (another one holds the lock), not_needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from tollway.config.schema import AutoReload
from tollway.limits.clock import Clock
from tollway.limits.credits import CreditError, Credits, new_lot_id
from tollway.limits.errors import StoreUnavailable
from tollway.limits.payments import PaymentProvider, PaymentResult
from tollway.limits.store import Store

log = logging.getLogger("tollway.autoreload")

Observer = Callable[[str, str], None]


class AutoReloadWorkflow:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        payment_timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        observe: Observer = lambda org, outcome: None,
    ) -> None:
        self.store = store
        self.credits = Credits(store, clock)
        self.clock = clock
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.payment_timeout = payment_timeout
        self.sleep = sleep
        self.observe = observe

    def lock_ttl_ms(self) -> int:
        """How long one attempt (payment, back-off before it, crediting) may hold the lock;
        extended before every attempt."""
        longest_delay = self.base_delay * 2 ** max(self.max_attempts - 2, 0)
        return int((self.payment_timeout + longest_delay + 30) * 1000)

    async def _lock(self, org: str) -> str | None:
        """Take the organization's auto-reload lock: its token, or None when it is held."""
        lock = self.store.keys.auto_reload_lock(org)
        token = f"rl_{org}_{self.clock.now_ms()}_{secrets.token_hex(6)}"
        client = self.store.client
        taken = await self.store.call(
            "reload_lock", client.set, lock, token, nx=True, px=self.lock_ttl_ms()
        )
        return token if taken else None

    async def _unlock(self, org: str, token: str) -> None:
        with contextlib.suppress(Exception):  # it expires on its own
            await self.store.run(
                "reload_lock", [self.store.keys.auto_reload_lock(org)], [token, "release", 0]
            )

    # --- one purchase -------------------------------------------------------------------
    async def purchase(
        self, org: str, configured: AutoReload | None, provider: PaymentProvider
    ) -> str:
        """Run one reload of `org` to its end (`configured`: the config's
        ``billing.auto_reload`` or None); see the module docstring."""
        token = await self._lock(org)
        if token is None:
            return "busy"
        try:
            settings = await self.credits.auto_reload_settings(org, configured)
            balance = await self.credits.balance(org)
            if settings is None or balance.available >= settings.threshold:
                return "not_needed"
            amount = settings.target - balance.available
            pending = {
                "key": token,  # the idempotency key: one per purchase, kept for its retries
                "amount": amount,
                "lot": new_lot_id(self.clock.now_ms()),
                "started": self.clock.now_ms(),
            }
            await self._start(org, pending)
            return await self._attempts(org, provider, pending, token)
        finally:
            await self._unlock(org, token)

    async def _start(self, org: str, pending: dict[str, Any]) -> None:
        """Write the purchase down before anything is paid (step 3)."""
        client = self.store.client
        await self.store.call(
            "reload_pending",
            client.hset,
            self.store.keys.auto_reload_pending(org),
            pending["key"],
            orjson.dumps(pending),
        )
        fields = {"amount": pending["amount"], "key": pending["key"], "lot": pending["lot"]}
        await self.credits.record_event(org, "reload_started", fields)

    async def _attempts(
        self, org: str, provider: PaymentProvider, pending: dict[str, Any], token: str
    ) -> str:
        lock, key, amount = self.store.keys.auto_reload_lock(org), pending["key"], pending["amount"]
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                await self.sleep(self.base_delay * 2 ** (attempt - 2))
            owned = await self.store.run(
                "reload_lock", [lock], [token, "extend", self.lock_ttl_ms()]
            )
            if not owned:  # the pending entry stays: reconcile finishes it
                log.error("auto-reload: lost the lock", extra={"org": org})
                return "busy"
            result = await self._charge(provider, org, amount, key)
            if result.ok and result.payment_id:
                await self._credit(org, pending, result.payment_id)
                self.observe(org, "paid")
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
            self.observe(org, "failed")
            log.warning(
                "auto-reload payment failed",
                extra={"org": org, "attempt": attempt, "error": result.error},
            )
        await self._done(org, key)  # refused every time: nothing was paid
        return "failed"

    async def _credit(self, org: str, pending: dict[str, Any], payment_id: str) -> None:
        """Add the paid lot under its fixed id, then drop the pending entry. The payment
        is made: a store that fails here is retried (a lot that was added despite an error
        is found by its id and not added twice)."""
        lot_id, amount = pending["lot"], pending["amount"]
        for attempt in range(1, 4):
            if await self.credits.has_lot(org, lot_id):
                break
            try:
                await self.credits.buy(org, amount, source="reload", ref=payment_id, lot_id=lot_id)
                break
            except (StoreUnavailable, CreditError):
                if attempt == 3:
                    raise
                await self.sleep(self.base_delay * attempt)
        await self._done(org, pending["key"])
        log.info(
            "auto-reload paid",
            extra={"org": org, "amount_micro": amount, "lot": lot_id, "payment_id": payment_id},
        )

    async def _done(self, org: str, key: str) -> None:
        client = self.store.client
        await self.store.call(
            "reload_pending", client.hdel, self.store.keys.auto_reload_pending(org), key
        )

    async def _charge(
        self, provider: PaymentProvider, org: str, amount: int, key: str
    ) -> PaymentResult:
        try:
            return await provider.charge(org, amount, key)
        except Exception as e:  # a provider that breaks its contract is a failed payment
            return PaymentResult(False, None, f"payment provider error: {e}")

    # --- after a crash ------------------------------------------------------------------
    async def pending(self, org: str) -> list[dict[str, Any]]:
        """The organization's unfinished purchases, oldest first."""
        client = self.store.client
        raw = await self.store.call(
            "reload_pending", client.hvals, self.store.keys.auto_reload_pending(org)
        )
        return sorted((orjson.loads(v) for v in raw), key=lambda p: p["started"])

    async def reconcile(self, org: str, provider: PaymentProvider) -> int:
        """Finish the purchases of `org` a process left pending (module docstring); the
        number credited now. An entry younger than the lock's lifetime may belong to a
        auto-reload still running elsewhere: it is left for a later pass."""
        entries = await self.pending(org)
        stale = [p for p in entries if self.clock.now_ms() - p["started"] >= self.lock_ttl_ms()]
        if not stale:
            return 0
        token = await self._lock(org)
        if token is None:
            return 0
        credited = 0
        try:
            for entry in stale:
                if await self.credits.has_lot(org, entry["lot"]):
                    await self._done(org, entry["key"])
                    continue
                result = await self._charge(provider, org, entry["amount"], entry["key"])
                if result.ok and result.payment_id:
                    await self._credit(org, entry, result.payment_id)
                    self.observe(org, "reconciled")
                    credited += 1
                    continue
                fields = {
                    "amount": entry["amount"],
                    "key": entry["key"],
                    "error": result.error or "payment failed",
                    "reconcile": 1,
                }
                await self.credits.record_event(org, "reload_failed", fields)
                await self._done(org, entry["key"])
                self.observe(org, "failed")
        finally:
            await self._unlock(org, token)
        return credited
