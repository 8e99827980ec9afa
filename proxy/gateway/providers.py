"""The two wire formats clients speak: how errors, rate-limit headers and upstream
authentication look in each. Pure functions of plain data; no I/O.

Errors are shaped so that the official SDKs raise their usual exception classes:
``openai.RateLimitError``, ``anthropic.AuthenticationError`` and so on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from tollway.limits.money import format_usd
from tollway.limits.outcomes import BucketState, Decision, Refusal

# What a refusal means, in each format: (status, openai type, openai code, anthropic type).
OPENAI = "openai"
ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class Problem:
    """An error to answer in the caller's format."""

    status: int
    kind: str  # key | rate | quota | cap | permission | bad_request | too_large | unavailable...
    message: str
    retry_after_s: int | None = None
    should_retry: bool | None = None


# kind → (openai type, openai code, anthropic type, anthropic status override)
_KINDS: dict[str, tuple[str, str | None, str, int | None]] = {
    "key": ("invalid_request_error", "invalid_api_key", "authentication_error", None),
    "rate": ("requests", "rate_limit_exceeded", "rate_limit_error", None),
    "rate_tokens": ("tokens", "rate_limit_exceeded", "rate_limit_error", None),
    "quota": ("insufficient_quota", "insufficient_quota", "invalid_request_error", 400),
    "cap": ("insufficient_quota", "insufficient_quota", "invalid_request_error", 400),
    "bad_request": ("invalid_request_error", None, "invalid_request_error", None),
    "permission": ("invalid_request_error", "model_not_allowed", "permission_error", None),
    "not_found": ("invalid_request_error", "unknown_url", "not_found_error", None),
    "method": ("invalid_request_error", "method_not_allowed", "invalid_request_error", None),
    "no_upstream": ("invalid_request_error", "no_upstream", "not_found_error", None),
    "encoding": ("invalid_request_error", "unsupported_encoding", "invalid_request_error", None),
    "too_large": ("invalid_request_error", "request_too_large", "request_too_large", None),
    "unavailable": ("server_error", "store_unavailable", "overloaded_error", 529),
    "upstream": ("server_error", "upstream_error", "api_error", None),
    "timeout": ("server_error", "upstream_timeout", "api_error", None),
    "client_timeout": ("invalid_request_error", "request_timeout", "invalid_request_error", None),
}


def error_body(provider: str, problem: Problem, request_id: str) -> tuple[int, bytes]:
    """(status, JSON body) of a problem in the provider's error format."""
    otype, code, atype, astatus = _KINDS[problem.kind]
    if provider == ANTHROPIC:
        body = {
            "type": "error",
            "error": {"type": atype, "message": problem.message},
            "request_id": request_id,
        }
        return astatus or problem.status, orjson.dumps(body)
    body = {"error": {"message": problem.message, "type": otype, "param": None, "code": code}}
    return problem.status, orjson.dumps(body)


def error_headers(provider: str, problem: Problem) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if problem.retry_after_s is not None:
        headers["retry-after"] = str(problem.retry_after_s)
    if problem.should_retry is not None:
        # Both official SDKs obey this header: no pointless retries of a quota error.
        headers["x-should-retry"] = "true" if problem.should_retry else "false"
    return headers


def upstream_auth(provider: str, api_key: str) -> dict[str, str]:
    if provider == ANTHROPIC:
        return {"x-api-key": api_key}
    return {"authorization": f"Bearer {api_key}"}


def request_id_header(provider: str) -> str:
    return "request-id" if provider == ANTHROPIC else "x-request-id"


def is_upstream_ratelimit_header(name: str) -> bool:
    """Headers describing the operator's own account, never passed to clients."""
    n = name.lower()
    return (
        n.startswith("x-ratelimit-")
        or n.startswith("anthropic-ratelimit-")
        or n.startswith("openai-organization")
        or n.startswith("openai-project")
        or n == "anthropic-organization-id"
    )


# --- rate-limit headers -------------------------------------------------------------------


def _binding(buckets: tuple[BucketState, ...], limits: tuple[str, ...]) -> BucketState | None:
    """The bucket of these limits with the least left: the one a client runs into first."""
    chosen = None
    for b in buckets:
        if b.spec.limit in limits and (chosen is None or b.remaining < chosen.remaining):
            chosen = b
    return chosen


