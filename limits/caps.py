"""Spend caps at run time: set and clear the overrides admit.lua obeys, and list every cap
in force with where it comes from. The caps themselves (scopes, periods, precedence) are
`tollway.limits.capplans`; this module writes and reads the fields those plans name, so
the two cannot drift apart.

A cap is set on a scope (``org``; ``workspace``, ``tier``, ``user`` by name; ``model`` by a
model name or pattern such as ``claude-opus-*``) for a period (``month``, ``day``,
``week``: calendar periods of ``server.timezone``), as integer micro-USD or
``"unlimited"``. It applies to the very next request on every replica and wins over the
YAML until cleared; clearing falls back to the YAML (or to no cap).

Model caps: a name or pattern the YAML's ``model_caps`` does not declare is added to the
set ``tw:{org}:modelcaps`` when it is given a cap, and every process merges that set into
its config within a second (`tollway.limits.users`, `tollway.config.overlay`): the spend of
its models is counted from then on (spend earlier in the period was not counted per
pattern). A pattern whose last run-time cap is cleared leaves the set.

Errors: `SpendError` (a bad amount, period or pattern) and `UnknownName` (an organization,
workspace, tier or user not configured, or a scope that does not exist); nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollway.config.schema import Config, Organization
from tollway.config.values import check_model_name
from tollway.limits import seats
from tollway.limits.capplans import ADJECTIVE, PERIODS
from tollway.limits.errors import SpendError, UnknownName
from tollway.limits.rkeys import Fields, Scope
from tollway.limits.store import Store

SCOPES = ("org", "workspace", "tier", "user", "model")  # where a cap is set
MAX_PATTERN = 200  # characters of a model name or pattern


def check_period(period: str) -> str:
    if period not in PERIODS:
        raise SpendError(f"unknown period {period!r} (one of: {', '.join(PERIODS)})")
    return period


def check_pattern(pattern: str | None) -> str:
    """A model name or pattern (``*``, ``?``, ``[...]`` as in the YAML's ``model_caps``)."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise SpendError(f"a model name or pattern is text of at most {MAX_PATTERN} characters")
    try:
        return check_model_name(pattern)
    except ValueError as e:
        raise SpendError(str(e)) from None


class Caps:
    """`config` returns the live `Config` (with run-time users and patterns merged in)."""

    def __init__(self, store: Store, config: Callable[[], Config]) -> None:
        self.store = store
        self.keys = store.keys
        self.config = config

    def _org(self, org: str) -> Organization:
        org_cfg = self.config().organizations.get(org)
        if org_cfg is None:
            raise UnknownName(f"unknown organization {org!r}")
        return org_cfg

    def field(self, org: str, scope: str, name: str | None, period: str = "month") -> str:
        """The override field of a cap (`UnknownName` for a name the organization lacks)."""
        org_cfg = self._org(org)
        check_period(period)
        if scope == "org":
            return Fields.cap(Scope.ORG, period)
        if scope == "model":
            return Fields.cap(Scope.model(check_pattern(name)), period)
        known = {"workspace": org_cfg.workspaces, "tier": org_cfg.seat_tiers, "user": org_cfg.users}
        if scope not in known:
            raise UnknownName(f"unknown cap scope {scope!r} (one of: {', '.join(SCOPES)})")
        if name not in known[scope]:
            names = ", ".join(sorted(known[scope])) or "none defined"
            raise UnknownName(f"unknown {scope} {name!r} in {org!r} (known: {names})")
        named = {"workspace": Scope.ws, "tier": Scope.tier, "user": Scope.user}[scope]
        return Fields.cap(named(str(name)), period)

    async def set(
        self, org: str, scope: str, name: str | None, amount: int | str, period: str = "month"
    ) -> None:
        """Override the cap of `scope` (`name`) for `period` with `amount` (micro-USD or
        "unlimited"). A model name or pattern joins the run-time set in the same step."""
        field, value = self.field(org, scope, name, period), seats.override_amount(amount)
        pipe = self.store.client.pipeline(transaction=True)
        if scope == "model":
            pipe.sadd(self.keys.model_caps(org), str(name))
        pipe.hset(self.keys.overrides(org), field, value)
        await self.store.call("caps_set", pipe.execute)

    async def clear(
        self, org: str, scope: str, name: str | None = None, period: str = "month"
    ) -> bool:
        """Drop a cap override (the YAML applies again); False if there was none."""
        field = self.field(org, scope, name, period)
        key = self.keys.overrides(org)
        client = self.store.client
        removed = bool(await self.store.call("caps_clear", client.hdel, key, field))
        if scope == "model":
            await self._forget(org, str(name))
        return removed

    async def _forget(self, org: str, pattern: str) -> None:
        """Take `pattern` out of the run-time set once it has no run-time cap left, under
        WATCH of the overrides: a cap set on it meanwhile keeps it (one dropped from the set
        while it has a cap would lose that cap on the other replicas)."""
        key = self.keys.overrides(org)
        fields = [Fields.cap(Scope.model(pattern), p) for p in PERIODS]

        async def step(pipe: Any) -> None:
            if any(v is not None for v in await pipe.hmget(key, fields)):
                return
            pipe.multi()
            pipe.srem(self.keys.model_caps(org), pattern)

        # redis-py's `transaction` runs `step` again when the watched hash changed.
        await self.store.call("caps_clear", self.store.client.transaction, step, key)

    async def patterns(self, org: str) -> list[str]:
        """Every model name or pattern with a cap: the YAML's and those set at run time."""
        org_cfg = self._org(org)
        client = self.store.client
        runtime = await self.store.call("caps_read", client.smembers, self.keys.model_caps(org))
        return sorted(set(org_cfg.model_caps) | set(runtime))

    async def in_force(self, org: str) -> dict[str, Any]:
        """Every cap of the organization in force now::

            {"organization": CAP, "workspaces": {W: CAP}, "tiers": {T: CAP},
             "users": {U: CAP}, "models": {PATTERN: CAP}}

        where CAP is the monthly cap ``{"cap", "source"}`` with ``"daily"`` and
        ``"weekly"`` beside it, each ``{"cap", "source"}``: cap in micro-USD or None
        (unlimited); source "override", "config", or for users the label of what set it."""
        org_cfg = self._org(org)
        ov = dict(
            await self.store.call("caps_read", self.store.client.hgetall, self.keys.overrides(org))
        )

        def simple(scope: str, of: Callable[[str], int | None]) -> dict[str, Any]:
            def one(period: str) -> dict[str, Any]:
                f = Fields.cap(scope, period)
                if f in ov:
                    return {"cap": seats.cap_value(ov[f]), "source": "override"}
                return {"cap": of(period), "source": "config"}

            return _periods(one)

        def user(name: str) -> dict[str, Any]:
            def one(period: str) -> dict[str, Any]:
                cap, source = seats.user_cap(org_cfg, org, name, ov, period)
                return {"cap": cap, "source": source}

            return _periods(one)

        def model(pattern: str) -> dict[str, Any]:
            declared = org_cfg.model_caps.get(pattern)
            return simple(Scope.model(pattern), declared.of if declared else lambda _: None)

        return {
            "organization": simple(Scope.ORG, org_cfg.spend_caps.of),
            "workspaces": {
                w: simple(Scope.ws(w), c.spend_caps.of)
                for w, c in sorted(org_cfg.workspaces.items())
            },
            "tiers": {
                t: simple(Scope.tier(t), c.cap_of) for t, c in sorted(org_cfg.seat_tiers.items())
            },
            "users": {u: user(u) for u in sorted(org_cfg.users)},
            "models": {p: model(p) for p in await self.patterns(org)},
        }


def _periods(one: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The monthly cap's fields, with the daily and weekly ones beside them."""
    return {**one("month"), **{ADJECTIVE[p]: one(p) for p in ("day", "week")}}
