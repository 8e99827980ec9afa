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

from limits import plans
from limits.clock import Clock
from limits.plans import BucketSpec, Principal
from limits.store import Store
from limits.usage import Usage

KEEP_MS = 400 * 86_400_000  # settled markers, month and day counters are kept ~13 months


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


class Meter:
    def __init__(self, store: Store, clock: Clock, config: Callable[[], Any]) -> None:
        self.store = store
        self.keys = store.keys
        self.clock = clock
        self.config = config
        self._zones: dict[str, ZoneInfo] = {}

    def _zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

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
        org_cfg = cfg.organizations[principal.org]
        now = self.clock.now_ms()
        month, _, next_month = periods(now, self._zone(cfg.server.timezone))
        specs = plans.bucket_specs(org_cfg, principal, model)
        k = self.keys
        org = principal.org
        plan: dict[str, Any] = {
            "ttl": cfg.store.hold_ttl_seconds * 1000,
            "hp": k.hold_prefix(org),
            "lp": k.lot_prefix(org),
            "est": est_tokens,
            "b": [s.script_args() for s in specs],
        }
        if est_cost is not None:
            seat = plans.seat_plan(org_cfg, principal)
            plan["m"] = {
                "cost": est_cost,
                "prepaid": org_cfg.billing.mode == "prepaid",
                "seat": seat or False,
                "extra": plans.extra_plan(org_cfg, principal),
                "caps": plans.cap_plans(org_cfg, principal),
            }
        keys = self._common_keys(org, rid, month)
        keys += [k.overrides(org), k.api_key(org, principal.key_id)]
        keys += [k.bucket(org, s.scope, s.limit) for s in specs]
        raw = await self.store.run("admit", keys, [now, rid, orjson.dumps(plan)])
        admitted, reason, detail, retry = int(raw[0]), raw[1], raw[2], int(raw[3])
        if reason == "key":
            return Decision(False, "key", "revoked key")
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
        if reason in ("cap", "included"):
            return Decision(False, reason, detail, resets_at_ms=next_month, buckets=states)
        return Decision(False, reason, detail, buckets=states)

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
        org_cfg = cfg.organizations.get(org)
        now = self.clock.now_ms() if now_ms is None else now_ms
        month, day, _ = periods(now, self._zone(cfg.server.timezone))
        specs = plans.bucket_specs(org_cfg, principal, model) if org_cfg is not None else []
        k = self.keys
        scopes = plans.scopes(org_cfg, principal) if org_cfg is not None else ["org"]
        reload = None
        billing = org_cfg.billing if org_cfg is not None else None
        if billing is not None and billing.auto_reload is not None:
            reload = {
                "threshold": billing.auto_reload.threshold,
                "target": billing.auto_reload.target,
            }
        plan: dict[str, Any] = {
            "ok": ok,
            "u": [
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_write_tokens,
                usage.cache_read_tokens,
            ],
            "tin": usage.tpm_input(cfg.metering.count_cache_reads_in_tpm),
            "cost": cost,
            "prepaid": billing is not None and billing.mode == "prepaid",
            "seat": (plans.seat_plan(org_cfg, principal) if org_cfg is not None else None) or False,
            "scopes": scopes,
            "dims": [*scopes, f"model={model or '-'}"],
            "sess": session_id is not None,
            "up": upstream_ms,
            "b": [s.script_args() for s in specs],
            "hp": k.hold_prefix(org),
            "lp": k.lot_prefix(org),
            "keep": KEEP_MS,
            "reload": reload or False,
            "ev": [
                "model",
                model or "",
                "key",
                principal.key_id,
                "user",
                principal.user or "",
                "ws",
                plans.user_workspace(org_cfg, principal) or "" if org_cfg else "",
            ],
        }
        keys = self._common_keys(org, rid, month)
        keys += [
            k.settled(org, rid),
            k.day(org, day),
            k.session(org, session_id or "-"),
            k.overrides(org),
        ]
        keys += [k.bucket(org, s.scope, s.limit) for s in specs]
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
