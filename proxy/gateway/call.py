"""What is known about one request: the `Call` record the pipeline fills in step by step
(identify → read → admit → forward) and settlement reads, the request id it is born with,
and `Reject`, how any step answers the client before anything was forwarded.

Every request gets its id here and nowhere else (`new_request_id`): it names the request
in logs, in error bodies, in the ``x-request-id`` (``request-id`` on Anthropic routes)
header, in ledger events and in the settled-marker that makes settlement exactly-once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from tollway.config.pricing import PriceInForce
from tollway.limits.plans import Principal
from tollway.proxy.gateway.providers import Problem


def new_request_id() -> str:
    """A fresh request id: ``req_`` and 96 random bits in hex."""
    return "req_" + secrets.token_hex(12)


class Reject(Exception):
    """Answer the client with a problem, before anything was forwarded (or, for a 502,
    instead of an answer that cannot be relayed). `headers` are added to the error."""

    def __init__(self, problem: Problem, headers: dict[str, str] | None = None) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.headers = headers or {}


@dataclass(slots=True)
class Call:
    """One request as it moves through the pipeline. Fields after `started` are unknown
    (their defaults) until the step that learns them: `principal` after identification,
    `model`, `price`, `est`, `strip` and `session` after the body is read, `headers` after
    admission, `upstream_ms` after the answer was relayed."""

    route: str
    provider: str
    metered: bool
    rid: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    outcome: str = "ok"  # the `tollway_requests_total` outcome label
    principal: Principal | None = None
    secret: str | None = None  # the client's key, to forget it when found revoked
    model: str | None = None
    price: PriceInForce | None = (
        None  # the price book entry in force at admission (`PriceBook.find`)
    )
    est: int = 0  # estimated input tokens, reserved at admission
    strip: bool = False  # the usage chunk was asked on the client's behalf: hide it
    session: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers to answer
    upstream_ms: int = 0

    @property
    def org(self) -> str:
        """The caller's organization, "-" until it is identified."""
        return self.principal.org if self.principal is not None else "-"
