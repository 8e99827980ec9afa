"""From the config and a caller to what the scripts need: bucket specs and money checks.

Pure functions of (config, principal, model): no Redis here. `meter.py` runs the plans.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tollway.limits.rkeys import Fields, Scope

# Limit name in the config → bucket kind in the scripts.
KINDS = {"rpm": "req", "tpm": "tok", "input_tpm": "in", "output_tpm": "out"}
TOKEN_UNIT = 60_000  # bucket units per token (see scripts/common.lua)
REQUEST_UNIT = 60_000_000  # bucket units per request; rpm may have 3 decimals


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits (None: none): per-minute buckets, budgets and a ceiling on its
    requests in flight, set when the key is created or edited (`keys set`)."""

    rpm: Decimal | None = None
    tpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    budget: int | None = None  # micro-USD of spend per budget_period
    budget_period: str = "month"  # day | week | month (calendar, server.timezone)
    session_budget: int | None = None  # micro-USD a session id may spend with this key
    max_in_flight: int | None = None  # requests of this key admitted and not yet settled


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from an API key (with the key's own limits)."""

    org: str
    key_id: str
    workspace: str | None = None
    user: str | None = None
    key_limits: KeyLimits | None = None


@dataclass(frozen=True, slots=True)
class BucketSpec:
    scope: str  # org | model=M | ws=W | user=U | key=K
    limit: str  # rpm | tpm | input_tpm | output_tpm
    per_minute: Decimal | int

    @property
    def kind(self) -> str:
        return KINDS[self.limit]

    @property
    def rate_unit(self) -> tuple[int, int]:
        if self.limit == "rpm":
            return int(Decimal(self.per_minute) * 1000), REQUEST_UNIT
        return int(self.per_minute), TOKEN_UNIT

    def plan(self) -> BucketPlan:
        rate, unit = self.rate_unit
        return BucketPlan(self.kind, rate, unit)

    def describe(self, org: str) -> str:
        """Human name of the limit, for error messages: "tpm of user 'alice'"."""
        if self.scope == Scope.ORG:
            where = f"organization '{org}'"
        else:
            level, name = Scope.split(self.scope)
            noun = {"ws": "workspace", "user": "user", "key": "key", "model": "model"}[level]
            where = f"{noun} '{name}'" if level != "model" else f"model '{name}' in '{org}'"
        return f"{self.limit} of {where}"


def user_workspace(org_cfg: Any, principal: Principal) -> str | None:
    if principal.workspace:
        return principal.workspace
    user = org_cfg.users.get(principal.user) if principal.user else None
    return user.workspace if user is not None else None


def limit_levels(org_cfg: Any, principal: Principal, model: str | None) -> list[tuple[str, Any]]:
    """(scope, Limits) of every level whose limits apply to this request, organization
    level first."""
    levels: list[tuple[str, Any]] = [(Scope.ORG, org_cfg.limits)]
    if model and model in org_cfg.model_limits:
        levels.append((Scope.model(model), org_cfg.model_limits[model]))
    ws = user_workspace(org_cfg, principal)
    if ws and ws in org_cfg.workspaces:
        levels.append((Scope.ws(ws), org_cfg.workspaces[ws].limits))
    if principal.user and principal.user in org_cfg.users:
        levels.append((Scope.user(principal.user), org_cfg.users[principal.user].limits))
    if principal.key_limits is not None:
        levels.append((Scope.key(principal.key_id), principal.key_limits))
    return levels


def bucket_specs(org_cfg: Any, principal: Principal, model: str | None) -> list[BucketSpec]:
    """Every bucket that applies to this request, organization level first."""
    return specs_of(limit_levels(org_cfg, principal, model))


def specs_of(levels: list[tuple[str, Any]]) -> list[BucketSpec]:
    """The buckets of (scope, Limits) pairs: one per limit that is set, in order."""
    specs = []
    for scope, limits in levels:
        for name in KINDS:
            value = getattr(limits, name)
            if value is not None:
                specs.append(BucketSpec(scope, name, value))
    return specs


def scopes(org_cfg: Any, principal: Principal) -> list[str]:
    """Month-to-date spend scopes of a request."""
    out = [Scope.ORG]
    ws = user_workspace(org_cfg, principal)
    if ws:
        out.append(Scope.ws(ws))
    if principal.user:
        out.append(Scope.user(principal.user))
    out.append(Scope.key(principal.key_id))
    return out


# --- plan entries: what the scripts receive, read in Lua by these field names --------------
@dataclass(frozen=True, slots=True)
class BucketPlan:
    """A bucket as the scripts see it (units: scripts/common.lua)."""

    kind: str  # req | tok | in | out
    rate: int
    unit: int


@dataclass(frozen=True, slots=True)
class SeatPlan:
    """The user's included usage: `spent` (month field) is included up to `included`,
    unless the overrides hold `override` (a tier move's amount)."""

    spent: str
    included: int
    override: str


@dataclass(frozen=True, slots=True)
class ExtraPlan:
    """Whether the user may go past the included usage: `on` from the config, unless one
    of `overrides` is set (the first present wins, "1" on); `off` set to "0" disables
    extra usage for everyone."""

    on: bool
    overrides: tuple[str, ...]
    off: str


@dataclass(frozen=True, slots=True)
class CapPlan:
    """A monthly cap on `spent` (a month field): `cap` micro-USD (-1 unlimited) unless one
    of `overrides` is set (the first present wins). A refusal names `label`, or the entry
    of `labels` of the override that set the cap."""

    spent: str
    cap: int
    overrides: tuple[str, ...]
    label: str
    labels: tuple[str, ...]
    period: str = "month"  # the hash `spent` is read from: month | day | week
    overshoot: str = field(init=False, default="")  # month field: Fields.over(spent)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overshoot", Fields.over(self.spent))

    def source(self, overrides: dict[str, str]) -> tuple[str | None, str]:
        """(the override in force or None, the label a refusal names) under `overrides`."""
        for f, label in zip(self.overrides, self.labels, strict=True):
            if f in overrides:
                return overrides[f], label
        return None, self.label


def seat_plan(org_cfg: Any, principal: Principal) -> SeatPlan | None:
    user = org_cfg.users.get(principal.user) if principal.user else None
    if user is None or user.seat is None or principal.user is None:
        return None
    tier = org_cfg.seat_tiers[user.seat]
    u = principal.user
    return SeatPlan(Fields.spend(Scope.user(u)), tier.included, Fields.included(u))


def extra_plan(org_cfg: Any, principal: Principal) -> ExtraPlan:
    """Whether the user may go past the included usage: the run-time organization
    override "0" turns extra usage off for everyone (disabled entirely); otherwise the
    user's override, then the organization's, then the config decide."""
    extra = org_cfg.extra_usage
    on = extra.enabled and (extra.users is None or principal.user in extra.users)
    org = Fields.extra(Scope.ORG)
    return ExtraPlan(on, (Fields.extra(Scope.user(str(principal.user))), org), org)


def _cap(value: int | None) -> int:
    return -1 if value is None else value


def cap_plans(org_cfg: Any, principal: Principal) -> list[CapPlan]:
    """Every cap that applies, organization first.

    Precedence: a run-time override of the user's cap, the user's own cap in the config,
    a run-time override of the tier's cap, the tier's cap in the config. A refusal names
    the source that set the cap: a user override is "user 'U'" even on a tier's user.
    """
    org_label = "organization monthly"
    org = Scope.ORG
    caps = [
        CapPlan(
            Fields.extra(org),
            _cap(org_cfg.spend_caps.monthly),
            (Fields.cap(org),),
            org_label,
            (org_label,),
        )
    ]
    ws = user_workspace(org_cfg, principal)
    if ws:
        ws_cfg = org_cfg.workspaces.get(ws)
        value = ws_cfg.spend_caps.monthly if ws_cfg is not None else None
        label = f"workspace '{ws}'"
        s = Scope.ws(ws)
        caps.append(CapPlan(Fields.extra(s), _cap(value), (Fields.cap(s),), label, (label,)))
    u = principal.user
    if u:
        user = org_cfg.users.get(u)
        s = Scope.user(u)
        spent, user_cap = Fields.extra(s), Fields.cap(s)
        user_label = f"user '{u}'"
        if user is not None and user.cap_mode != "inherit":
            cap = _cap(user.monthly_cap)
            caps.append(CapPlan(spent, cap, (user_cap,), user_label, (user_label,)))
        elif user is not None and user.seat is not None:
            tier_cap = org_cfg.seat_tiers[user.seat].monthly_cap
            label = f"seat tier '{user.seat}'"
            overrides = (user_cap, Fields.cap(Scope.tier(user.seat)))
            caps.append(CapPlan(spent, _cap(tier_cap), overrides, label, (user_label, label)))
        else:
            caps.append(CapPlan(spent, -1, (user_cap,), user_label, (user_label,)))
    return caps + window_caps(org_cfg, principal)


def window_caps(org_cfg: Any, principal: Principal) -> list[CapPlan]:
    """Daily and weekly caps on extra usage of the organization and the workspace."""
    levels = [(Scope.ORG, "organization", org_cfg.spend_caps)]
    ws = user_workspace(org_cfg, principal)
    if ws and ws in org_cfg.workspaces:
        levels.append((Scope.ws(ws), f"workspace '{ws}'", org_cfg.workspaces[ws].spend_caps))
    out = []
    for scope, who, spend_caps in levels:
        for period, value in (("day", spend_caps.daily), ("week", spend_caps.weekly)):
            if value is not None:
                label = f"{who} {period}ly".replace("dayly", "daily")
                out.append(CapPlan(Fields.extra(scope), value, (), label, (), period))
    return out


def model_cap_scopes(org_cfg: Any, model: str | None) -> list[str]:
    """The model caps (names or patterns of `model_caps`) that `model` falls under, as
    spend scopes (``model=<name or pattern>``)."""
    if not model:
        return []
    found = [p for p in org_cfg.model_caps if p == model or fnmatch.fnmatchcase(model, p)]
    return [Scope.model(p) for p in sorted(found)]


def model_cap_plans(org_cfg: Any, model: str | None) -> list[CapPlan]:
    """Dollar caps per model: switching to another model does not dodge the cap of the
    pattern it matches."""
    out = []
    for scope in model_cap_scopes(org_cfg, model):
        caps = org_cfg.model_caps[Scope.split(scope)[1]]
        windows = (("month", caps.monthly), ("day", caps.daily), ("week", caps.weekly))
        for period, value in windows:
            if value is not None:
                name = {"month": "monthly", "day": "daily", "week": "weekly"}[period]
                label = f"model '{Scope.split(scope)[1]}' {name}"
                out.append(CapPlan(Fields.extra(scope), value, (), label, (), period))
    return out


def budget_plans(principal: Principal) -> list[CapPlan]:
    """The key's own budget on all its spend (included or not), per calendar period."""
    limits = principal.key_limits
    if limits is None or limits.budget is None:
        return []
    period = limits.budget_period
    label = f"key '{principal.key_id}' {period}ly budget".replace("dayly", "daily")
    return [
        CapPlan(Fields.spend(Scope.key(principal.key_id)), limits.budget, (), label, (), period)
    ]
