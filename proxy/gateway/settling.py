"""Settlement, the second half of the pipeline: what a relayed answer is charged, and
settling it exactly once (live, or replayed from the journal) with its metrics, its log
line and the `on_settled` callbacks. A settlement the store cannot take is journaled, so
no usage is lost.

`Settler` is composed into the handler (``handler.settler``), which calls `finish` once
per forwarded request; the journal's `Replayer` calls `apply` with the charges it kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tollway.config.reload import ConfigSource
from tollway.limits.clock import Clock
from tollway.limits.credits import Credits
from tollway.limits.errors import StoreUnavailable
from tollway.limits.journal import Journal
from tollway.limits.meter import Meter
from tollway.limits.outcomes import Charge, Settlement
from tollway.limits.plans import Principal
from tollway.limits.prices import cost_micro
from tollway.limits.usage import ZERO, Usage, within_ceiling
from tollway.proxy.gateway.call import Call
from tollway.proxy.gateway.forward import Relayed
from tollway.proxy.gateway.tokens import TokenCounter
from tollway.proxy.metrics import Metrics
from tollway.proxy.wire.taps import TapResult

log = logging.getLogger("tollway.request")

# A settled request (what it was charged, on which model, for whom) and its settlement.
OnSettled = Callable[[Charge, Settlement], None]


def with_output(result: TapResult, est: int, output: int) -> Usage:
    """The usage of an answer that ended early: its input as reported at its start (else
    the estimate `est`) and `output` tokens counted in the text it relayed."""
    partial = result.usage or Usage(input_tokens=est)
    return Usage(
        input_tokens=partial.input_tokens,
        output_tokens=max(output, partial.output_tokens),
        cache_write_tokens=partial.cache_write_tokens,
        cache_read_tokens=partial.cache_read_tokens,
    )


class Settler:
    """Settles forwarded requests. `pending` holds the settlements running now (shutdown
    waits for them); `journal` (None: none) takes those the store cannot; `on_settled`
    callbacks run after each settlement, a failing one logged and ignored."""

    def __init__(
        self,
        holder: ConfigSource,
        meter: Meter,
        counter: TokenCounter,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.holder = holder
        self.meter = meter
        self.counter = counter
        self.metrics = metrics
        self.clock = clock
        self.journal: Journal | None = None
        self.on_settled: list[OnSettled] = []
        self.pending: set[asyncio.Task[Any]] = set()

    # --- what an answer is charged -------------------------------------------------------
    def cut_usage(self, result: TapResult, est: int) -> Usage | None:
        """`charged_usage` of an answer cut by shutdown, computed without awaiting."""
        if result.failed:
            return None
        if result.complete and result.usage is not None:
            return result.usage
        text = result.generated_text()
        return with_output(result, est, self.counter.count(text)) if text else None

    async def charged_usage(self, info: Relayed, est: int) -> Usage | None:
        """What a relayed answer is charged for; None when the upstream failed it (free).

        A complete answer is charged its reported usage (a client that left was waited
        for, within the drain bounds, so that usage arrives). An answer that ended early
        is charged its input (as reported at its start, else the estimate) and the output
        tokens counted in the text it generated, text or none, when the client left or a
        drain bound stopped it; when the upstream cut it, only if it generated text. A
        JSON body without usage and an answer that ended in an error event are failures."""
        result = info.result
        if result is None or result.failed:
            return None
        if result.complete and result.usage is not None:
            return result.usage
        if not info.streaming:
            return None
        # Extracting the text walks every relayed event: off the loop (rare, can be long).
        text = await asyncio.get_running_loop().run_in_executor(None, result.generated_text)
        if not text and (info.upstream_cut or not info.client_gone):
            return None
        output = await self.counter.count_async(text) if text else 0
        return with_output(result, est, output)

    # --- settling ------------------------------------------------------------------------
    async def finish(self, call: Call, usage: Usage | None) -> Settlement | None:
        """Settle `call` charged `usage` (None: a failure, free). The settlement runs to
        its end even when the caller is cancelled (shutdown waits for `pending`)."""
        task = asyncio.ensure_future(self._settle(call, usage))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return await asyncio.shield(task)

    async def _settle(self, call: Call, usage: Usage | None) -> Settlement | None:
        assert call.principal is not None and call.price is not None  # a forwarded request
        ok = usage is not None
        used = usage if usage is not None else ZERO
        if ok:
            used = await self._within_ceiling(call, call.principal, used)
        charge = Charge(
            principal=call.principal,
            rid=call.rid,
            model=call.model,
            usage=used,
            cost=cost_micro(call.price, used) if ok else 0,
            ok=ok,
            session=call.session,
            upstream_ms=call.upstream_ms,
            now_ms=self.clock.now_ms(),
        )
        try:
            return await self.apply(charge, call.route)
        except StoreUnavailable as e:
            error = str(e)
        except Exception as e:
            # Not an outage (a store error, a bug): journaled too, so the usage is kept; a
            # replay that fails the same way sets the entry aside for the operator.
            log.exception("settlement failed", extra={"rid": call.rid, "org": call.org})
            error = repr(e)
        self.metrics.settle_failures.inc()
        journaled = self.journal is not None and await self.journal.append(charge)
        log.log(
            logging.WARNING if journaled else logging.ERROR,
            "settlement journaled" if journaled else "settlement lost",
            extra={"rid": call.rid, "org": call.org, "error": error},
        )
        return None

    async def _within_ceiling(self, call: Call, principal: Principal, usage: Usage) -> Usage:
        """`usage` lowered to the sanity ceiling; an answer above it is charged the ceiling
        (never 0) and flagged for an operator: a metric, a log line and an ``absurd_usage``
        ledger event with what the upstream reported."""
        m = self.holder.current.metering
        fixed, absurd = within_ceiling(usage, m.max_tokens_per_request, m.max_tool_requests)
        if not absurd:
            return usage
        reported = {name: getattr(usage, name) for name in absurd}
        self.metrics.absurd_usage.labels(principal.org).inc()
        log.warning(
            "absurd usage charged at the ceiling",
            extra={"rid": call.rid, "org": principal.org, "model": call.model, **reported},
        )
        fields = {"rid": call.rid, "model": call.model or "", **reported}
        try:
            await Credits(self.meter.store, self.clock).record_event(
                principal.org, "absurd_usage", fields
            )
        except StoreUnavailable:  # the settlement itself is journaled; the flag is logged
            log.error("absurd usage not flagged in the ledger", extra={"rid": call.rid})
        return fixed

    async def apply(self, charge: Charge, route: str = "-") -> Settlement:
        """Settle one charge (live, or replayed from the journal at its own time), then
        count it and run the `on_settled` callbacks. Raises `StoreUnavailable`."""
        settlement = await self.meter.settle(charge)
        used, org, model = charge.usage, charge.principal.org, charge.model or "-"
        if charge.ok and not settlement.duplicate:
            m = self.metrics
            m.tokens.labels("input", org, model).inc(used.input_tokens)
            m.tokens.labels("output", org, model).inc(used.output_tokens)
            m.tokens.labels("cache_write", org, model).inc(used.cache_write_tokens)
            m.tokens.labels("cache_read", org, model).inc(used.cache_read_tokens)
            m.spend.labels(org, model).inc(settlement.cost / 1_000_000)
            if settlement.overshoot:
                m.overshoot.labels(org).inc(settlement.overshoot / 1_000_000)
        org_cfg = self.holder.current.organizations.get(org)
        if org_cfg is not None and org_cfg.billing.mode == "prepaid":
            self.metrics.balance.labels(org).set(settlement.available / 1_000_000)
        log.info(
            "settled",
            extra={
                "rid": charge.rid,
                "org": org,
                "route": route,
                "model": model,
                "ok": charge.ok,
                "input_tokens": used.input_tokens,
                "output_tokens": used.output_tokens,
                "cost_micro": settlement.cost,
            },
        )
        for callback in self.on_settled:
            try:
                callback(charge, settlement)
            except Exception:  # the settlement stands; a callback's failure is its own
                log.exception("settlement callback failed", extra={"rid": charge.rid})
        return settlement
