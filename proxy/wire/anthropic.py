"""Usage and generated text of Anthropic Messages API responses (`/v1/messages`).

Wire facts this module relies on:

- ``usage`` holds ``input_tokens`` (uncached input only), ``cache_creation_input_tokens``,
  ``cache_read_input_tokens`` and ``output_tokens``: four disjoint counts, like `Usage`;
  and ``cache_creation`` (by TTL), ``output_tokens_details.thinking_tokens``,
  ``server_tool_use`` (web search and fetch requests), ``service_tier`` and ``speed``;
- a stream opens with ``message_start`` (``message.usage``: input and cache counts, and an
  early ``output_tokens``), then content events, then one or more ``message_delta`` whose
  ``usage`` is CUMULATIVE (``output_tokens`` always; newer API versions repeat the input and
  cache counts), then ``message_stop``. An ``error`` event ends a failed stream; ``ping``
  events carry nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from tollway.limits.usage import Usage, tier_name
from tollway.proxy.wire.openai import count, field_at
from tollway.proxy.wire.sse import event_fields

# The bulk of a stream: recognised by prefix and never parsed while relaying.
_DELTA_PREFIXES = (b"event: content_block_delta\n", b"event: content_block_delta\r")


def usage_from_usage_object(u: object) -> Usage | None:
    """Maps an Anthropic ``usage`` object: the four disjoint counts, the 1-hour part of the
    cache writes (``cache_creation.ephemeral_1h_input_tokens``), thinking tokens, server
    tool requests (``server_tool_use``) and the tier (``service_tier``; ``speed: fast`` is
    the tier ``fast``)."""
    if not isinstance(u, dict) or not ("input_tokens" in u or "output_tokens" in u):
        return None
    written = count(u.get("cache_creation_input_tokens"))
    thinking = count(field_at(u, "output_tokens_details", "thinking_tokens"))
    output = count(u.get("output_tokens"))
    tier = u.get("service_tier")
    if u.get("speed") == "fast":
        tier = "fast"
    return Usage(
        input_tokens=count(u.get("input_tokens")),
        output_tokens=output,
        cache_write_tokens=written,
        cache_read_tokens=count(u.get("cache_read_input_tokens")),
        cache_write_1h_tokens=min(
            count(field_at(u, "cache_creation", "ephemeral_1h_input_tokens")), written
        ),
        reasoning_tokens=min(thinking, output),
        web_search_requests=count(field_at(u, "server_tool_use", "web_search_requests")),
        web_fetch_requests=count(field_at(u, "server_tool_use", "web_fetch_requests")),
        service_tier=tier_name(tier),
    )


def usage_from_body(body: dict) -> Usage | None:
    return usage_from_usage_object(body.get("usage"))


def body_failed(body: dict) -> bool:
    return body.get("type") == "error" or bool(body.get("error"))


class AnthropicStream:
    """State of one Anthropic SSE stream, fed event by event; never rewrites an event.

    Parses only ``message_start``, ``message_delta`` and events without an ``event:`` line
    (to read their ``type``); ``content_block_delta`` events are recognised by prefix.
    `usage` exists once ``message_start`` or a ``message_delta`` with usage was seen; until
    a ``message_delta`` arrives its output count is message_start's early one.
    """

    __slots__ = ("_raw", "complete", "failed", "model")

    def __init__(self) -> None:
        self.failed = False
        self.model: str | None = None
        self.complete = False
        self._raw: dict | None = None  # the usage members seen so far, last value of each

    @property
    def usage(self) -> Usage | None:
        return None if self._raw is None else usage_from_usage_object(self._raw)

    def on_event(self, ev: bytes) -> bytes:
        if ev.startswith(_DELTA_PREFIXES):
            return ev
        name, data = event_fields(ev)
        if name in (b"message_start", b"message_delta") or (name is None and data):
            obj = _load(data)
            typ = obj.get("type") if name is None else name.decode()
        else:
            obj, typ = {}, name.decode("utf-8", "replace") if name else None
        if typ == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                model = msg.get("model")
                if self.model is None and isinstance(model, str) and model:
                    self.model = model
                self._take(msg.get("usage"))
        elif typ == "message_delta":
            if self._take(obj.get("usage")):
                self.complete = True
        elif typ == "message_stop":
            self.complete = True
        elif typ == "error":
            self.failed = True
        return ev

    def _take(self, u: object) -> bool:
        """Replaces the members present in `u` (cumulative values: last one wins)."""
        if not isinstance(u, dict):
            return False
        if self._raw is None:
            self._raw = {"input_tokens": 0, "output_tokens": 0}
        self._raw.update((key, value) for key, value in u.items() if value is not None)
        return True


def _load(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}


def text_from_events(events: Iterable[bytes]) -> str:
    """Generated text of relayed ``content_block_delta`` events (text, tool JSON, thinking)."""
    out: list[str] = []
    for ev in events:
        if b"content_block_delta" not in ev:
            continue
        obj = _load(event_fields(ev)[1])
        delta = obj.get("delta") if obj.get("type") == "content_block_delta" else None
        if isinstance(delta, dict):
            for key in ("text", "partial_json", "thinking"):
                value = delta.get(key)
                if isinstance(value, str):
                    out.append(value)
    return "".join(out)


def text_from_body(body: dict) -> str:
    """Generated text of a complete Messages JSON body."""
    out: list[str] = []
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            value = block.get(key)
            if isinstance(value, str):
                out.append(value)
        if "input" in block:  # tool_use / server_tool_use: the model wrote this JSON
            out.append(orjson.dumps(block["input"]).decode())
    return "".join(out)
