"""Which spend caps and budgets apply to a request: the `CapPlan` entries admit.lua and
settle.lua receive. Pure functions of (config, principal, model): no Redis here.

Every cap is on extra usage (spend past a seat's included amount; all spend for a key
without a seated user) in one calendar period of ``server.timezone``: ``month``, ``day``
or ``week`` (Monday first). Scopes, each in every period:

=============  ============================================  =============================
scope          YAML (month / day / week)                     run-time override field
=============  ============================================  =============================
organization   ``spend_caps.{monthly,daily,weekly}``         ``cap[.P]:org``
workspace      ``workspaces.W.spend_caps.{...}``             ``cap[.P]:ws=W``
seat tier      ``seat_tiers.T.{monthly,daily,weekly}_cap``   ``cap[.P]:tier=T``
user           ``users.U.{monthly,daily,weekly}_cap``        ``cap[.P]:user=U``
model          ``model_caps.PATTERN.{monthly,daily,weekly}``  ``cap[.P]:model=PATTERN``
=============  ============================================  =============================

(``cap:`` for the month, ``cap.day:`` and ``cap.week:`` for the others: `Fields.cap`.)
A run-time override wins over the YAML until it is cleared. A user's own cap, first
present wins: the user's override, the user's YAML cap, the tier's override, the tier's
YAML cap. Every scope's entry is in the plan even when the YAML sets no cap there, so a
cap set at run time applies to the very next request on every replica.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from tollway.config.schema import Organization
from tollway.limits.plans import Principal, user_workspace
from tollway.limits.rkeys import Fields, Scope

PERIODS = ("month", "day", "week")
ADJECTIVE = {"month": "monthly", "day": "daily", "week": "weekly"}


@dataclass(frozen=True, slots=True)
class CapPlan:
    """A cap on `spent` (a field of the `period`'s hash): `cap` micro-USD (-1 unlimited)
    unless one of `overrides` is set (the first present wins). A refusal names `label`,
    or the entry of `labels` of the override that set the cap."""

    spent: str
    cap: int
    overrides: tuple[str, ...]
    label: str
    labels: tuple[str, ...]
    period: str = "month"  # the hash `spent` is read from: month | day | week
    overshoot: str = field(init=False, default="")  # period field: Fields.over(spent)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overshoot", Fields.over(self.spent))

    def source(self, overrides: dict[str, str]) -> tuple[str | None, str]:
        """(the override in force or None, the label a refusal names) under `overrides`."""
        for f, label in zip(self.overrides, self.labels, strict=True):
            if f in overrides:
                return overrides[f], label
        return None, self.label


def _cap(value: int | None) -> int:
    return -1 if value is None else value


def _named(who: str, period: str, bare_month: bool = False) -> str:
    """A cap's name in refusals: "user 'alice' daily", "model 'm*' monthly"; a workspace's,
    tier's and user's monthly cap is named bare ("user 'alice'"), as it always was."""
    return who if bare_month and period == "month" else f"{who} {ADJECTIVE[period]}"


def _simple(scope: str, who: str, value: int | None, period: str, bare: bool = False) -> CapPlan:
    label = _named(who, period, bare)
    return CapPlan(
        Fields.extra(scope), _cap(value), (Fields.cap(scope, period),), label, (label,), period
    )


def user_cap_plan(org_cfg: Organization, user: str, period: str = "month") -> CapPlan:
    """The user's own cap of `period`: the user's override, the user's YAML cap, the
    tier's override, the tier's YAML cap (first present wins). A refusal names the source
    that set the cap: a user override is "user 'U'" even on a tier's user."""
    u = org_cfg.users.get(user)
    s = Scope.user(user)
    spent, user_cap = Fields.extra(s), Fields.cap(s, period)
    user_label = _named(f"user '{user}'", period, bare_month=True)
    if u is not None and u.cap_mode_of(period) != "inherit":
        own = _cap(u.cap_of(period))
        return CapPlan(spent, own, (user_cap,), user_label, (user_label,), period)
    if u is not None and u.seat is not None and u.seat in org_cfg.seat_tiers:
        tier_cap = org_cfg.seat_tiers[u.seat].cap_of(period)
        label = _named(f"seat tier '{u.seat}'", period, bare_month=True)
        overrides = (user_cap, Fields.cap(Scope.tier(u.seat), period))
        return CapPlan(spent, _cap(tier_cap), overrides, label, (user_label, label), period)
    return CapPlan(spent, -1, (user_cap,), user_label, (user_label,), period)


def cap_plans(org_cfg: Organization, principal: Principal) -> list[CapPlan]:
    """Every cap on the principal's extra usage, period by period (month, day, week), each
    organization, then workspace, then user."""
    ws = user_workspace(org_cfg, principal)
    caps: list[CapPlan] = []
    for period in PERIODS:
        caps.append(_simple(Scope.ORG, "organization", org_cfg.spend_caps.of(period), period))
        if ws:
            ws_cfg = org_cfg.workspaces.get(ws)
            value = ws_cfg.spend_caps.of(period) if ws_cfg is not None else None
            caps.append(_simple(Scope.ws(ws), f"workspace '{ws}'", value, period, bare=True))
        if principal.user:
            caps.append(user_cap_plan(org_cfg, principal.user, period))
    return caps


def model_cap_scopes(org_cfg: Organization, model: str | None) -> list[str]:
    """The model caps (names or patterns of `model_caps`, with those given a cap at run
    time merged in by `tollway.config.overlay`) that `model` falls under, as spend scopes
    (``model=<name or pattern>``)."""
    if not model:
        return []
    found = [p for p in org_cfg.model_caps if p == model or fnmatch.fnmatchcase(model, p)]
    return [Scope.model(p) for p in sorted(found)]


def model_cap_plan(org_cfg: Organization, pattern: str, period: str) -> CapPlan:
    """The organization's cap of `period` on the extra usage of the models `pattern`
    matches (the YAML's, unless overridden at run time)."""
    declared = org_cfg.model_caps.get(pattern)
    value = declared.of(period) if declared is not None else None
    return _simple(Scope.model(pattern), f"model '{pattern}'", value, period)


def model_cap_plans(org_cfg: Organization, model: str | None) -> list[CapPlan]:
    """Dollar caps per model: switching to another model does not dodge the cap of the
    pattern it matches."""
    return [
        model_cap_plan(org_cfg, Scope.split(scope)[1], period)
        for scope in model_cap_scopes(org_cfg, model)
        for period in PERIODS
    ]


def budget_plans(principal: Principal) -> list[CapPlan]:
    """The key's own budget on all its spend (included or not), per calendar period."""
    limits = principal.key_limits
    if limits is None or limits.budget is None:
        return []
    period = limits.budget_period
    label = f"key '{principal.key_id}' {ADJECTIVE[period]} budget"
    return [
        CapPlan(Fields.spend(Scope.key(principal.key_id)), limits.budget, (), label, (), period)
    ]
