"""Admission and settlement: one script call each.

`Meter.admit` answers a `Decision`; `Meter.settle` takes a `Charge` (what one finished
request is charged) and answers a `Settlement`. All three are plain data; `proxy/` turns
them into HTTP, and the journal stores a `Charge` as it is when the store cannot take it.
The config is read through a getter on every call, so a live reload applies to the very
next request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import orjson
from tollway.config.schema import Config
from tollway.limits import scriptplans
from tollway.limits.clock import Clock
from tollway.limits.outcomes import BucketState as BucketState
from tollway.limits.outcomes import Charge as Charge
from tollway.limits.outcomes import Decision as Decision
from tollway.limits.outcomes import Refusal as Refusal
from tollway.limits.outcomes import Settlement as Settlement
from tollway.limits.plans import Principal
from tollway.limits.rkeys import Fields
from tollway.limits.scriptplans import ExpectPlan, SettlePlan, StaticParts
from tollway.limits.store import Store
from tollway.limits.windows import Days
from tollway.limits.windows import periods as periods

STATIC_CACHE_SIZE = 10_000  # (principal, model) pairs whose plan parts are kept


def _session_budget(
    principal: Principal, session: str | None, asked: int | None
) -> scriptplans.SessionBudget | None:
    """The budget of the request's session: the lower of the key's and the one the
    client sent; None without a session or a budget."""
    own = principal.key_limits.session_budget if principal.key_limits else None
    found = [b for b in (own, asked) if b is not None]
    if session is None or not found:
        return None
    label = f"session '{session}' budget"
    return scriptplans.SessionBudget(min(found), label, Fields.session(session))


def _period_of(money: scriptplans.MoneyPlan | None, label: str) -> str:
    """The period (month | day | week) of the cap or budget a refusal named."""
    for c in (*money.caps, *money.budgets) if money is not None else ():
        if label == c.label or label in c.labels:
            return c.period
    return "month"


class Meter:
    def __init__(self, store: Store, clock: Clock, config: Callable[[], Config]) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock
        self.config = config
        self._days = Days()
        self._cfg: Config | None = None
        self._statics: dict[tuple[Principal, str | None], StaticParts] = {}

    def _plan_parts(self, cfg: Config, principal: Principal, model: str | None) -> StaticParts:
        """The cached `StaticParts` of (principal, model) under `cfg`; a new config (a reload)
        empties the cache, so it always matches the config in force."""
        if cfg is not self._cfg:
            self._statics.clear()
            self._cfg = cfg
        key = (principal, model)
        parts = self._statics.get(key)
        if parts is None:
            if len(self._statics) >= STATIC_CACHE_SIZE:
                self._statics.clear()
            parts = self._statics[key] = scriptplans.static_parts(cfg, self.keys, principal, model)
        return parts

    async def admit(
        self,
        principal: Principal,
        rid: str,
        model: str | None,
        est_tokens: int,
        est_cost: int | None,
        max_output: int | None = None,
        output_price: int | None = None,
        session: str | None = None,
        session_budget: int | None = None,
    ) -> Decision:
        """Check every limit and take the request's share, or refuse and take nothing.

        `est_cost` None means an unmetered request: no money checks. `est_cost` is the cost
        of the estimated input tokens. With `output_price` (micro-USD per million output
        tokens) the money limits hold the request's expected cost: the input cost
        corrected by what settlements learned, plus its expected output (`max_output`, the
        declared maximum, capped by the learned high percentile of the organization's
        outputs on `model`, or the configured default). Without it they hold `est_cost`.
        `session_budget` (micro-USD) caps what the `session` id spends; the key's own
        session budget applies too, whichever is lower."""
        cfg = self.config()
        cfg.organizations[principal.org]  # KeyError for an organization not in the config
        now = self.clock.now_ms()
        today = self._days.at(now, cfg.server.timezone)
        month, next_month, win = today.month, today.next_month_ms, today.windows
        parts = self._plan_parts(cfg, principal, model)
        specs = parts.specs
        org = principal.org
        money = parts.money if est_cost is not None else None
        expect = None
        if money is not None and output_price is not None and parts.learn is not None:
            declared = -1 if max_output is None else max_output
            expect = ExpectPlan(output_price, declared, parts.default_output, parts.learn)
        budget = _session_budget(principal, session, session_budget) if money else None
        plan = replace(
            parts.admit,
            est_tokens=est_tokens,
            cost=est_cost or 0,
            money=money,
            expect=expect,
            session_budget=budget,
        )
        keys = scriptplans.admit_keys(
            self.keys, org, rid, month, principal.key_id, win, session or "-"
        )
        keys += parts.bucket_keys
        raw = await self.store.run("admit", keys, [now, rid, scriptplans.encode(plan)])
        admitted, detail, retry = int(raw[0]), raw[2], int(raw[3])
        reason = Refusal(raw[1]) if raw[1] else None
        if reason is Refusal.KEY:
            return Decision(False, reason, "revoked key")
        if reason is Refusal.LATE:
            return Decision(False, reason, "released before it ran")
        states = tuple(
            BucketState(spec, int(raw[4 + 2 * i]), int(raw[5 + 2 * i]))
            for i, spec in enumerate(specs)
        )
        if admitted:
            return Decision(True, buckets=states)
        if reason is Refusal.IN_FLIGHT:
            _, scope = Fields.split(detail)
            return Decision(
                False, reason, f"max_in_flight of {scope}", retry_after_ms=retry, buckets=states
            )
        if reason is Refusal.RATE:
            spec = specs[int(detail) - 1]
            return Decision(
                False,
                reason,
                spec.describe(org),
                retry_after_ms=retry if retry >= 0 else None,
                buckets=states,
            )
        if reason is Refusal.CAP:
            label, _, cap = detail.rpartition("|")
            ends = {"day": win.next_day_ms, "week": win.next_week_ms, "month": next_month}
            resets = ends[_period_of(parts.money, label)]
            return Decision(
                False, reason, label, resets_at_ms=resets, amount=int(cap), buckets=states
            )
        if reason is Refusal.INCLUDED:
            return Decision(
                False, reason, "", resets_at_ms=next_month, amount=int(detail), buckets=states
            )
        return Decision(False, reason, detail, buckets=states)

    async def release(self, principal: Principal, rid: str, keep_ms: int | None = None) -> bool:
        """Give back the admission of `rid`, which nobody waits for any more (its admit
        timed out; or a count_tokens request, done), and make an admission of it that runs
        later take nothing (for `keep_ms`, default the hold TTL; 0: no such guard, for an
        admission known to have run). True when there was one to give back. Safe before or
        after the request's settlement."""
        cfg = self.config()
        k, org = self.keys, principal.org
        keys = [k.hold(org, rid), k.holds(org), k.account(org), k.held(org)]
        ttl = cfg.store.hold_ttl_seconds * 1000 if keep_ms is None else keep_ms
        return bool(await self.store.run("release", keys, [self.clock.now_ms(), rid, ttl]))

    async def settle(self, charge: Charge) -> Settlement:
        """Replace the reservation by actual usage; exactly once per request id.

        A failed request (`charge.ok` False) is charged nothing and gives its reservation
        back."""
        cfg = self.config()
        org, rid, usage = charge.principal.org, charge.rid, charge.usage
        now = self.clock.now_ms() if charge.now_ms is None else charge.now_ms
        today = self._days.at(now, cfg.server.timezone)
        month, day, win = today.month, today.day, today.windows
        parts = self._plan_parts(cfg, charge.principal, charge.model)
        plan = SettlePlan(
            static=parts.settle,
            ok=charge.ok,
            usage=usage,
            tpm_input=usage.tpm_input(cfg.metering.count_cache_reads_in_tpm),
            cost=charge.cost,
            session=charge.session is not None,
            session_id=charge.session or "",
            upstream_ms=charge.upstream_ms,
            day=day,
        )
        keys = scriptplans.settle_keys(
            self.keys, org, rid, month, win, charge.model, charge.session or "-"
        )
        keys += parts.bucket_keys
        raw = await self.store.run("settle", keys, [now, rid, scriptplans.encode(plan)])
        r = orjson.loads(raw)
        return Settlement(
            cost=int(r["cost"]),
            included=int(r["included"]),
            extra=int(r["extra"]),
            available=int(r["available"]),
            # "reload" in settle.lua's reply, kept in the settled marker of each request.
            auto_reload=int(r["reload"]),
            duplicate=bool(r["duplicate"]),
            overshoot=int(r.get("overshoot", 0)),
        )
