"""Seats, extra usage and spend caps, seen and steered by admins: month-to-date
spend, run-time cap and extra-usage overrides and month-end statements (limit-increase
requests: `tollway.limits.increases`, on top of this module). The rules themselves run in
admit.lua and settle.lua; this module reads their counters and writes the run-time
overrides they obey. No aiohttp: everything returned is plain data (dicts of ints and
strings, dataclasses with ``to_dict``).

Money is integer micro-USD. A cap is an amount or ``"unlimited"`` (``UNLIMITED``); in
returned data an unlimited cap is ``None``. Months are ``"YYYY-MM"`` in the configured
``server.timezone`` and default to the current one (injected clock).

Run-time overrides live in the organization's ``cfg`` hash and apply to the very next
request; they win over the YAML until cleared (``clear_cap``, ``clear_extra_usage``):

    cap:<scope>  cap.day:<scope>  cap.week:<scope>   amount (micro-USD) or "unlimited";
                 scope org, ws=W, tier=T, user=U, model=PATTERN (`tollway.limits.caps`)
    extra:org  extra:user=U                          "1" | "0"
    included:user=U  seat:user=U                     written by approving a tier move

Effective user cap of a period, first present wins: the user's override; the user's cap
in the YAML; the tier's override; the tier's cap in the YAML (`tollway.limits.capplans`).
Organization, workspace and model caps apply on top of it. Extra usage: ``extra:org =
"0"`` turns it off for everyone; otherwise ``extra:user=U``, then ``extra:org``, then the
YAML decide.

Errors (all `tollway.limits.errors.LimitsError`; nothing is changed when one is raised)::

    SpendError               a bad amount or month; an override the rules refuse
     └── UnknownName         an organization, user, tier, workspace or scope not configured
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from tollway.config.schema import Config, Organization
from tollway.limits import seats, windows
from tollway.limits.caps import Caps
from tollway.limits.clock import Clock
from tollway.limits.errors import SpendError, UnknownName
from tollway.limits.history import history_of
from tollway.limits.meter import periods
from tollway.limits.rkeys import Fields, Scope
from tollway.limits.seats import UNLIMITED, UserStatus
from tollway.limits.statement import Statement, build_statement
from tollway.limits.store import Store

__all__ = [
    "UNLIMITED",
    "Spend",
    "SpendError",
    "UnknownName",
    "UserStatus",
]

_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


class Spend:
    """Month-to-date spend, caps, extra usage and statements.

    `config` returns the live `Config` (read on every call, like `Meter`)."""

    def __init__(self, store: Store, clock: Clock, config: Callable[[], Config]) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock
        self.config = config
        self.cap_overrides = Caps(store, config)

    # --- helpers -------------------------------------------------------------------------
    def organization(self, org: str) -> Organization:
        """The organization's live config (`UnknownName` if it has none)."""
        org_cfg = self.config().organizations.get(org)
        if org_cfg is None:
            raise UnknownName(f"unknown organization {org!r}")
        return org_cfg

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.config().server.timezone)

    def month_bounds(self, month: str | None = None) -> tuple[str, int, int]:
        """(month, start ms, end ms) of `month` (default: the current one) in the zone."""
        tz = self._zone()
        if month is None:
            month = periods(self.clock.now_ms(), tz)[0]
        if not _MONTH.fullmatch(month):
            raise SpendError(f"a month is written YYYY-MM, not {month!r}")
        start, end = windows.month_bounds(int(month[:4]), int(month[5:]), tz)
        return month, start, end

    async def overrides(self, org: str) -> dict[str, str]:
        """The raw run-time overrides of an organization (the cfg hash)."""
        client = self.store.client
        return dict(await self.store.call("spend_cfg", client.hgetall, self.keys.overrides(org)))

    async def month_hash(self, org: str, month: str) -> dict[str, int]:
        """The raw month-to-date counters of `month` (``"YYYY-MM"``), as integers."""
        client = self.store.client
        raw = await self.store.call("spend_mtd", client.hgetall, self.keys.month(org, month))
        return {f: int(v) for f, v in raw.items()}

    # --- month to date -------------------------------------------------------------------
    async def month_to_date(self, org: str, month: str | None = None) -> dict[str, Any]:
        """Spend of `month` (default: this month) at every scope::

            {"org", "month", "timezone", "period_start_ms", "period_end_ms",
             "organization": {"spend", "included", "extra"},
             "workspaces" | "users" | "keys": {name: {"spend", "included", "extra"}},
             "held": {field: micro-USD}, "overshoot": {field: micro-USD}}

        ``included`` is ``spend - extra``. Names with no spend in the month are absent.
        ``held``: what requests in flight hold now, by month field (``spend:user=U``
        against included usage, ``extra:<scope>`` against caps). ``overshoot``: by cap's
        month field, the largest part of one request's extra spend past the cap."""
        self.organization(org)
        month, start, end = self.month_bounds(month)
        h = await self.month_hash(org, month)
        groups: dict[str, dict[str, dict[str, int]]] = {"ws": {}, "user": {}, "key": {}}
        for f in h:
            kind, scope = Fields.split(f)
            where, name = Scope.split(scope)
            if kind in ("spend", "extra") and where in groups:
                groups[where][name] = self._line(h, scope)
        return {
            "org": org,
            "month": month,
            "timezone": self.config().server.timezone,
            "period_start_ms": start,
            "period_end_ms": end,
            "organization": self._line(h, "org"),
            "workspaces": dict(sorted(groups["ws"].items())),
            "users": dict(sorted(groups["user"].items())),
            "keys": dict(sorted(groups["key"].items())),
            "held": await self.held(org),
            "overshoot": {
                Fields.split(f)[1]: v for f, v in sorted(h.items()) if Fields.split(f)[0] == "over"
            },
        }

    async def held(self, org: str) -> dict[str, int]:
        """Money held now by requests in flight, by month field (in-flight counts left out)."""
        client = self.store.client
        raw = await self.store.call("spend_held", client.hgetall, self.keys.held(org))
        return {
            f: int(v) for f, v in sorted(raw.items()) if Fields.split(f)[0] in ("spend", "extra")
        }

    @staticmethod
    def _line(h: dict[str, int], scope: str) -> dict[str, int]:
        spend, extra = h.get(Fields.spend(scope), 0), h.get(Fields.extra(scope), 0)
        return {"spend": spend, "included": spend - extra, "extra": extra}

    # --- caps (`tollway.limits.caps`) -----------------------------------------------------
    async def set_cap(
        self, org: str, scope: str, name: str | None, amount: int | str, period: str = "month"
    ) -> None:
        """Override a cap on extra usage: `scope` org (name None), workspace, tier, user or
        model (a name or pattern); `period` month, day or week; `amount` micro-USD or
        "unlimited". Applies to the very next request."""
        await self.cap_overrides.set(org, scope, name, amount, period)

    async def clear_cap(
        self, org: str, scope: str, name: str | None = None, period: str = "month"
    ) -> bool:
        """Drop a cap override (the YAML applies again); False if there was none."""
        return await self.cap_overrides.clear(org, scope, name, period)

    async def caps(self, org: str) -> dict[str, Any]:
        """Every cap of the organization in force now (`Caps.in_force`): ``{"organization":
        {...}, "workspaces": {W: {...}}, "tiers": {T: {...}}, "users": {U: {...}},
        "models": {PATTERN: {...}}}``, each the monthly ``{"cap": micro-USD or None
        (unlimited), "source": ...}`` with ``"daily"`` and ``"weekly"`` ones beside it;
        source is "override", "config", or for users the label of what set it."""
        return await self.cap_overrides.in_force(org)

    # --- extra usage ---------------------------------------------------------------------
    def _extra_field(self, org: str, user: str | None) -> str:
        org_cfg = self.organization(org)
        if user is None:
            return Fields.extra(Scope.ORG)
        if user not in org_cfg.users:
            raise UnknownName(f"unknown user {user!r} in {org!r}")
        return Fields.extra(Scope.user(user))

    async def set_extra_usage(self, org: str, enabled: bool, user: str | None = None) -> None:
        """Enable or disable extra usage for the organization (user None) or one user.
        Disabling it for the organization turns it off for everyone, whatever the users'
        own settings; enabling it for the organization keeps users disabled one by one."""
        field = self._extra_field(org, user)
        client = self.store.client
        value = "1" if enabled else "0"
        await self.store.call("spend_extra", client.hset, self.keys.overrides(org), field, value)

    async def clear_extra_usage(self, org: str, user: str | None = None) -> bool:
        """Drop an extra-usage override; False if there was none."""
        field = self._extra_field(org, user)
        client = self.store.client
        return bool(
            await self.store.call("spend_extra", client.hdel, self.keys.overrides(org), field)
        )

    # --- users ---------------------------------------------------------------------------
    async def user_status(self, org: str, user: str, month: str | None = None) -> UserStatus:
        """A user's month to date and effective limits (`SpendError`: unknown user)."""
        org_cfg = self.organization(org)
        if user not in org_cfg.users:
            raise UnknownName(f"unknown user {user!r} in {org!r}")
        ov = await self.overrides(org)
        month, _, _ = self.month_bounds(month)
        h = await self.month_hash(org, month)
        return seats.user_status(org_cfg, org, user, ov, h)

    # --- statements ----------------------------------------------------------------------
    async def statement(self, org: str, month: str | None = None) -> Statement:
        """The usage statement of `month` (see `tollway.limits.statement`), cross-checked against
        the ledger database's debit events of the month (an SQL aggregate)."""
        org_cfg = self.organization(org)
        month, start, end = self.month_bounds(month)
        h = await self.month_hash(org, month)
        ov = await self.overrides(org)
        ledger = await history_of(self.store).debits_by_user(org, start, end)
        client, acct = self.store.client, self.keys.account(org)
        folded = await self.store.call("spend_ledger", client.hget, acct, "ledger_folded_ts")
        return build_statement(
            org=org,
            month=month,
            timezone=self.config().server.timezone,
            billing_mode=org_cfg.billing.mode,
            period=(start, end),
            now_ms=self.clock.now_ms(),
            month_hash=h,
            ledger=ledger,
            seats={u: ov.get(Fields.seat(u), c.seat) for u, c in org_cfg.users.items()},
            ledger_folded_ts=int(folded or 0),
        )
