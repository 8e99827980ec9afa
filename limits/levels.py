"""Live rate limits of an organization: every bucket its config defines, with its level now.

Read only: ``levels.lua`` refills each bucket up to ``now`` with the same ``bucket_level``
that admit and settle use, and writes nothing. A bucket nobody has used yet is full.

Levels are whole requests or tokens (``level`` may be negative after a request overshot
the bucket; ``remaining`` is never below zero, as in the rate-limit headers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tollway.config.schema import Organization
from tollway.limits.plans import BucketSpec, ScopeLimits, specs_of
from tollway.limits.store import Store, load_script

_source = functools.cache(lambda: load_script("levels"))


@dataclass(frozen=True, slots=True)
class BucketLevel:
    scope: str  # org | model=M | ws=W | user=U
    limit: str  # rpm | tpm | input_tpm | output_tpm
    per_minute: Decimal | int
    level: int  # whole requests/tokens, may be negative
    full_in_ms: int  # until the bucket is full again

    @property
    def remaining(self) -> int:
        return max(0, self.level)

    def as_dict(self) -> dict[str, Any]:
        per_minute = self.per_minute
        if isinstance(per_minute, Decimal):
            per_minute = int(per_minute) if per_minute == per_minute.to_integral() else per_minute
        return {
            "scope": self.scope,
            "limit": self.limit,
            "per_minute": str(per_minute),
            "level": self.level,
            "remaining": self.remaining,
            "full_in_ms": self.full_in_ms,
        }


def all_specs(org_cfg: Organization) -> list[BucketSpec]:
    """Every bucket the organization's config defines: organization, per model, per
    workspace and per user, in that order (keys have no limits of their own)."""
    scopes: list[tuple[str, ScopeLimits]] = [("org", org_cfg.limits)]
    scopes += [(f"model={m}", lim) for m, lim in sorted(org_cfg.model_limits.items())]
    scopes += [(f"ws={w}", ws.limits) for w, ws in sorted(org_cfg.workspaces.items())]
    scopes += [(f"user={u}", user.limits) for u, user in sorted(org_cfg.users.items())]
    return specs_of(scopes)


async def bucket_levels(
    store: Store, org: str, org_cfg: Organization, now_ms: int
) -> list[BucketLevel]:
    """The level of every configured bucket of ``org`` at ``now_ms`` (one script call)."""
    specs = all_specs(org_cfg)
    if not specs:
        return []
    keys = [store.keys.bucket(org, s.scope, s.limit) for s in specs]
    args = [now_ms, *(s.rate_unit[0] for s in specs)]
    raw = await store.call("levels", store.client.eval, _source(), len(keys), *keys, *args)
    out = []
    for i, spec in enumerate(specs):
        unit = spec.rate_unit[1]
        level, full_in = int(raw[2 * i]), int(raw[2 * i + 1])
        out.append(BucketLevel(spec.scope, spec.limit, spec.per_minute, level // unit, full_in))
    return out


async def overrides(store: Store, org: str) -> dict[str, str]:
    """The organization's run-time overrides (caps, extra usage, included amounts) as
    stored: field -> value."""
    return dict(await store.call("overrides", store.client.hgetall, store.keys.overrides(org)))
