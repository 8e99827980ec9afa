"""The daily digest of pending limit-increase requests, posted to a webhook.

Configured by ``notifications.limit_requests_webhook`` (and ``digest_hour``, default 9,
in ``server.timezone``). Once a day, from that hour on, every organization that has
pending requests gets one JSON POST::

    {"text": "...", "type": "tollway.limit_requests.digest", "organization": "acme",
     "date": "2026-01-05", "pending": 2, "requests": [{"id", "user", "seat", "reason",
     "asked_at", "spend", "extra", "cap", "included"}, ...]}

(``text`` is a human summary, so Slack-style incoming webhooks show it as is; money in
the list is integer micro-USD, caps None when unlimited.) An organization with nothing
pending gets no post. Every replica runs the task; a per-organization, per-day claim in
the store (`RequestStore.claim_digest`) makes exactly one of them post. A post that
fails (network error or non-2xx) gives its claim back and is retried at the next check
(every `POLL_SECONDS`). The task starts with the app only when the webhook is configured;
a later config without it makes it idle (adding one later needs a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from tollway.config.reload import ConfigSource
from tollway.limits.clock import Clock
from tollway.limits.errors import LimitsError
from tollway.limits.increases import LimitIncreases, PendingRequest
from tollway.limits.money import format_usd
from tollway.proxy.gateway.providers import rfc3339

log = logging.getLogger("tollway.digest")

POLL_SECONDS = 60.0
POST_TIMEOUT = 10.0


def local_day(now_ms: int, timezone: str) -> tuple[str, int]:
    """(date "YYYY-MM-DD", hour) of `now_ms` in `timezone`."""
    t = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(timezone))
    return t.strftime("%Y-%m-%d"), t.hour


def _usd(micro: int | None) -> str:
    return "unlimited" if micro is None else "$" + format_usd(micro)


def build_digest(org: str, pending: Sequence[PendingRequest], day: str) -> dict[str, Any] | None:
    """The payload of `org`'s digest for `day` (None: nothing pending, nothing to post).
    Pure: the same inputs give the same payload."""
    if not pending:
        return None
    items = []
    lines = [f"Tollway: {len(pending)} pending limit-increase request(s) in {org} ({day})"]
    for p in pending:
        r, s = p.request, p.status
        items.append(
            {
                "id": r.id,
                "user": r.user,
                "seat": s.seat,
                "reason": r.reason,
                "asked_at": rfc3339(r.asked_ms),
                "spend": s.spend,
                "extra": s.extra,
                "included": s.included,
                "cap": s.cap,
            }
        )
        why = f': "{r.reason}"' if r.reason else ""
        lines.append(
            f"- {r.user} ({s.seat or 'no seat'}), asked {rfc3339(r.asked_ms)}: spent "
            f"{_usd(s.spend)} this month, {_usd(s.extra)} of extra usage, cap {_usd(s.cap)}"
            f"{why}"
        )
    lines.append(f"Decide with: tollway requests approve|deny --org {org} --user USER")
    return {
        "text": "\n".join(lines),
        "type": "tollway.limit_requests.digest",
        "organization": org,
        "date": day,
        "pending": len(items),
        "requests": items,
    }


class Digest:
    """Posts the day's digests; `run_once` is one check (the task calls it periodically)."""

    def __init__(
        self,
        holder: ConfigSource,
        increases: LimitIncreases,
        clock: Clock,
        client: aiohttp.ClientSession,
    ):
        self.holder = holder
        self.increases = increases
        self.clock = clock
        self.client = client

    async def run_once(self) -> list[str]:
        """Post every digest due now and not posted yet today: the organizations posted."""
        cfg = self.holder.current
        url, hour = cfg.notifications.limit_requests_webhook, cfg.notifications.digest_hour
        if url is None:
            return []
        day, now_hour = local_day(self.clock.now_ms(), cfg.server.timezone)
        if now_hour < hour:
            return []
        posted = []
        for org in sorted(cfg.organizations):
            pending = await self.increases.pending(org)
            payload = build_digest(org, pending, day)
            if payload is None or not await self.increases.requests.claim_digest(org, day):
                continue
            if await self._post(url, payload):
                posted.append(org)
            else:
                await self.increases.requests.release_digest(org, day)
        return posted

    async def _post(self, url: str, payload: dict[str, Any]) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
            async with self.client.post(url, json=payload, timeout=timeout) as resp:
                if 200 <= resp.status < 300:
                    return True
                log.warning("digest webhook answered %s", resp.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("digest webhook unreachable: %s", e)
        return False

    async def run(self, poll_seconds: float = POLL_SECONDS) -> None:
        """Check every `poll_seconds` (real time) until cancelled; never raises."""
        while True:
            try:
                await self.run_once()
            except LimitsError as e:  # the store is down: try again at the next check
                log.warning("digest skipped: %s", e)
            except Exception:
                log.exception("digest failed")
            await asyncio.sleep(poll_seconds)


def lifecycle(
    holder: ConfigSource,
    increases: LimitIncreases,
    clock: Clock,
    poll_seconds: float = POLL_SECONDS,
):
    """A cleanup context running the digest task for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as client:
            digest = Digest(holder, increases, clock, client)
            task = asyncio.create_task(digest.run(poll_seconds), name="tollway-digest")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
