"""Admission and settlement: one script call each.

`Meter.admit` answers a `Decision`; `Meter.settle` answers a `Settlement`. Both are plain
data; `proxy/` turns them into HTTP. The config is read through a getter on every call, so
a live reload applies to the very next request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from tollway.limits import plans
from tollway.limits.clock import Clock
from tollway.limits.plans import BucketSpec, Principal
from tollway.limits.store import Store
from tollway.limits.usage import Usage

KEEP_MS = 400 * 86_400_000  # month counters are kept ~13 months
STATIC_CACHE_SIZE = 10_000  # (principal, model) pairs whose plan parts are kept


@dataclass(frozen=True, slots=True)
class BucketState:
    spec: BucketSpec
    remaining: int  # whole tokens or requests left
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: str | None = None  # key | rate | included | cap | credit
    detail: str = ""  # the limit or cap that refused, in words
    retry_after_ms: int | None = None  # rate limits: when to retry; None: never by waiting
    resets_at_ms: int | None = None  # caps and included usage: start of next period
    amount: int | None = None  # micro-USD: the cap reached, or the seat's included usage
    buckets: tuple[BucketState, ...] = ()


@dataclass(frozen=True, slots=True)
class Settlement:
    cost: int
    included: int
    extra: int
    available: int  # credit balance less debt and holds, after this request
    reload: int  # micro-USD an auto-reload should buy now (0: none)
    duplicate: bool  # this request id had been settled already: nothing changed


def periods(now_ms: int, tz: ZoneInfo) -> tuple[str, str, int]:
    """(month "YYYY-MM", day "YYYY-MM-DD", start of next month in ms) in zone `tz`."""
    now = datetime.fromtimestamp(now_ms / 1000, tz)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    next_month = datetime(year, month, 1, tzinfo=tz)
    return now.strftime("%Y-%m"), now.strftime("%Y-%m-%d"), int(next_month.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class _Static:
    """The parts of the admit and settle plans that depend only on (config, principal,
    model): built once per pair and config, not per request (they were ~10% of the CPU
    of a request in the benchmark's profile)."""

    specs: tuple[BucketSpec, ...]
    bucket_keys: list[str]
    admit: dict[str, Any]  # admit.lua plan fields, less est
    money: dict[str, Any]  # admit.lua plan.m, less cost
    settle: dict[str, Any]  # settle.lua plan fields that do not depend on the request


def _static(cfg: Any, k: Any, principal: Principal, model: str | None) -> _Static:
    org = principal.org
    org_cfg = cfg.organizations.get(org)
    if org_cfg is None:  # gone from the config: settle what was admitted, nothing else
        specs: list[BucketSpec] = []
        scopes, seat, billing, ws = ["org"], None, None, ""
        money: dict[str, Any] = {}
    else:
        specs = plans.bucket_specs(org_cfg, principal, model)
        scopes = plans.scopes(org_cfg, principal)
        seat = plans.seat_plan(org_cfg, principal)
        billing = org_cfg.billing
        ws = plans.user_workspace(org_cfg, principal) or ""
        money = {
            "prepaid": billing.mode == "prepaid",
            "seat": seat or False,
            "extra": plans.extra_plan(org_cfg, principal),
            "caps": plans.cap_plans(org_cfg, principal),
        }
    b = [s.script_args() for s in specs]
    reload = None
    if billing is not None and billing.auto_reload is not None:
        reload = {"threshold": billing.auto_reload.threshold, "target": billing.auto_reload.target}
    hp, lp = k.hold_prefix(org), k.lot_prefix(org)
    return _Static(
        specs=tuple(specs),
        bucket_keys=[k.bucket(org, s.scope, s.limit) for s in specs],
        admit={"ttl": cfg.store.hold_ttl_seconds * 1000, "hp": hp, "lp": lp, "b": b},
        money=money,
        settle={
            "prepaid": billing is not None and billing.mode == "prepaid",
            "seat": seat or False,
            "scopes": scopes,
            "b": b,
            "hp": hp,
            "lp": lp,
            "keep": KEEP_MS,
            "dedup": cfg.store.settled_ttl_seconds * 1000,
            "reload": reload or False,
            "ev": [
                "model",
                model or "",
                "key",
                principal.key_id,
                "user",
                principal.user or "",
                "ws",
                ws,
            ],
        },
    )


class Meter:
    def __init__(self, store: Store, clock: Clock, config: Callable[[], Any]) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock
        self.config = config
        self._zones: dict[str, ZoneInfo] = {}
        self._labels: dict[tuple[str, int, int, int], tuple[str, str, int]] = {}
        self._cfg: Any = None
        self._statics: dict[tuple[Principal, str | None], _Static] = {}

    def _zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    def _periods(self, now_ms: int, zone_name: str) -> tuple[str, str, int]:
        """`periods`, memoized on the local date (what its result depends on)."""
        tz = self._zone(zone_name)
        local = datetime.fromtimestamp(now_ms / 1000, tz)
        key = (zone_name, local.year, local.month, local.day)
        hit = self._labels.get(key)
        if hit is None:
            if len(self._labels) > 1000:
                self._labels.clear()
            hit = self._labels[key] = periods(now_ms, tz)
        return hit

    def _plan_parts(self, cfg: Any, principal: Principal, model: str | None) -> _Static:
        """The cached `_Static` of (principal, model) under `cfg`; a new config (a reload)
        empties the cache, so it always matches the config in force."""
        if cfg is not self._cfg:
            self._statics.clear()
            self._cfg = cfg
        key = (principal, model)
        parts = self._statics.get(key)
        if parts is None:
            if len(self._statics) >= STATIC_CACHE_SIZE:
                self._statics.clear()
            parts = self._statics[key] = _static(cfg, self.keys, principal, model)
        return parts

    def _common_keys(self, org: str, rid: str, month: str) -> list[str]:
        k = self.keys
        return [
            k.hold(org, rid),
            k.holds(org),
            k.account(org),
            k.lots(org),
            k.lot_expiries(org),
            k.ledger(org),
            k.month(org, month),
        ]

    async def admit(
        self,
        principal: Principal,
        rid: str,
        model: str | None,
        est_tokens: int,
        est_cost: int | None,
    ) -> Decision:
        """Check every limit and take the request's share, or refuse and take nothing.

        `est_cost` None means an unmetered request: no money checks."""
        cfg = self.config()
        cfg.organizations[principal.org]  # KeyError for an organization not in the config
        now = self.clock.now_ms()
        month, _, next_month = self._periods(now, cfg.server.timezone)
        parts = self._plan_parts(cfg, principal, model)
        specs = parts.specs
        k = self.keys
        org = principal.org
        plan: dict[str, Any] = {**parts.admit, "est": est_tokens}
        if est_cost is not None:
            plan["m"] = {**parts.money, "cost": est_cost}
        keys = self._common_keys(org, rid, month)
        keys += [k.overrides(org), k.api_key(org, principal.key_id)]
        keys += parts.bucket_keys
        raw = await self.store.run("admit", keys, [now, rid, orjson.dumps(plan)])
        admitted, reason, detail, retry = int(raw[0]), raw[1], raw[2], int(raw[3])
        if reason == "key":
            return Decision(False, "key", "revoked key")
        if reason == "late":
            return Decision(False, "late", "released before it ran")
        states = tuple(
            BucketState(spec, int(raw[4 + 2 * i]), int(raw[5 + 2 * i]))
            for i, spec in enumerate(specs)
        )
        if admitted:
            return Decision(True, buckets=states)
        if reason == "rate":
            spec = specs[int(detail) - 1]
            return Decision(
                False,
                "rate",
                spec.describe(org),
                retry_after_ms=retry if retry >= 0 else None,
                buckets=states,
            )
        if reason == "cap":
            label, _, cap = detail.rpartition("|")
            return Decision(
                False, reason, label, resets_at_ms=next_month, amount=int(cap), buckets=states
            )
        if reason == "included":
            return Decision(
                False, reason, "", resets_at_ms=next_month, amount=int(detail), buckets=states
            )
        return Decision(False, reason, detail, buckets=states)

    async def release(self, principal: Principal, rid: str) -> bool:
        """Give back the admission of `rid`, which nobody waits for any more (its admit
        timed out), and make an admission of it that runs later take nothing. True when
        there was one to give back. Safe before or after the request's settlement."""
        cfg = self.config()
        k, org = self.keys, principal.org
        keys = [k.hold(org, rid), k.holds(org), k.account(org)]
        ttl = cfg.store.hold_ttl_seconds * 1000
        return bool(await self.store.run("release", keys, [self.clock.now_ms(), rid, ttl]))

    async def settle(
        self,
        principal: Principal,
        rid: str,
        model: str | None,
        usage: Usage,
        cost: int,
        ok: bool,
        session_id: str | None = None,
        upstream_ms: int = 0,
        now_ms: int | None = None,
    ) -> Settlement:
        """Replace the reservation by actual usage; exactly once per request id.

        A failed request (ok False) is charged nothing and gives its reservation back.
        `now_ms` (default: the clock) is when the request ended: a journal replay passes
        it so the settlement lands in the request's own day and month."""
        cfg = self.config()
        org = principal.org
        now = self.clock.now_ms() if now_ms is None else now_ms
        month, day, _ = self._periods(now, cfg.server.timezone)
        parts = self._plan_parts(cfg, principal, model)
        k = self.keys
        plan: dict[str, Any] = {
            **parts.settle,
            "ok": ok,
            "u": [
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_write_tokens,
                usage.cache_read_tokens,
            ],
            "tin": usage.tpm_input(cfg.metering.count_cache_reads_in_tpm),
            "cost": cost,
            "day": day,
            "sid": session_id or False,
            "up": upstream_ms,
        }
        keys = self._common_keys(org, rid, month)
        keys += [k.settled(org, rid), k.overrides(org)]
        keys += parts.bucket_keys
        raw = await self.store.run("settle", keys, [now, rid, orjson.dumps(plan)])
        r = orjson.loads(raw)
        return Settlement(
            cost=int(r["cost"]),
            included=int(r["included"]),
            extra=int(r["extra"]),
            available=int(r["available"]),
            reload=int(r["reload"]),
            duplicate=bool(r["duplicate"]),
        )
