"""Limit-increase requests: a blocked user asks for more, an admin approves or denies.

`LimitIncreases` is the workflow (on top of `tollway.limits.spend.Spend`, which knows the
organization's config, overrides and month to date): it validates names, reasons and
amounts, files, lists the pending requests with each user's month so far, and decides.
`RequestStore` keeps the records.

Storage: one hash per organization, ``Keys.limit_requests(org)`` (``tw:{org}:lir``), with
field ``u:<user>`` holding the user's latest request as JSON. ``limit_request.lua`` files
and decides atomically, so that:

- a user has at most one pending request: filing while one is pending is refused
  (`RequestPending`, carrying the pending request) and changes nothing;
- only a pending request can be decided (`NoPendingRequest` otherwise), once: two admins
  approving at the same moment cannot both apply their overrides;
- an approval writes its overrides (``cap:user=U`` and ``extra:user=U``; for a tier move
  ``cap:user=U``, ``included:user=U`` and ``seat:user=U``) in the same step as the
  decision, so the very next request of the user is admitted under them.

Only the latest request of each user is kept; a decided request stays readable (status,
note, decision) until the user files a new one. Times are ms since the epoch from the
injected clock. Errors: `SpendError` and `UnknownName` (`tollway.limits.errors`) for bad
input, `RequestPending` and `NoPendingRequest` (here: they carry a request); nothing is
changed when one is raised.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
from tollway.config.schema import Organization
from tollway.limits import seats
from tollway.limits.errors import SpendError, UnknownName
from tollway.limits.rkeys import Fields, Scope
from tollway.limits.seats import UNLIMITED, UserStatus
from tollway.limits.spend import Spend
from tollway.limits.store import Store, load_script

PENDING, APPROVED, DENIED = "pending", "approved", "denied"
MAX_REASON = 1000  # characters

_source = functools.cache(lambda: load_script("limit_request"))


class RequestPending(SpendError):
    """The user already has a pending request (`request`)."""

    def __init__(self, request: LimitRequest) -> None:
        super().__init__(
            f"user {request.user!r} already has a pending limit-increase request "
            f"({request.id}); wait until an admin approves or denies it"
        )
        self.request = request


class NoPendingRequest(SpendError):
    """There is no pending request to decide (`latest` is the user's latest, or None)."""

    def __init__(self, org: str, user: str, latest: LimitRequest | None) -> None:
        what = "no request" if latest is None else f"its latest request is {latest.status}"
        super().__init__(f"user {user!r} of {org!r} has no pending limit-increase request ({what})")
        self.latest = latest


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """One request. `decision` holds what an approval applied: ``{"cap": micro-USD or
    "unlimited"}`` or ``{"tier": T, "included": micro-USD, "cap": micro-USD or
    "unlimited"}``; empty while pending and for a denial."""

    id: str
    org: str
    user: str
    reason: str
    status: str  # pending | approved | denied
    asked_ms: int
    key_id: str | None = None  # the key the user filed it with (None: filed by an admin tool)
    decided_ms: int | None = None
    note: str = ""
    decision: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str | bytes) -> LimitRequest:
        return cls(**orjson.loads(raw))


def new_request_id(now_ms: int) -> str:
    return f"lir_{now_ms:013d}_{secrets.token_hex(4)}"


class RequestStore:
    """Storage of the requests of every organization in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = store.keys

    async def _run(self, org: str, op: str, user: str, record: LimitRequest, *pairs: str) -> Any:
        keys = [self.keys.limit_requests(org), self.keys.overrides(org)]
        args = [op, user, orjson.dumps(record.to_dict()), *pairs]
        client = self.store.client
        return await self.store.call(
            "limit_request", client.eval, _source(), len(keys), *keys, *args
        )

    async def file(self, request: LimitRequest) -> LimitRequest:
        """Store a new pending request; `RequestPending` if one is pending already."""
        done, raw = await self._run(request.org, "file", request.user, request)
        if not int(done):
            raise RequestPending(LimitRequest.from_json(raw))
        return request

    async def decide(
        self, decided: LimitRequest, overrides: dict[str, str] | None = None
    ) -> LimitRequest:
        """Replace the user's pending request by `decided` and write `overrides` to the
        cfg hash, atomically; `NoPendingRequest` if nothing is pending."""
        pairs = [x for kv in (overrides or {}).items() for x in kv]
        done, raw = await self._run(decided.org, "decide", decided.user, decided, *pairs)
        if not int(done):
            latest = LimitRequest.from_json(raw) if raw else None
            raise NoPendingRequest(decided.org, decided.user, latest)
        return decided

    async def latest(self, org: str, user: str) -> LimitRequest | None:
        client = self.store.client
        raw = await self.store.call(
            "limit_request_get", client.hget, self.keys.limit_requests(org), f"u:{user}"
        )
        return LimitRequest.from_json(raw) if raw else None

    async def all(self, org: str) -> list[LimitRequest]:
        """Every user's latest request, oldest first."""
        client = self.store.client
        raw = await self.store.call(
            "limit_request_list", client.hgetall, self.keys.limit_requests(org)
        )
        out = [LimitRequest.from_json(v) for f, v in raw.items() if f.startswith("u:")]
        return sorted(out, key=lambda r: (r.asked_ms, r.id))

    async def claim_digest(self, org: str, day: str) -> bool:
        """Claim the right to post `day`'s digest of `org` (once across every replica)."""
        client = self.store.client
        got = await self.store.call(
            "limit_request_digest", client.hsetnx, self.keys.limit_requests(org), f"d:{day}", "1"
        )
        return bool(got)

    async def release_digest(self, org: str, day: str) -> None:
        """Give a claim back (the post failed): a later attempt may post that day's digest."""
        client = self.store.client
        await self.store.call(
            "limit_request_digest", client.hdel, self.keys.limit_requests(org), f"d:{day}"
        )


