"""Usage and generated text of OpenAI-format responses.

Covers `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` (JSON bodies and chat /
completions SSE streams) and `/v1/responses` (JSON and its typed SSE events).

Wire facts this module relies on:

- chat/completions/embeddings ``usage``: ``prompt_tokens`` (cache reads and writes
  included), ``completion_tokens`` (reasoning included), ``prompt_tokens_details``
  (``cached_tokens``, ``cache_write_tokens``), ``completion_tokens_details.reasoning_tokens``;
- responses ``usage``: ``input_tokens``, ``output_tokens``, ``input_tokens_details``
  (``cached_tokens``, ``cache_write_tokens``, ``cache_write_tokens_details.ttl_12h_tokens``),
  ``output_tokens_details.reasoning_tokens``; server tool calls are ``output`` items
  (``web_search_call``, ``file_search_call``), billed per call;
- the tier that served the answer is the top-level ``service_tier`` (of the body, of each
  chat chunk, or of the responses ``response`` object);
- with ``stream_options.include_usage`` every chat chunk carries ``"usage":null`` and one
  extra chunk with ``"choices":[]`` carries the usage, just before ``data: [DONE]``;
- responses streams end with ``response.completed`` / ``response.incomplete`` (usage inside
  ``response``) or ``response.failed``; errors arrive as ``event: error`` or as a JSON
  object with a top-level ``error``.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from tollway.limits.usage import Usage, tier_name
from tollway.proxy.wire.sse import event_fields, with_data

# Responses API stream events whose ``delta`` is generated text.
_TEXT_DELTA_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
_RESPONSES_DONE = frozenset({"response.completed", "response.incomplete"})
# Events parsed whatever their data: errors and the end of a Responses API stream.
_PARSED_EVENT_NAMES = (
    b"event: error",
    b"event:error",
    b"event: response.completed",
    b"event: response.incomplete",
    b"event: response.failed",
)


def count(value: object) -> int:
    """A count from JSON: a non-negative integer (an integral float too); anything else is
    0. No upper bound here: an absurd count is lowered to the sanity ceiling and flagged
    at settlement (`tollway.limits.usage.within_ceiling`), never read as 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return 0


def field_at(obj: object, *path: str) -> object:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def usage_from_usage_object(
    u: object, service_tier: object = None, output: object = None
) -> Usage | None:
    """Maps an OpenAI ``usage`` object (chat, completions, embeddings or responses shape),
    with the answer's ``service_tier`` and (responses) ``output`` items, whose
    ``web_search_call`` and ``file_search_call`` items are billed per call."""
    if not isinstance(u, dict):
        return None
    if "prompt_tokens" in u or "completion_tokens" in u:
        prompt = count(u.get("prompt_tokens"))
        output_tokens = count(u.get("completion_tokens"))
        details, out_details = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    elif "input_tokens" in u or "output_tokens" in u:
        prompt = count(u.get("input_tokens"))
        output_tokens = count(u.get("output_tokens"))
        details, out_details = u.get("input_tokens_details"), u.get("output_tokens_details")
    else:
        return None
    # Never a negative uncached count on odd servers: reads, then writes, within the prompt.
    cached = min(count(field_at(details, "cached_tokens")), prompt)
    written = min(count(field_at(details, "cache_write_tokens")), prompt - cached)
    by_ttl = field_at(details, "cache_write_tokens_details")
    long_ttl = min(count(field_at(by_ttl, "ttl_12h_tokens")), written)
    calls = (
        [item.get("type") for item in output if isinstance(item, dict)]
        if isinstance(output, list)
        else []
    )
    return Usage(
        input_tokens=prompt - cached - written,
        output_tokens=output_tokens,
        cache_write_tokens=written,
        cache_read_tokens=cached,
        cache_write_1h_tokens=long_ttl,
        reasoning_tokens=min(count(field_at(out_details, "reasoning_tokens")), output_tokens),
        web_search_requests=calls.count("web_search_call"),
        file_search_requests=calls.count("file_search_call"),
        service_tier=tier_name(service_tier),
    )


def usage_from_body(body: dict) -> Usage | None:
    return usage_from_usage_object(body.get("usage"), body.get("service_tier"), body.get("output"))


def body_failed(body: dict) -> bool:
    """A 2xx JSON body that still reports an error (some compatible servers do that)."""
    return bool(body.get("error")) or body.get("status") == "failed"


def _model_of(obj: dict) -> str | None:
    model = obj.get("model")
    if not model:
        resp = obj.get("response")
        model = resp.get("model") if isinstance(resp, dict) else None
    return model if isinstance(model, str) and model else None


