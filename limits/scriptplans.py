"""What admit.lua and settle.lua receive: their KEYS by name and their plans as typed
records, serialized in one function (`encode`).

The scripts read a plan's entries by these field names (``plan.money.caps[i].spent``);
adding a rule is a field here and a line in the script that reads it. The parts of a plan
that depend only on (config, principal, model) are built once per pair (`static_parts`):
they were ~10% of the CPU of a request in the benchmark's profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from tollway.config.schema import Config, Organization
from tollway.limits import capplans, plans
from tollway.limits.capplans import CapPlan
from tollway.limits.plans import BucketPlan, BucketSpec, ExtraPlan, Principal, SeatPlan
from tollway.limits.rkeys import Fields, Keys, Scope
from tollway.limits.usage import Usage
from tollway.limits.windows import Windows

KEEP_MS = 400 * 86_400_000  # month counters are kept ~13 months

# The scripts' fixed KEYS, in order; the buckets of the plan follow them.
ADMIT_KEYS = (
    "hold",
    "holds",
    "account",
    "lots",
    "lotexp",
    "ledger",
    "month",
    "overrides",
    "apikey",
    "pday",
    "pweek",
    "held",
    "learned",
    "session",
)
SETTLE_KEYS = (
    "hold",
    "holds",
    "account",
    "lots",
    "lotexp",
    "ledger",
    "month",
    "settled",
    "overrides",
    "pday",
    "pweek",
    "held",
    "learned",
    "outputs",
    "session",
)
LEARN_WINDOW = 100  # output counts kept per model; input sums are halved at this count
LEARN_QUANTILE = 0.95  # of the latest outputs: the expected output of a request
LEARN_EVERY = 10  # the percentile is recomputed on the first output and every 10 after it
LEARN_MIN_ESTIMATE = 16  # input estimates below this teach nothing (their ratio is noise)


@dataclass(frozen=True, slots=True)
class MoneyPlan:
    """The money checks of admit.lua (absent for an unmetered request)."""

    prepaid: bool
    seat: SeatPlan | None
    extra: ExtraPlan
    caps: tuple[CapPlan, ...]
    budgets: tuple[CapPlan, ...] = ()  # checked whether the spend is included or not


@dataclass(frozen=True, slots=True)
class LearnPlan:
    """Fields of the learned hash for one model (rkeys.Fields.learned) and how settle.lua
    learns: the `quantile` of the latest `window` outputs, recomputed every `every`
    outputs (`out_n` counts them); input sums halved every `window` requests; estimates
    below `min_estimate` tokens skipped."""

    out: str
    out_n: str
    in_real: str
    in_est: str
    in_n: str
    window: int = LEARN_WINDOW
    quantile: float = LEARN_QUANTILE
    every: int = LEARN_EVERY
    min_estimate: int = LEARN_MIN_ESTIMATE

    @classmethod
    def of(cls, model: str) -> LearnPlan:
        f = Fields.learned
        return cls(
            out=f("out", model),
            out_n=f("out_n", model),
            in_real=f("in_real", model),
            in_est=f("in_est", model),
            in_n=f("in_n", model),
        )


@dataclass(frozen=True, slots=True)
class ExpectPlan:
    """How admit.lua makes a request's expected cost: input cost corrected by the learned
    ratio, plus min(declared maximum, learned output or `default_output`) output tokens
    at `output_price` (micro-USD per million)."""

    output_price: int
    max_output: int  # -1: none declared
    default_output: int
    learned: LearnPlan


@dataclass(frozen=True, slots=True)
class FlightPlan:
    """A max_in_flight ceiling: at most `max` requests counted at `field` of the held hash."""

    field: str
    max: int


@dataclass(frozen=True, slots=True)
class AdmitPlan:
    hold_ttl_ms: int
    hold_prefix: str
    lot_prefix: str
    buckets: tuple[BucketPlan, ...]
    flights: tuple[FlightPlan, ...] = ()
    est_tokens: int = 0
    cost: int = 0  # estimated input cost (micro-USD)
    money: MoneyPlan | None = None
    expect: ExpectPlan | None = None  # None: hold `cost` as it is
    session_budget: SessionBudget | None = None


@dataclass(frozen=True, slots=True)
class SessionBudget:
    """A cap on what one session id spends: the session hash's `cost` (settled) plus what
    its requests in flight hold at `held` (held hash), named `label`."""

    cap: int
    label: str
    held: str


@dataclass(frozen=True, slots=True)
class MonthFields:
    """The month hash fields of one scope: all spend, and the part past included usage."""

    spend: str
    extra: str


@dataclass(frozen=True, slots=True)
class WindowField:
    """A field of the day and week hashes that settle.lua adds to: the request's whole
    cost, or with `extra` only its part past the included usage."""

    field: str
    extra: bool


def window_fields(
    month_fields: tuple[MonthFields, ...], key_scope: str, caps: tuple[CapPlan, ...]
) -> tuple[WindowField, ...]:
    """The day and week hash fields a settlement adds to: what daily and weekly caps and
    budgets read, and nothing else (nothing reads those hashes' other fields): the part
    past the included usage of every scope that can carry a cap (organization,
    workspace, user, model; caps read it, run-time ones included), the key's whole spend
    (a key's budget reads it), and the field of any other day or week cap of the plan.
    The month hash keeps every field: reports read it."""
    key_extra = Fields.extra(key_scope)  # no cap reads it: a key's budget reads its spend
    out = [WindowField(f.extra, True) for f in month_fields if f.extra != key_extra]
    out.append(WindowField(Fields.spend(key_scope), False))
    for c in caps:
        if c.period != "month" and all(w.field != c.spent for w in out):
            out.append(WindowField(c.spent, Fields.split(c.spent)[0] == "extra"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AutoReloadPlan:
    threshold: int
    target: int


@dataclass(frozen=True, slots=True)
class AutoReloadFields:
    off: str = Fields.AUTO_RELOAD_OFF
    threshold: str = Fields.AUTO_RELOAD_THRESHOLD
    target: str = Fields.AUTO_RELOAD_TARGET


@dataclass(frozen=True, slots=True)
class SettleStatic:
    """The settle plan's entries that do not depend on the request."""

    prepaid: bool
    seat: SeatPlan | None
    month_fields: tuple[MonthFields, ...]
    window_fields: tuple[WindowField, ...]  # of the day and week hashes
    buckets: tuple[BucketPlan, ...]
    hold_prefix: str
    lot_prefix: str
    keep_ms: int
    dedup_ms: int
    # Wire names settle.lua reads (plan.reload, plan.reload_fields): the credit auto-reload.
    reload: AutoReloadPlan | None
    reload_fields: AutoReloadFields
    ledger_fields: tuple[str, ...]
    caps: tuple[CapPlan, ...]
    learn: LearnPlan | None


@dataclass(frozen=True, slots=True)
class SettlePlan:
    """One settlement: what happened (`ok`, `usage`, `cost`) and the static entries."""

    static: SettleStatic
    ok: bool
    usage: Usage
    tpm_input: int
    cost: int
    session: bool
    session_id: str
    upstream_ms: int
    day: str  # YYYY-MM-DD in the server's time zone: the ledger event's day, for reports


def encode(plan: AdmitPlan | SettlePlan) -> bytes:
    """The JSON a script receives as ARGV[3]: the records' fields by name (nested records
    as objects, tuples as arrays, None as null); a SettlePlan's static entries are merged
    into the top level."""
    if isinstance(plan, SettlePlan):
        request = {
            "ok": plan.ok,
            "usage": plan.usage,
            "tpm_input": plan.tpm_input,
            "cost": plan.cost,
            "session": plan.session,
            "session_id": plan.session_id,
            "upstream_ms": plan.upstream_ms,
            "day": plan.day,
        }
        # Two JSON objects joined into one: "{request..." + "," + "...static}".
        return orjson.dumps(request)[:-1] + b"," + orjson.dumps(plan.static)[1:]
    return orjson.dumps(plan)


@dataclass(frozen=True, slots=True)
class StaticParts:
    """The parts of both plans that depend only on (config, principal, model)."""

    specs: tuple[BucketSpec, ...]
    bucket_keys: tuple[str, ...]
    admit: AdmitPlan  # est_tokens, cost, money and expect left to the request
    money: MoneyPlan | None  # None: the organization is gone from the config
    settle: SettleStatic
    learn: LearnPlan | None  # None: no model
    default_output: int


def static_parts(cfg: Config, k: Keys, principal: Principal, model: str | None) -> StaticParts:
    org = principal.org
    org_cfg = cfg.organizations.get(org)
    ws = ""
    money: MoneyPlan | None = None
    reload: AutoReloadPlan | None = None
    if org_cfg is None:  # gone from the config: settle what was admitted, nothing else
        specs: list[BucketSpec] = []
        scopes, seat, prepaid = [Scope.ORG], None, False
    else:
        specs = plans.bucket_specs(org_cfg, principal, model)
        scopes = plans.scopes(org_cfg, principal)
        seat = plans.seat_plan(org_cfg, principal)
        ws = plans.user_workspace(org_cfg, principal) or ""
        billing = org_cfg.billing
        prepaid = billing.mode == "prepaid"
        money = MoneyPlan(
            prepaid=prepaid,
            seat=seat,
            extra=plans.extra_plan(org_cfg, principal),
            caps=(
                *capplans.cap_plans(org_cfg, principal),
                *capplans.model_cap_plans(org_cfg, model),
            ),
            budgets=tuple(capplans.budget_plans(principal)),
        )
        if billing.auto_reload is not None:
            reload = AutoReloadPlan(billing.auto_reload.threshold, billing.auto_reload.target)
    model_scopes = [] if org_cfg is None else capplans.model_cap_scopes(org_cfg, model)
    buckets = tuple(s.plan() for s in specs)
    flights = () if org_cfg is None else tuple(flight_plans(org_cfg, principal, model))
    learn = LearnPlan.of(model) if model else None
    hp, lp = k.hold_prefix(org), k.lot_prefix(org)
    ledger_fields: tuple[str, ...] = ("model", model or "", "key", principal.key_id)
    ledger_fields += ("user", principal.user or "", "ws", ws)
    month_fields = tuple(
        MonthFields(Fields.spend(s), Fields.extra(s)) for s in (*scopes, *model_scopes)
    )
    all_caps = (*money.caps, *money.budgets) if money is not None else ()
    return StaticParts(
        specs=tuple(specs),
        bucket_keys=tuple(k.bucket(org, s.scope, s.limit) for s in specs),
        admit=AdmitPlan(cfg.store.hold_ttl_seconds * 1000, hp, lp, buckets, flights),
        money=money,
        settle=SettleStatic(
            prepaid=prepaid,
            seat=seat,
            month_fields=month_fields,
            window_fields=window_fields(month_fields, Scope.key(principal.key_id), all_caps),
            buckets=buckets,
            hold_prefix=hp,
            lot_prefix=lp,
            keep_ms=KEEP_MS,
            dedup_ms=cfg.store.settled_ttl_seconds * 1000,
            reload=reload,
            reload_fields=AutoReloadFields(),
            ledger_fields=ledger_fields,
            caps=money.caps if money is not None else (),
            learn=learn,
        ),
        learn=learn,
        default_output=cfg.metering.default_output_tokens,
    )


def flight_plans(
    org_cfg: Organization, principal: Principal, model: str | None
) -> list[FlightPlan]:
    """The max_in_flight ceilings that apply: organization, model, workspace, user, key."""
    out = []
    for scope, limits in plans.limit_scopes(org_cfg, principal, model):
        ceiling = getattr(limits, "max_in_flight", None)
        if ceiling is not None:
            out.append(FlightPlan(Fields.in_flight(scope), ceiling))
    return out


def admit_keys(
    k: Keys, org: str, rid: str, month: str, key_id: str, win: Windows, session: str = "-"
) -> list[str]:
    """admit.lua's fixed KEYS, in the order of ADMIT_KEYS."""
    return [
        k.hold(org, rid),
        k.holds(org),
        k.account(org),
        k.lots(org),
        k.lot_expiries(org),
        k.ledger(org),
        k.month(org, month),
        k.overrides(org),
        k.api_key(org, key_id),
        k.period(org, win.day),
        k.period(org, win.week),
        k.held(org),
        k.learned(org),
        k.session(org, session),
    ]


def settle_keys(
    k: Keys,
    org: str,
    rid: str,
    month: str,
    win: Windows,
    model: str | None,
    session: str = "-",
) -> list[str]:
    """settle.lua's fixed KEYS, in the order of SETTLE_KEYS."""
    return [
        k.hold(org, rid),
        k.holds(org),
        k.account(org),
        k.lots(org),
        k.lot_expiries(org),
        k.ledger(org),
        k.month(org, month),
        k.settled(org, rid),
        k.overrides(org),
        k.period(org, win.day),
        k.period(org, win.week),
        k.held(org),
        k.learned(org),
        k.outputs(org, model or "-"),
        k.session(org, session),
    ]