def _limit_value(b: BucketState) -> str:
    v = b.spec.per_minute
    return str(int(v)) if int(v) == v else str(v)


def go_duration(ms: int) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s"


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Each header group and the bucket limits it reports (the binding one of them).
HeaderGroups = tuple[tuple[str, tuple[str, ...]], ...]
_ANTHROPIC_GROUPS: HeaderGroups = (
    ("requests", ("rpm",)),
    ("tokens", ("tpm",)),
    ("input-tokens", ("input_tpm",)),
    ("output-tokens", ("output_tpm",)),
)
_OPENAI_GROUPS: HeaderGroups = (("requests", ("rpm",)), ("tokens", ("tpm", "input_tpm")))


def ratelimit_headers(provider: str, decision: Decision, now_ms: int) -> dict[str, str]:
    """Tollway's own rate-limit headers for a metered response, in the caller's format."""
    headers: dict[str, str] = {}
    if provider == ANTHROPIC:
        for name, limits in _ANTHROPIC_GROUPS:
            b = _binding(decision.buckets, limits)
            if b is not None:
                headers[f"anthropic-ratelimit-{name}-limit"] = _limit_value(b)
                headers[f"anthropic-ratelimit-{name}-remaining"] = str(b.remaining)
                headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(now_ms + b.reset_ms)
        return headers
    for name, limits in _OPENAI_GROUPS:
        b = _binding(decision.buckets, limits)
        if b is not None:
            headers[f"x-ratelimit-limit-{name}"] = _limit_value(b)
            headers[f"x-ratelimit-remaining-{name}"] = str(b.remaining)
            headers[f"x-ratelimit-reset-{name}"] = go_duration(b.reset_ms)
    return headers


def refusal(provider: str, decision: Decision, now_ms: int, hint: str = "") -> Problem:
    """The problem to answer for a refused admission, in Tollway's words: what was
    reached, its amount and when it resets. `hint` is appended to money refusals: the
    next step in Tollway (ask the administrator, or file a limit-increase request). The
    error types and codes stay the providers', so the SDKs raise their usual exceptions."""
    reason = decision.reason
    if reason is Refusal.KEY:
        return Problem(401, "key", "Invalid API key: this key has been revoked.")
    if reason is Refusal.RATE:
        retry = decision.retry_after_ms
        seconds = math.ceil(retry / 1000) if retry is not None else 60
        kind = "rate" if decision.detail.startswith("rpm") else "rate_tokens"
        if retry is None:
            msg = f"Rate limit reached: {decision.detail} is 0, so no request can be served."
        else:
            msg = f"Rate limit reached for {decision.detail}. Please try again in {seconds}s."
        return Problem(429, kind, msg, retry_after_s=max(seconds, 1))
    if reason is Refusal.IN_FLIGHT:
        msg = f"Too many requests in flight: {decision.detail} reached. Please try again in 1s."
        return Problem(429, "rate", msg, retry_after_s=1)
    if reason is Refusal.CREDIT:
        msg = (
            "Your organization's credit balance is too low: its prepaid Tollway credit is used up."
        )
        return Problem(429, "quota", msg + hint, should_retry=False)
    resets = rfc3339(decision.resets_at_ms or now_ms)
    amount = "" if decision.amount is None else f" (${format_usd(decision.amount)})"
    if reason is Refusal.INCLUDED:
        msg = (
            f"You have used all the usage included in your seat for this month{amount} and "
            f"extra usage is not enabled. Your usage resets at {resets}."
        )
    elif decision.detail.startswith("session"):
        cap = "" if decision.amount is None else f" of ${format_usd(decision.amount)}"
        msg = (
            f"You have reached the {decision.detail}{cap}. It does not reset: start a new "
            "session or ask for a higher budget."
        )
    else:
        cap = "" if decision.amount is None else f" of ${format_usd(decision.amount)}"
        when = "this month"
        if "daily" in decision.detail:
            when = "today"
        elif "weekly" in decision.detail:
            when = "this week"
        what = decision.detail if "budget" in decision.detail else f"{decision.detail} spend cap"
        msg = f"You have reached the {what}{cap} for {when}. It resets at {resets}."
    return Problem(429, "cap", msg + hint, should_retry=False)
