"""Token usage of one request, as read from a provider's response.

`Usage` is plain data shared by `proxy/` (which parses it off the wire) and `limits/`
(which prices it and debits buckets). Its four token counts never overlap:

- ``input_tokens``: input tokens that were neither written to nor read from a prompt cache;
- ``cache_write_tokens``: input tokens written to the cache (Anthropic
  ``cache_creation_input_tokens``, OpenAI ``*_tokens_details.cache_write_tokens``);
- ``cache_read_tokens``: input tokens served from the cache (Anthropic
  ``cache_read_input_tokens``, OpenAI ``*_tokens_details.cached_tokens``);
- ``output_tokens``: generated tokens (including reasoning tokens).

So OpenAI's ``prompt_tokens`` equals ``input_tokens + cache_write_tokens + cache_read_tokens``.

The other fields refine those counts or add to them, for pricing:

- ``cache_write_1h_tokens``: the part of ``cache_write_tokens`` written with the long TTL
  (Anthropic ``cache_creation.ephemeral_1h_input_tokens``, OpenAI ``ttl_12h_tokens``);
- ``reasoning_tokens``: the part of ``output_tokens`` spent reasoning (already billed in
  it; kept for reports);
- ``web_search_requests``, ``web_fetch_requests``, ``file_search_requests``: server-side
  tool requests, each billed a fee per request;
- ``service_tier``: the tier the upstream says it used (``priority``, ``flex``, ``batch``,
  ``fast``...); None, ``standard``, ``default`` and ``auto`` are the base tier.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

TOOLS = ("web_search", "web_fetch", "file_search")
BASE_TIERS = frozenset({"standard", "default", "auto"})


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    file_search_requests: int = 0
    service_tier: str | None = None

    def tpm_input(self, count_cache_reads: bool) -> int:
        """Input tokens that count against input/total TPM: cache writes always count,
        cache reads only when ``count_cache_reads``."""
        n = self.input_tokens + self.cache_write_tokens
        return n + self.cache_read_tokens if count_cache_reads else n

    @property
    def prompt_tokens(self) -> int:
        """The whole input: uncached, cache writes and cache reads."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def tier(self) -> str | None:
        """The service tier to price at; None for the base tier."""
        return None if self.service_tier in BASE_TIERS else self.service_tier

    def tool_requests(self) -> dict[str, int]:
        """Server-side tool requests by tool name (see `TOOLS`), zero counts included."""
        return {name: getattr(self, f"{name}_requests") for name in TOOLS}


ZERO = Usage()


def tier_name(value: object) -> str | None:
    """The service tier a provider reported, as `Usage.service_tier`: None for the base
    tier (absent, ``standard``, ``default``, ``auto``) and anything that is not a name."""
    return value if isinstance(value, str) and value and value not in BASE_TIERS else None


_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)


def within_ceiling(usage: Usage, max_tokens: int, max_tools: int) -> tuple[Usage, list[str]]:
    """`usage` with every count above its sanity ceiling lowered to the ceiling, and the
    names of the counts that were (an absurd report is charged the ceiling, never 0)."""
    # int counts by field name; Any because mypy checks **changes against every field of
    # Usage, its text ones included.
    changes: dict[str, Any] = {}
    for name in _COUNTS:
        if getattr(usage, name) > max_tokens:
            changes[name] = max_tokens
    for tool in TOOLS:
        if getattr(usage, f"{tool}_requests") > max_tools:
            changes[f"{tool}_requests"] = max_tools
    if not changes:
        return usage, []
    fixed = replace(usage, **changes)
    # The parts never exceed their whole.
    fixed = replace(
        fixed,
        cache_write_1h_tokens=min(fixed.cache_write_1h_tokens, fixed.cache_write_tokens),
        reasoning_tokens=min(fixed.reasoning_tokens, fixed.output_tokens),
    )
    return fixed, sorted(changes)
