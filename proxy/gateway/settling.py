"""Settlement, the second half of the pipeline: what a relayed answer is charged, and
settling it exactly once (live, or replayed from the journal) with its metrics, its log
line and the `on_settled` callbacks. A settlement the store cannot take is journaled, so
no usage is lost. `ProxyHandler` inherits this; its attributes are documented there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from tollway.limits.credits import Credits
from tollway.limits.errors import StoreUnavailable
from tollway.limits.journal import Entry, Journal
from tollway.limits.meter import Meter, Settlement
from tollway.limits.plans import Principal
from tollway.limits.prices import cost_micro
from tollway.limits.usage import ZERO, Usage, within_ceiling
from tollway.proxy.gateway.tokens import TokenCounter
from tollway.proxy.metrics import Metrics
from tollway.proxy.wire.taps import TapResult

if TYPE_CHECKING:
    from tollway.proxy.gateway.handler import Call

log = logging.getLogger("tollway.request")


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


class Settling:
    holder: Any
    meter: Meter
    metrics: Metrics
    counter: TokenCounter
    clock: Any
    journal: Journal | None
    on_settled: list[Any]

    def _cut_usage(self, result: TapResult, est: int) -> Usage | None:
        """`_charged_usage` of an answer cut by shutdown, computed without awaiting."""
        if result.failed:
            return None
        if result.complete and result.usage is not None:
            return result.usage
        text = result.generated_text()
        return with_output(result, est, self.counter.count(text)) if text else None

    async def _charged_usage(
        self, result: TapResult | None, streaming: bool, est: int
    ) -> Usage | None:
        """What a relayed answer is charged for; None when it is a failure (free).

        A complete answer is charged its reported usage. A stream that ended early (cut
        off, client gone) is charged its input (as reported at its start, else the
        estimate) and the output tokens counted in the text relayed, provided it relayed
        some; a stream that relayed nothing, a body with no usage and an answer that
        ended in an error event are failures."""
        if result is None or result.failed:
            return None
        if result.complete and result.usage is not None:
            return result.usage
        if not streaming:
            return None
        # Extracting the text walks every relayed event: off the loop (rare, can be long).
        text = await asyncio.get_running_loop().run_in_executor(None, result.generated_text)
        if not text:
            return None
        return with_output(result, est, await self.counter.count_async(text))

    async def _settle(
        self,
        call: Call,
        principal: Principal,
        price: Any,
        usage: Usage | None,
        session: str | None,
        upstream_ms: int,
    ) -> Settlement | None:
        ok = usage is not None
        used = usage if usage is not None else ZERO
        if ok:
            used = await self._within_ceiling(call, principal, used)
        cost = cost_micro(price, used) if ok else 0
        entry = Entry(
            call.rid,
            principal,
            call.model,
            used,
            cost,
            ok,
            session,
            upstream_ms,
            self.clock.now_ms(),
        )
        try:
            return await self.settle_entry(entry, call.route)
        except StoreUnavailable as e:
            error = str(e)
        except Exception as e:
            # Not an outage (a store error, a bug): journaled too, so the usage is kept; a
            # replay that fails the same way sets the entry aside for the operator.
            log.exception("settlement failed", extra={"rid": call.rid, "org": call.org})
            error = repr(e)
        self.metrics.settle_failures.inc()
        journaled = self.journal is not None and await self.journal.append(entry)
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

    async def settle_entry(self, entry: Entry, route: str = "-") -> Settlement:
        """Settle one request (live, or replayed from the journal at its own time), then
        count it and run the `on_settled` callbacks. Raises `StoreUnavailable`."""
        principal, used, ok = entry.principal, entry.usage, entry.ok
        settlement = await self.meter.settle(
            principal,
            entry.rid,
            entry.model,
            used,
            entry.cost,
            ok,
            entry.session,
            entry.upstream_ms,
            now_ms=entry.now_ms,
        )
        org, model = principal.org, entry.model or "-"
        if ok and not settlement.duplicate:
            m = self.metrics
            m.tokens.labels("input", org, model).inc(used.input_tokens)
            m.tokens.labels("output", org, model).inc(used.output_tokens)
            m.tokens.labels("cache_write", org, model).inc(used.cache_write_tokens)
            m.tokens.labels("cache_read", org, model).inc(used.cache_read_tokens)
            m.spend.labels(org, model).inc(settlement.cost / 1_000_000)
        if self.holder.current.organizations.get(org) is not None:
            billing = self.holder.current.organizations[org].billing
            if billing.mode == "prepaid":
                self.metrics.balance.labels(org).set(settlement.available / 1_000_000)
        log.info(
            "settled",
            extra={
                "rid": entry.rid,
                "org": org,
                "route": route,
                "model": model,
                "ok": ok,
                "input_tokens": used.input_tokens,
                "output_tokens": used.output_tokens,
                "cost_micro": settlement.cost,
            },
        )
        for callback in self.on_settled:
            try:
                callback(principal, settlement)
            except Exception:  # the settlement stands; a callback's failure is its own
                log.exception("settlement callback failed", extra={"rid": entry.rid})
        return settlement