class OpenAIStream:
    """State of one OpenAI-format SSE stream, fed event by event.

    Only events that can matter are JSON-parsed: those with a non-null ``usage``, those
    that mention ``"error"``, error and final Responses API events, plus the first data
    event (for the model name); ``[DONE]`` is recognised without parsing. With `strip`,
    `on_event` returns the event as the client should see it without the proxy-injected
    ``include_usage``: the usage-only chunk becomes b"", a usage chunk that also has
    choices loses its ``usage`` member, and ``"usage":null`` members are removed.
    """

    __slots__ = ("_first", "complete", "failed", "model", "strip", "usage")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: Usage | None = None
        self.failed = False
        self.model: str | None = None
        self.complete = False
        self._first = True

    def on_event(self, ev: bytes) -> bytes:
        # Cheap tests first: this runs for every event of every stream. bytes.find/rfind,
        # not `in`, which is much slower for multi-byte needles.
        u = ev.rfind(b'"usage"')  # usage is the last member of a chunk: found from the end
        if u >= 0 and ev[u + 7 : u + 20].lstrip(b": \t").startswith(b"null"):
            if self.strip:
                ev = _cut_null_usage(ev, u)
            u = -1  # the "usage":null that include_usage adds to every chunk
        if u >= 0 or self._first or ev.find(b'"error"') >= 0 or ev.startswith(_PARSED_EVENT_NAMES):
            return self._parse(ev)
        if len(ev) < 32 and ev.find(b"[DONE]") >= 0 and event_fields(ev)[1] == b"[DONE]":
            self.complete = True
        return ev

    def _parse(self, ev: bytes) -> bytes:
        name, data = event_fields(ev)
        if name == b"error":
            self.failed = True
        if data is None:
            return ev
        if data == b"[DONE]":
            self.complete = True
            return ev
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return ev  # a cut-off or malformed event: relay it, read nothing
        if not isinstance(obj, dict):
            return ev
        self._first = False
        if self.model is None:
            self.model = _model_of(obj)
        typ = obj.get("type")
        # OpenAI: {"error": {...}}; Responses: type error / response.failed; vLLM: object error.
        if typ in ("error", "response.failed") or obj.get("error") or obj.get("object") == "error":
            self.failed = True
        if isinstance(typ, str) and typ.startswith("response."):
            resp = obj.get("response")
            if isinstance(resp, dict):
                usage = usage_from_body(resp)
                if usage is not None:
                    self.usage = usage
            if typ in _RESPONSES_DONE:
                self.complete = True
            return ev
        usage = usage_from_body(obj)
        if usage is None:
            return ev
        self.usage = usage  # last one wins
        self.complete = True
        if not self.strip:
            return ev
        if not obj.get("choices"):
            return b""  # the chunk the proxy asked for: the client never sees it
        del obj["usage"]
        return with_data(ev, orjson.dumps(obj))


def _cut_null_usage(ev: bytes, u: int) -> bytes:
    """`ev` without the ``"usage":null`` member whose key starts at `u`.

    Knows the compact (OpenAI) and the ``json.dumps`` spellings, with the member last or
    first; anything else is left as is (the client then sees a harmless null).
    """
    for sep, value in ((b",", b":null"), (b", ", b": null")):
        end = u + 7 + len(value)
        if ev[u + 7 : end] != value:
            continue
        if ev[u - len(sep) : u] == sep:  # ...,"usage":null}
            return ev[: u - len(sep)] + ev[end:]
        if ev[end : end + len(sep)] == sep:  # {"usage":null,...
            return ev[:u] + ev[end + len(sep) :]
    return ev


def _chunk_text(obj: dict, out: list[str]) -> None:
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            _append_str(out, choice.get("text"))  # /v1/completions
            for key in ("delta", "message"):  # stream chunk, JSON body
                msg = choice.get(key)
                if isinstance(msg, dict):
                    _message_text(msg, out)
    typ = obj.get("type")
    if typ in _TEXT_DELTA_EVENTS:
        _append_str(out, obj.get("delta"))


def _message_text(msg: dict, out: list[str]) -> None:
    for key in ("content", "reasoning_content", "reasoning", "refusal"):
        value = msg.get(key)
        if isinstance(value, list):  # content parts
            for part in value:
                if isinstance(part, dict):
                    _append_str(out, part.get("text"))
        else:
            _append_str(out, value)
    calls = msg.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if isinstance(call, dict):
            _function_text(call.get("function"), out)
    _function_text(msg.get("function_call"), out)


def _function_text(fn: object, out: list[str]) -> None:
    if isinstance(fn, dict):
        _append_str(out, fn.get("name"))
        _append_str(out, fn.get("arguments"))


def _append_str(out: list[str], value: object) -> None:
    if isinstance(value, str) and value:
        out.append(value)


def text_from_events(events: Iterable[bytes]) -> str:
    """Generated text carried by relayed stream events (deltas, tool arguments, reasoning)."""
    out: list[str] = []
    for ev in events:
        data = event_fields(ev)[1]
        if not data or data == b"[DONE]":
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            _chunk_text(obj, out)
    return "".join(out)


def text_from_body(body: dict) -> str:
    """Generated text of a complete JSON body (chat, completions or responses)."""
    out: list[str] = []
    _chunk_text(body, out)
    output = body.get("output")  # responses: a list of output items
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        _append_str(out, item.get("arguments"))
        _append_str(out, item.get("input"))
        for key in ("content", "summary"):
            parts = item.get(key)
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    _append_str(out, part.get("text"))
                    _append_str(out, part.get("refusal"))
    return "".join(out)
