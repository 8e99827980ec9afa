"""From the config and a caller to what the scripts need: bucket specs and money checks.

Pure functions of (config, principal, model): no Redis here. `meter.py` runs the plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tollway.config.schema import Limits, Organization
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


# The limits of one scope: a config scope's `Limits` or a key's own `KeyLimits`.
ScopeLimits = Limits | KeyLimits


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
            kind, name = Scope.split(self.scope)
            noun = {"ws": "workspace", "user": "user", "key": "key", "model": "model"}[kind]
            where = f"{noun} '{name}'" if kind != "model" else f"model '{name}' in '{org}'"
        return f"{self.limit} of {where}"


def user_workspace(org_cfg: Organization, principal: Principal) -> str | None:
    if principal.workspace:
        return principal.workspace
    user = org_cfg.users.get(principal.user) if principal.user else None
    return user.workspace if user is not None else None


def limit_scopes(
    org_cfg: Organization, principal: Principal, model: str | None
) -> list[tuple[str, ScopeLimits]]:
    """(scope, Limits) of every scope whose limits apply to this request, the organization
    first."""
    found: list[tuple[str, ScopeLimits]] = [(Scope.ORG, org_cfg.limits)]
    if model and model in org_cfg.model_limits:
        found.append((Scope.model(model), org_cfg.model_limits[model]))
    ws = user_workspace(org_cfg, principal)
    if ws and ws in org_cfg.workspaces:
        found.append((Scope.ws(ws), org_cfg.workspaces[ws].limits))
    if principal.user and principal.user in org_cfg.users:
        found.append((Scope.user(principal.user), org_cfg.users[principal.user].limits))
    if principal.key_limits is not None:
        found.append((Scope.key(principal.key_id), principal.key_limits))
    return found


def bucket_specs(
    org_cfg: Organization, principal: Principal, model: str | None
) -> list[BucketSpec]:
    """Every bucket that applies to this request, the organization's first."""
    return specs_of(limit_scopes(org_cfg, principal, model))


def specs_of(scopes: list[tuple[str, ScopeLimits]]) -> list[BucketSpec]:
    """The buckets of (scope, Limits) pairs: one per limit that is set, in order."""
    specs = []
    for scope, limits in scopes:
        for name in KINDS:
            value = getattr(limits, name)
            if value is not None:
                specs.append(BucketSpec(scope, name, value))
    return specs


def scopes(org_cfg: Organization, principal: Principal) -> list[str]:
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


def seat_plan(org_cfg: Organization, principal: Principal) -> SeatPlan | None:
    user = org_cfg.users.get(principal.user) if principal.user else None
    if user is None or user.seat is None or principal.user is None:
        return None
    tier = org_cfg.seat_tiers[user.seat]
    u = principal.user
    return SeatPlan(Fields.spend(Scope.user(u)), tier.included, Fields.included(u))


def extra_plan(org_cfg: Organization, principal: Principal) -> ExtraPlan:
    """Whether the user may go past the included usage: the run-time organization
    override "0" turns extra usage off for everyone (disabled entirely); otherwise the
    user's override, then the organization's, then the config decide."""
    extra = org_cfg.extra_usage
    on = extra.enabled and (extra.users is None or principal.user in extra.users)
    org = Fields.extra(Scope.ORG)
    return ExtraPlan(on, (Fields.extra(Scope.user(str(principal.user))), org), org)
