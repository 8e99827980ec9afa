"""What admission and settlement answer (`Decision`, `Settlement`) and what settlement
takes (`Charge`): plain data that `proxy/` turns into HTTP.

`Refusal` names every reason admit.lua can refuse for; the script returns these exact
strings, `Meter.admit` parses them, providers.py maps them to errors and the metrics use
them as label values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from tollway.limits.plans import BucketSpec, Principal
from tollway.limits.usage import Usage


class Refusal(StrEnum):
    KEY = "key"  # the key is revoked
    LATE = "late"  # release.lua ran first: Tollway answered without this admission
    RATE = "rate"  # a token or request bucket is empty
    IN_FLIGHT = "in_flight"  # a max_in_flight ceiling reached
    INCLUDED = "included"  # included usage used up and extra usage off
    CAP = "cap"  # a monthly spend cap reached (settled + held)
    CREDIT = "credit"  # prepaid credit balance used up (settled + held)


class BucketState(NamedTuple):
    """One bucket after an admission (one per bucket of the plan, on every request: a
    tuple builds several times faster than a frozen dataclass)."""

    spec: BucketSpec
    remaining: int  # whole tokens or requests left
    reset_ms: int  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: Refusal | None = None
    detail: str = ""  # the limit or cap that refused, in words
    retry_after_ms: int | None = None  # rate limits: when to retry; None: never by waiting
    resets_at_ms: int | None = None  # caps and included usage: start of next period
    amount: int | None = None  # micro-USD: the cap reached, or the seat's included usage
    buckets: tuple[BucketState, ...] = ()


@dataclass(frozen=True, slots=True)
class Charge:
    """One finished request, as `Meter.settle` takes it (and the journal keeps it)."""

    principal: Principal
    rid: str
    model: str | None
    usage: Usage
    cost: int  # micro-USD, priced when the request ended
    ok: bool  # False: a failure, charged nothing; its reservation is given back
    session: str | None = None
    upstream_ms: int = 0
    # When the request ended (None: the meter's clock). A journal replay passes the
    # request's own time, so it lands in its own day and month.
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    cost: int
    included: int
    extra: int
    available: int  # credit balance less debt and holds, after this request
    auto_reload: int  # micro-USD an auto-reload should buy now (0: none)
    duplicate: bool  # this request id had been settled already: nothing changed
    overshoot: int = 0  # micro-USD of this request's extra spend past a cap (the largest)
