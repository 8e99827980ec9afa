"""A user's effective seat, included usage, cap and extra usage, from the config and the
run-time overrides of the organization's ``cfg`` hash, with the scripts' precedence.

Pure functions: admit.lua decides; these only describe what it will decide from, for
admins and users to see. The precedence is not restated here: the override fields and
their order come from `tollway.limits.capplans` (``user_cap_plan``) and
`tollway.limits.plans` (``extra_plan``), the same plans the
scripts receive, so the two cannot drift apart. Money is integer micro-USD; an unlimited
cap is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tollway.config.schema import Organization
from tollway.limits import capplans, plans
from tollway.limits.errors import SpendError
from tollway.limits.plans import Principal
from tollway.limits.rkeys import Fields, Scope

UNLIMITED = "unlimited"
MAX_AMOUNT = 10**15  # every sum stays exact in a Lua double


@dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's month so far and the limits that apply to them now."""

    user: str
    seat: str | None  # effective tier (a tier move's seat:user=U, else the YAML)
    workspace: str | None
    included: int  # included usage per month (effective)
    spend: int  # month to date
    extra: int  # month to date, the part past the included usage
    cap: int | None  # the user's own effective cap; None: unlimited
    cap_source: str  # "user 'U'" or "seat tier 'T'" (as refusals name it)
    extra_usage: bool  # may go past the included usage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def override_amount(amount: int | str) -> str:
    """A cap as stored in the cfg hash: integer micro-USD as text, or "unlimited";
    `SpendError` for anything else (a float, a bool, a negative or absurd amount)."""
    if amount == UNLIMITED:
        return UNLIMITED
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise SpendError(f"a cap is an integer amount of micro-USD or 'unlimited', not {amount!r}")
    if not 0 <= amount <= MAX_AMOUNT:
        raise SpendError(f"a cap must be between 0 and {MAX_AMOUNT} micro-USD")
    return str(amount)


def cap_value(raw: str | None) -> int | None:
    """A stored cap → micro-USD, None for unlimited."""
    return None if raw is None or raw == UNLIMITED else int(raw)


def user_cap(
    org_cfg: Organization, org: str, user: str, ov: dict[str, str], period: str = "month"
) -> tuple[int | None, str]:
    """(the user's own effective cap of `period`, the label a refusal would name it by)."""
    plan = capplans.user_cap_plan(org_cfg, user, period)
    value, label = plan.source(ov)
    if value is not None:
        return cap_value(value), label
    return (None if plan.cap < 0 else plan.cap), label


def extra_enabled(org_cfg: Organization, org: str, user: str, ov: dict[str, str]) -> bool:
    """Whether the user may go past their included usage now."""
    plan = plans.extra_plan(org_cfg, Principal(org, "-", user=user))
    if ov.get(plan.off) == "0":
        return False
    value = next((ov[f] for f in plan.overrides if f in ov), None)
    return plan.on if value is None else value == "1"


def user_status(
    org_cfg: Organization, org: str, user: str, ov: dict[str, str], month: dict[str, int]
) -> UserStatus:
    """`user` (in the config) described from the overrides `ov` and the month hash."""
    u = org_cfg.users[user]
    included = org_cfg.user_included(user)
    if Fields.included(user) in ov and u.seat is not None:  # the scripts' seat plan
        included = int(ov[Fields.included(user)])
    cap, source = user_cap(org_cfg, org, user, ov)
    return UserStatus(
        user=user,
        seat=ov.get(Fields.seat(user), u.seat),
        workspace=u.workspace,
        included=included,
        spend=month.get(Fields.spend(Scope.user(user)), 0),
        extra=month.get(Fields.extra(Scope.user(user)), 0),
        cap=cap,
        cap_source=source,
        extra_usage=extra_enabled(org_cfg, org, user, ov),
    )
