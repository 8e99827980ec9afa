"""Clients Tollway recognizes by their requests (coding assistants), and how.

A rule recognizes a client when ANY of its tests passes on the request's headers:

- ``user_agent_prefixes``: the ``User-Agent`` starts with one of them (case-insensitive);
- ``headers``: a header has exactly this value (name and value case-insensitive);
- ``header_present``: a header is present, whatever its value.

The built-in rule ``claude-code`` matches what Claude Code sends on every request:
``User-Agent: claude-cli/<version> (...)``, ``x-app: cli`` and its session header
``x-claude-code-session-id``. A config's ``clients:`` section adds rules or replaces a
built-in one of the same name. An organization sends a recognized client's requests to a
workspace of its own with ``client_workspaces: {CLIENT: WORKSPACE}`` (`schema.Organization`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydantic import Field
from tollway.config.values import FrozenModel, empty_map


class ClientRule(FrozenModel):
    user_agent_prefixes: tuple[str, ...] = ()
    """The request's User-Agent starts with one of these (case-insensitive)."""
    headers: Mapping[str, str] = Field(default_factory=empty_map)
    """Header name → the exact value that recognizes the client (case-insensitive)."""
    header_present: tuple[str, ...] = ()
    """Headers whose mere presence recognizes the client."""

    def matches(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with these headers (a case-insensitive mapping, as aiohttp's
        `CIMultiDictProxy`) comes from this client."""
        agent = headers.get("user-agent", "").lower()
        if any(agent.startswith(p.lower()) for p in self.user_agent_prefixes):
            return True
        for name, value in self.headers.items():
            if headers.get(name, "").strip().lower() == value.lower():
                return True
        return any(name in headers for name in self.header_present)


BUILT_IN: Mapping[str, ClientRule] = MappingProxyType(
    {
        "claude-code": ClientRule(
            user_agent_prefixes=("claude-cli/",),
            headers={"x-app": "cli"},
            header_present=("x-claude-code-session-id",),
        )
    }
)


def with_built_ins(configured: Mapping[str, ClientRule]) -> Mapping[str, ClientRule]:
    """The built-in rules, replaced or extended by the configured ones."""
    return MappingProxyType({**BUILT_IN, **configured})


def recognize(rules: Mapping[str, ClientRule], headers: Mapping[str, str]) -> str | None:
    """The name of the first client (in name order) whose rule matches, else None."""
    for name in sorted(rules):
        if rules[name].matches(headers):
            return name
    return None
