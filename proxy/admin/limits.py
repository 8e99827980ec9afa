"""Admin route for the live limits of an organization: what the config sets, what the
run-time overrides change, and where every bucket stands now.

The answer gathers the configured buckets with their current levels (read-only, see
`tollway.limits.levels`), the raw run-time overrides, and, where they apply, the credit balance
(prepaid organizations) and the spend caps in force with month-to-date spend.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from tollway.limits import levels
from tollway.proxy.admin import credits as admin_credits
from tollway.proxy.admin import spend as admin_spend
from tollway.proxy.admin.context import INT, STR, answer, ctx, org, schema_object
from tollway.proxy.admin.openapi import Route

# Extra parts of the answer: async fn(context, org name, org config) -> dict merged in.
SECTIONS = [admin_credits.credit_section, admin_spend.caps_section]


async def live_limits(request: web.Request) -> web.Response:
    name, o = org(request)
    c = ctx(request)
    now = c.clock.now_ms()
    buckets = await levels.bucket_levels(c.store, name, o, now)
    out: dict[str, Any] = {
        "org": name,
        "now_ms": now,
        "rate_limits": [b.as_dict() for b in buckets],
        "overrides": await levels.overrides(c.store, name),
    }
    for section in SECTIONS:
        out.update(await section(c, name, o))
    return answer(out)


_BUCKET = schema_object(
    ("scope", "limit", "per_minute", "level", "remaining", "full_in_ms"),
    scope=STR,
    limit={"enum": ["rpm", "tpm", "input_tpm", "output_tpm"]},
    per_minute=STR,
    level=INT,
    remaining=INT,
    full_in_ms=INT,
)

ROUTES = [
    Route(
        "GET",
        "/orgs/{org}/limits",
        live_limits,
        "Live limits: every configured bucket with its level now, the run-time "
        "overrides, caps and credit.",
        "limits",
        schema_object(
            ("org", "now_ms", "rate_limits", "overrides"),
            org=STR,
            now_ms=INT,
            rate_limits={"type": "array", "items": _BUCKET},
            overrides={"type": "object", "additionalProperties": STR},
            credit={"type": "object"},
            caps={"type": "object"},
            month_to_date={"type": "object"},
        ),
    ),
]
