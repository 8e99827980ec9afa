"""From the config and a caller to what the scripts need: bucket specs and money checks.

Pure functions of (config, principal, model): no Redis here. `meter.py` runs the plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# Limit name in the config → bucket kind in the scripts.
KINDS = {"rpm": "req", "tpm": "tok", "input_tpm": "in", "output_tpm": "out"}
TOKEN_UNIT = 60_000  # bucket units per token (see scripts/common.lua)
REQUEST_UNIT = 60_000_000  # bucket units per request; rpm may have 3 decimals


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own per-minute limits (None: none), set when the key is created."""

    rpm: Decimal | None = None
    tpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None


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

    def script_args(self) -> list[Any]:
        rate, unit = self.rate_unit
        return [self.kind, rate, unit]

    def describe(self, org: str) -> str:
        """Human name of the limit, for error messages: "tpm of user 'alice'"."""
        if self.scope == "org":
            where = f"organization '{org}'"
        else:
            level, _, name = self.scope.partition("=")
            noun = {"ws": "workspace", "user": "user", "key": "key", "model": "model"}[level]
            where = f"{noun} '{name}'" if level != "model" else f"model '{name}' in '{org}'"
        return f"{self.limit} of {where}"


def user_workspace(org_cfg: Any, principal: Principal) -> str | None:
    if principal.workspace:
        return principal.workspace
    user = org_cfg.users.get(principal.user) if principal.user else None
    return user.workspace if user is not None else None


def bucket_specs(org_cfg: Any, principal: Principal, model: str | None) -> list[BucketSpec]:
    """Every bucket that applies to this request, organization level first."""
    levels: list[tuple[str, Any]] = [("org", org_cfg.limits)]
    if model and model in org_cfg.model_limits:
        levels.append((f"model={model}", org_cfg.model_limits[model]))
    ws = user_workspace(org_cfg, principal)
    if ws and ws in org_cfg.workspaces:
        levels.append((f"ws={ws}", org_cfg.workspaces[ws].limits))
    if principal.user and principal.user in org_cfg.users:
        levels.append((f"user={principal.user}", org_cfg.users[principal.user].limits))
    if principal.key_limits is not None:
        levels.append((f"key={principal.key_id}", principal.key_limits))
    return specs_of(levels)


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
    out = ["org"]
    ws = user_workspace(org_cfg, principal)
    if ws:
        out.append(f"ws={ws}")
    if principal.user:
        out.append(f"user={principal.user}")
    out.append(f"key={principal.key_id}")
    return out


def seat_plan(org_cfg: Any, principal: Principal) -> dict[str, Any] | None:
    user = org_cfg.users.get(principal.user) if principal.user else None
    if user is None or user.seat is None:
        return None
    tier = org_cfg.seat_tiers[user.seat]
    return {
        "f": f"spend:user={principal.user}",
        "inc": tier.included,
        "ov": f"included:user={principal.user}",
    }


def extra_plan(org_cfg: Any, principal: Principal) -> dict[str, Any]:
    """Whether the user may go past the included usage: the run-time organization
    override "0" turns extra usage off for everyone (disabled entirely); otherwise the
    user's override, then the organization's, then the config decide."""
    extra = org_cfg.extra_usage
    on = extra.enabled and (extra.users is None or principal.user in extra.users)
    return {"on": on, "ov": [f"extra:user={principal.user}", "extra:org"], "off": "extra:org"}


def _cap(value: int | None) -> int:
    return -1 if value is None else value


def cap_plans(org_cfg: Any, principal: Principal) -> list[list[Any]]:
    """[month field, cap (-1 unlimited), override fields, label, label of each override
    field] for every cap that applies.

    Precedence: a run-time override of the user's cap, the user's own cap in the config,
    a run-time override of the tier's cap, the tier's cap in the config. A refusal names
    the source that set the cap: a user override is "user 'U'" even on a tier's user.
    """
    org_label = "organization monthly"
    caps: list[list[Any]] = [
        ["extra:org", _cap(org_cfg.spend_caps.monthly), ["cap:org"], org_label, [org_label]]
    ]
    ws = user_workspace(org_cfg, principal)
    if ws:
        ws_cfg = org_cfg.workspaces.get(ws)
        value = ws_cfg.spend_caps.monthly if ws_cfg is not None else None
        label = f"workspace '{ws}'"
        caps.append([f"extra:ws={ws}", _cap(value), [f"cap:ws={ws}"], label, [label]])
    u = principal.user
    if u:
        user = org_cfg.users.get(u)
        field = f"extra:user={u}"
        user_label = f"user '{u}'"
        if user is not None and user.cap_mode != "inherit":
            caps.append(
                [field, _cap(user.monthly_cap), [f"cap:user={u}"], user_label, [user_label]]
            )
        elif user is not None and user.seat is not None:
            tier_cap = org_cfg.seat_tiers[user.seat].monthly_cap
            label = f"seat tier '{user.seat}'"
            overrides = [f"cap:user={u}", f"cap:tier={user.seat}"]
            caps.append([field, _cap(tier_cap), overrides, label, [user_label, label]])
        else:
            caps.append([field, -1, [f"cap:user={u}"], user_label, [user_label]])
    return caps