@dataclass(frozen=True, slots=True)
class PendingRequest:
    request: LimitRequest
    status: UserStatus

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "user": self.status.to_dict()}


class LimitIncreases:
    """The workflow of limit-increase requests of every organization, on `spend`'s store,
    clock and live config."""

    def __init__(self, spend: Spend) -> None:
        self.spend = spend
        self.clock = spend.clock
        self.requests = RequestStore(spend.store)

    def _user(self, org: str, user: str) -> Organization:
        org_cfg = self.spend.organization(org)
        if user not in org_cfg.users:
            raise UnknownName(f"unknown user {user!r} in {org!r}")
        return org_cfg

    async def file(
        self,
        org: str,
        user: str,
        reason: str = "",
        now: int | None = None,
        key_id: str | None = None,
    ) -> LimitRequest:
        """File a pending request for `user` (`RequestPending` if one is pending)."""
        self._user(org, user)
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise SpendError(f"the reason must be text of at most {MAX_REASON} characters")
        now = self.clock.now_ms() if now is None else now
        request = LimitRequest(
            id=new_request_id(now),
            org=org,
            user=user,
            reason=reason.strip(),
            status=PENDING,
            asked_ms=now,
            key_id=key_id,
        )
        return await self.requests.file(request)

    async def latest(self, org: str, user: str) -> LimitRequest | None:
        """The user's latest request, whatever its status (None: never filed one)."""
        return await self.requests.latest(org, user)

    async def pending(self, org: str) -> list[PendingRequest]:
        """Pending requests, oldest first, each with the user's seat, month-to-date spend
        and cap (users no longer in the config are skipped)."""
        org_cfg = self.spend.organization(org)
        ov = await self.spend.overrides(org)
        h = await self.spend.month_hash(org, self.spend.month_bounds()[0])
        return [
            PendingRequest(r, seats.user_status(org_cfg, org, r.user, ov, h))
            for r in await self.requests.all(org)
            if r.status == PENDING and r.user in org_cfg.users
        ]

    async def approve(
        self,
        org: str,
        user: str,
        new_cap: int | str | None = None,
        new_tier: str | None = None,
        note: str = "",
    ) -> LimitRequest:
        """Approve the user's pending request with exactly one of: `new_cap` (micro-USD or
        "unlimited": the user's cap override, and their extra usage enabled) or `new_tier`
        (a seat tier: the user gets its included usage and its cap in force now, as user
        overrides). The user's next request is admitted under them, unless an organization
        or workspace cap, or extra usage disabled for the whole organization, stops it."""
        org_cfg = self._user(org, user)
        if (new_cap is None) == (new_tier is None):
            raise SpendError("approve with exactly one of a new cap or a new tier")
        if new_cap is not None:
            decision: dict[str, Any] = {"cap": seats.override_amount(new_cap)}
            # Raising the cap of a user stopped at their included usage must let them
            # continue: their extra usage is enabled (an organization switch-off still wins).
            scope = Scope.user(user)
            writes = {Fields.cap(scope): decision["cap"], Fields.extra(scope): "1"}
        else:
            decision, writes = await self._tier_move(org_cfg, org, user, new_tier)
        if decision["cap"] != UNLIMITED:
            decision["cap"] = int(decision["cap"])
        return await self._decide(org, user, APPROVED, note, decision, writes)

    async def _tier_move(
        self, org_cfg: Organization, org: str, user: str, tier: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        if tier is None or tier not in org_cfg.seat_tiers:
            names = ", ".join(sorted(org_cfg.seat_tiers)) or "none defined"
            raise UnknownName(f"unknown seat tier {tier!r} in {org!r} (known: {names})")
        if org_cfg.users[user].seat is None:
            raise SpendError(
                f"user {user!r} has no seat in the config: approve with a new cap instead"
            )
        tier_cfg = org_cfg.seat_tiers[tier]
        ov = await self.spend.overrides(org)
        cap = ov.get(Fields.cap(Scope.tier(str(tier))))
        if cap is None:
            cap = UNLIMITED if tier_cfg.monthly_cap is None else str(tier_cfg.monthly_cap)
        decision = {"tier": tier, "included": tier_cfg.included, "cap": cap}
        writes = {
            Fields.included(user): str(tier_cfg.included),
            Fields.cap(Scope.user(user)): cap,
            Fields.seat(user): str(tier),
        }
        return decision, writes

    async def deny(self, org: str, user: str, note: str = "") -> LimitRequest:
        """Deny the user's pending request; nothing else changes."""
        self.spend.organization(org)
        return await self._decide(org, user, DENIED, note, {}, {})

    async def _decide(
        self,
        org: str,
        user: str,
        status: str,
        note: str,
        decision: dict[str, Any],
        writes: dict[str, str],
    ) -> LimitRequest:
        latest = await self.requests.latest(org, user)
        if latest is None or latest.status != PENDING:
            raise NoPendingRequest(org, user, latest)
        decided = replace(
            latest, status=status, decided_ms=self.clock.now_ms(), note=note, decision=decision
        )
        return await self.requests.decide(decided, writes)
