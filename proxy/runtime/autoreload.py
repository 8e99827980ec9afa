"""Auto-reload wiring: buy credit when a settlement leaves a prepaid balance below its
threshold, in the background, through the organization's payment provider.

The workflow itself (the lock, the amount, the ``reload_started`` record written before
the payment, retries, the lot, reconciliation after a crash) is
`tollway.limits.autoreload.AutoReloadWorkflow`. This module keeps what is HTTP and process:

- `AutoReloader.on_settled`, a `Settler.on_settled` callback: when a settlement
  reports ``auto_reload > 0`` (settle.lua compares the balance with the threshold in force), one
  purchase for that organization starts in the background, never two in one process;
- the payment provider: ``billing.payment.provider`` ``none`` means no payment method is
  registered: nothing is bought, ever (counted as ``skipped``); ``webhook`` is
  `WebhookPaymentProvider`;
- reconciliation of unfinished purchases on start and every `reconcile_every` seconds.

Metrics: ``tollway_auto_reloads_total{org, result}`` with result ``paid``, ``failed``
(one per failed attempt), ``skipped`` (no payment method) and ``reconciled`` (a purchase a
dead process left unfinished, credited later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from tollway.config.reload import ConfigSource
from tollway.config.schema import Organization
from tollway.limits.autoreload import AutoReloadWorkflow
from tollway.limits.clock import Clock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Charge, Settlement
from tollway.limits.payments import NoPaymentProvider, PaymentProvider
from tollway.limits.store import Store
from tollway.proxy.metrics import Metrics
from tollway.proxy.runtime.payment_webhook import WebhookPaymentProvider

log = logging.getLogger("tollway.autoreload")


class AutoReloader:
    def __init__(
        self,
        holder: ConfigSource,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        *,
        max_attempts: int = 5,
        base_delay: float = 1.0,
        payment_timeout: float = 10.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        reconcile_every: float = 60.0,
    ) -> None:
        self.holder = holder
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.session = session
        self.workflow = AutoReloadWorkflow(
            store,
            clock,
            max_attempts=max_attempts,
            base_delay=base_delay,
            payment_timeout=payment_timeout,
            sleep=sleep,
            observe=lambda org, result: metrics.auto_reloads.labels(org, result).inc(),
        )
        self.reconcile_every = reconcile_every
        self._busy: set[str] = set()
        self._stopped = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._reconciler: asyncio.Task[Any] | None = None

    # The workflow's knobs, settable on the auto-reloader (tests shorten the back-off).
    @property
    def max_attempts(self) -> int:
        return self.workflow.max_attempts

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self.workflow.max_attempts = value

    @property
    def base_delay(self) -> float:
        return self.workflow.base_delay

    @base_delay.setter
    def base_delay(self, value: float) -> None:
        self.workflow.base_delay = value

    def lock_ttl_ms(self) -> int:
        return self.workflow.lock_ttl_ms()

    # --- the callback ---------------------------------------------------------------------
    def on_settled(self, charge: Charge, settlement: Settlement) -> None:
        """Start an auto-reload when the settlement asks for one (never blocks the request)."""
        if settlement.auto_reload <= 0 or settlement.duplicate:
            return
        principal = charge.principal
        org_cfg = self.holder.current.organizations.get(principal.org)
        if org_cfg is not None and isinstance(self.provider(org_cfg), NoPaymentProvider):
            # Counted here, once per settlement that asked, whatever is in flight.
            self.metrics.auto_reloads.labels(principal.org, "skipped").inc()
            return
        self.start(principal.org)

    def start(self, org: str) -> asyncio.Task[Any] | None:
        """Start an auto-reload of `org` unless one is running in this process already."""
        if org in self._busy or self._stopped:
            return None
        self._busy.add(org)
        task = asyncio.ensure_future(self._run(org))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(self, org: str) -> str:
        try:
            return await self.purchase(org)
        except StoreUnavailable as e:
            log.error("auto-reload: store unavailable", extra={"org": org, "error": str(e)})
            return "error"
        except Exception:
            log.exception("auto-reload failed", extra={"org": org})
            return "error"
        finally:
            self._busy.discard(org)

    # --- one purchase -----------------------------------------------------------------------
    def provider(self, org_cfg: Organization) -> PaymentProvider:
        """The organization's payment provider (`NoPaymentProvider`: none registered)."""
        payment = org_cfg.billing.payment
        if payment.provider != "webhook" or payment.webhook_url is None:
            return NoPaymentProvider()
        secret = payment.secret.get_secret_value() if payment.secret is not None else None
        return WebhookPaymentProvider(
            payment.webhook_url, secret, self.session, self.workflow.payment_timeout
        )

    async def purchase(self, org: str) -> str:
        """Run one auto-reload purchase of `org` to its end; returns what happened: paid, failed,
        skipped (no payment method), busy (another one holds the lock), not_needed."""
        org_cfg = self.holder.current.organizations.get(org)
        if org_cfg is None or org_cfg.billing.mode != "prepaid":
            return "not_needed"
        provider = self.provider(org_cfg)
        if isinstance(provider, NoPaymentProvider):
            self.metrics.auto_reloads.labels(org, "skipped").inc()
            return "skipped"
        return await self.workflow.purchase(org, org_cfg.billing.auto_reload, provider)

    # --- reconciliation ---------------------------------------------------------------------
    async def reconcile(self) -> int:
        """Finish every prepaid organization's unfinished purchases; the number credited."""
        credited = 0
        for org, org_cfg in self.holder.current.organizations.items():
            if org_cfg.billing.mode != "prepaid":
                continue
            try:
                credited += await self.workflow.reconcile(org, self.provider(org_cfg))
            except StoreUnavailable as e:
                log.warning("auto-reload reconcile: store unavailable", extra={"error": str(e)})
                return credited
            except Exception:
                log.exception("auto-reload reconcile failed", extra={"org": org})
        return credited

    def start_reconciling(self) -> None:
        """Reconcile now (start-up) and then every `reconcile_every` seconds."""

        async def loop() -> None:
            while not self._stopped:
                await self.reconcile()
                await asyncio.sleep(self.reconcile_every)

        self._reconciler = asyncio.ensure_future(loop())

    # --- lifecycle --------------------------------------------------------------------------
    async def stop(self, timeout: float = 5.0) -> None:
        """Start no more auto-reloads; let running ones finish (up to `timeout` seconds), then
        cancel the rest (their lock expires on its own; reconciliation finishes them)."""
        self._stopped = True
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        pending = list(self.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)
