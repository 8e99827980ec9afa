"""Threshold alerts: which of a request's caps and budgets crossed 50 / 80 / 100 % (any
configured thresholds) of their limit this period, and a credit balance below a
threshold; each announced once per threshold and period, by one replica.

`Alerts.check` runs after a settlement (outside the request's answer): one pipelined read
of the month's spend and the run-time overrides, then the caps that apply to the request
exactly as admission sees them (`capplans.cap_plans` and `model_cap_plans`: daily, weekly
and monthly caps at every scope and the caps of the model's patterns; `plans.seat_plan`;
the first override present wins). For each threshold crossed it claims
``tw:{org}:alert:<period>:<what>:<t>`` with SET NX (kept ~40 days): only the process that
wins the claim reports it, so every threshold is announced once per period whatever the
number of replicas. A process remembers the claims it saw taken and does not ask again.

What is returned is plain data (`Alert`); `tollway.proxy.runtime.alerts` delivers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tollway.config.schema import Organization
from tollway.limits import capplans, plans
from tollway.limits.plans import Principal
from tollway.limits.seats import UNLIMITED
from tollway.limits.store import Store
from tollway.limits.windows import Windows

CLAIM_TTL_MS = 40 * 86_400_000  # longer than any period a claim is for
KNOWN_CLAIMS = 100_000  # claims a process remembers as taken


@dataclass(frozen=True, slots=True)
class Alert:
    org: str
    kind: str  # cap | budget | included | balance
    subject: str  # what the limit is on, in words: "organization monthly", "user 'alice'"
    threshold: int  # percent of the limit; for balance, the threshold in micro-USD
    used: int  # micro-USD this period (balance: the balance now)
    limit: int  # micro-USD
    period: str  # "2026-01" (month), "d2026-01-31" (day), "w2026-W05" (week)
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crossed(used: int, limit: int, thresholds: Sequence[int]) -> list[int]:
    """The thresholds (percent) that `used` has reached of `limit` (integer arithmetic)."""
    if limit <= 0:
        return []
    return [t for t in thresholds if used * 100 >= t * limit]


class Alerts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._taken: set[str] = set()

    async def check(
        self,
        org_cfg: Organization,
        principal: Principal,
        month: str,
        win: Windows,
        now_ms: int,
        thresholds: Sequence[int],
        low_balance: int | None = None,
        available: int | None = None,
        model: str | None = None,
    ) -> list[Alert]:
        """The alerts this settlement of `principal` on `model` triggers (claimed: each is
        returned by one call, on one replica, once per period)."""
        org = principal.org
        k, client = self.store.keys, self.store.client
        caps = [("cap", c) for c in capplans.cap_plans(org_cfg, principal)]
        caps += [("cap", c) for c in capplans.model_cap_plans(org_cfg, model)]
        caps += [("budget", c) for c in capplans.budget_plans(principal)]
        seat = plans.seat_plan(org_cfg, principal)
        labels = {"month": month, "day": win.day, "week": win.week}
        hashes = {
            p: k.month(org, month) if p == "month" else k.period(org, label)
            for p, label in labels.items()
        }
        wanted = [(c.period, c.spent) for _, c in caps] + ([("month", seat.spent)] if seat else [])
        pipe = client.pipeline(transaction=False)
        for period, field in wanted:
            pipe.hget(hashes[period], field)
        pipe.hgetall(k.overrides(org))
        *spent_raw, ov = await self.store.call("alerts", pipe.execute)
        spent = {w: int(v or 0) for w, v in zip(wanted, spent_raw, strict=True)}
        # (kind, subject, used, limit, period label)
        candidates: list[tuple[str, str, int, int, str]] = []
        for kind, c in caps:
            value, label = c.source(ov)
            cap = c.cap if value is None else (-1 if value == UNLIMITED else int(value))
            if cap >= 0:
                subject = f"{label} spend cap" if kind == "cap" else label
                used = spent[(c.period, c.spent)]
                candidates.append((kind, subject, used, cap, labels[c.period]))
        if seat:
            included = int(ov.get(seat.override, seat.included))
            who = f"included usage of user '{principal.user}'"
            candidates.append(("included", who, spent[("month", seat.spent)], included, month))
        found: list[Alert] = []
        for kind, subject, used, limit, period in candidates:
            for t in crossed(used, limit, thresholds):
                alert = Alert(org, kind, subject, t, used, limit, period, now_ms)
                if await self._claim(org, f"{period}:{kind}:{subject}:{t}"):
                    found.append(alert)
        if low_balance is not None and available is not None and available < low_balance:
            alert = Alert(
                org, "balance", "credit balance", low_balance, available, low_balance, month, now_ms
            )
            if await self._claim(org, f"{month}:balance:{low_balance}"):
                found.append(alert)
        return found

    async def _claim(self, org: str, what: str) -> bool:
        key = self.store.keys.alert(org, what)
        if key in self._taken:
            return False
        won = await self.store.call(
            "alerts", self.store.client.set, key, "1", nx=True, px=CLAIM_TTL_MS
        )
        if len(self._taken) >= KNOWN_CLAIMS:
            self._taken.clear()
        self._taken.add(key)
        return bool(won)
