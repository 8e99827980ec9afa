"""Limit-increase requests: a blocked user asks for more, an admin approves or denies.

Storage: one hash per organization, ``Keys.limit_requests(org)`` (``tw:{org}:lir``), with
field ``u:<user>`` holding the user's latest request as JSON. ``limit_request.lua`` files
and decides atomically, so that:

- a user has at most one pending request: filing while one is pending is refused
  (`RequestPending`, carrying the pending request) and changes nothing;
- only a pending request can be decided (`NoPendingRequest` otherwise), once: two admins
  approving at the same moment cannot both apply their overrides;
- an approval writes its overrides (``cap:user=U``; for a tier move also
  ``included:user=U`` and ``seat:user=U``) in the same step as the decision, so the very
  next request of the user is admitted under them.

Only the latest request of each user is kept; a decided request stays readable (status,
note, decision) until the user files a new one. Times are ms since the epoch from the
injected clock. This module stores; `tollway.limits.spend.Spend` validates names and amounts.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from tollway.limits.errors import LimitsError
from tollway.limits.store import Store, load_script

PENDING, APPROVED, DENIED = "pending", "approved", "denied"
MAX_REASON = 1000  # characters

_source = functools.cache(lambda: load_script("limit_request"))


class SpendError(LimitsError):
    """A spend, cap or limit-request operation was refused; nothing changed."""


class UnknownName(SpendError):
    """An organization, user, seat tier, workspace or cap level the config does not have."""


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


class LimitRequests:
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
