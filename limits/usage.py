"""Token usage of one request, as read from a provider's response.

`Usage` is plain data shared by `proxy/` (which parses it off the wire) and `limits/`
(which prices it and debits buckets). Its four counts never overlap:

- ``input_tokens``: input tokens that were neither written to nor read from a prompt cache;
- ``cache_write_tokens``: input tokens written to the cache (Anthropic
  ``cache_creation_input_tokens``);
- ``cache_read_tokens``: input tokens served from the cache (Anthropic
  ``cache_read_input_tokens``, OpenAI ``prompt_tokens_details.cached_tokens``);
- ``output_tokens``: generated tokens (including reasoning tokens).

So OpenAI's ``prompt_tokens`` equals ``input_tokens + cache_read_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def tpm_input(self, count_cache_reads: bool) -> int:
        """Input tokens that count against input/total TPM: cache writes always count,
        cache reads only when ``count_cache_reads``."""
        n = self.input_tokens + self.cache_write_tokens
        return n + self.cache_read_tokens if count_cache_reads else n

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.cache_write_tokens
            + self.cache_read_tokens
            + self.output_tokens
        )


ZERO = Usage()
