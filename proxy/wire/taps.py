"""Usage taps: read token usage off a response body while relaying it.

A tap sits on one upstream response body. The proxy handler passes every chunk through
`feed()` and sends what it returns to the client, then calls `finish()` once at the end of
the body (normal end, upstream cut-off or client disconnect alike), sends the bytes it
returns, and settles with the `TapResult`::

    tap = make_tap(provider, route, streaming, strip_usage_chunk)
    async for chunk in upstream.content.iter_any():
        if out := tap.feed(chunk):
            await response.write(out)
    rest, result = tap.finish()
    if rest:
        await response.write(rest)

Contracts:

- JSON bodies: `feed` returns each chunk unchanged; `finish` parses the body once.
- SSE without stripping: `feed` returns each chunk unchanged, at once; events are framed
  and inspected on the side, and only those that may carry usage or an error are parsed.
- SSE with `strip_usage_chunk` (OpenAI chat/completions, when the proxy itself added
  ``stream_options.include_usage``): `feed` returns every complete event, minus the usage
  chunk, and holds back only an incomplete trailing event, which `finish` releases.
- Results never depend on how the network split the body.

The wire formats live in `wire.openai` and `wire.anthropic`, SSE framing in `wire.sse`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Protocol

import orjson
from tollway.limits.usage import Usage
from tollway.proxy.wire import anthropic as usage_anthropic
from tollway.proxy.wire import openai as usage_openai
from tollway.proxy.wire.sse import SseFramer, split_events

# Streams of these routes (chat/completions, completions) accept
# stream_options.include_usage, hence may need stripping.
_STRIPPABLE_SUFFIX = "/completions"


@dataclass(slots=True)
class TapResult:
    """What a response said about itself.

    `usage` is None when the response carried no usage (cut-off stream, body that is not
    JSON...). `complete` is True when the body reached its normal end (JSON that parsed;
    OpenAI ``[DONE]``, a usage chunk or ``response.completed``/``incomplete``; Anthropic
    ``message_stop`` or ``message_delta`` usage). When it is False, `usage` may be partial
    (Anthropic: input and cache counts from ``message_start``, output not final): count the
    output with tiktoken on `generated_text()`. `failed` is True when the body ended in an
    upstream error (error event, or an ``error`` member in a JSON body).
    """

    usage: Usage | None
    failed: bool
    model: str | None
    complete: bool = False
    _text: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def generated_text(self) -> str:
        """The text generated in what was relayed (content, tool arguments, reasoning).

        Computed on demand from the kept bytes, at a few µs per relayed event (pure
        Python, GIL-bound): call it only when needed, and for a long stream off the event
        loop, e.g. ``await loop.run_in_executor(None, result.generated_text)``.
        """
        return self._text() if self._text is not None else ""


class UsageTap(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """Takes upstream bytes; returns the bytes to send to the client now (maybe b"")."""
        ...

    @property
    def complete(self) -> bool:
        """The body has reached its normal end or its usage already (SSE only; a JSON
        body is known complete only by `finish`)."""
        ...

    def finish(self) -> tuple[bytes, TapResult]:
        """Ends the body: bytes still to send to the client, and the result. Call once."""
        ...


class _StreamParser(Protocol):
    """What `SseTap` reads of a provider's stream parser (read-only: a parser may compute
    them)."""

    @property
    def usage(self) -> Usage | None: ...
    @property
    def failed(self) -> bool: ...
    @property
    def model(self) -> str | None: ...
    @property
    def complete(self) -> bool: ...

    def on_event(self, event: bytes) -> bytes: ...


class JsonTap:
    """Accumulates a JSON body and reads it once at the end."""

    __slots__ = ("_chunks", "_fmt")

    def __init__(self, fmt: ModuleType) -> None:  # usage_openai or usage_anthropic
        self._chunks: list[bytes] = []
        self._fmt = fmt

    def feed(self, chunk: bytes) -> bytes:
        self._chunks.append(chunk)
        return chunk

    @property
    def complete(self) -> bool:
        return False

    def finish(self) -> tuple[bytes, TapResult]:
        try:
            body = orjson.loads(b"".join(self._chunks))
        except orjson.JSONDecodeError:
            return b"", TapResult(usage=None, failed=False, model=None)
        finally:
            self._chunks = []
        if not isinstance(body, dict):
            return b"", TapResult(usage=None, failed=False, model=None)
        model = body.get("model")
        return b"", TapResult(
            usage=self._fmt.usage_from_body(body),
            failed=self._fmt.body_failed(body),
            model=model if isinstance(model, str) and model else None,
            complete=True,
            _text=partial(self._fmt.text_from_body, body),
        )


class SseTap:
    """Frames an SSE body into events and hands each to a provider's stream parser."""

    __slots__ = ("_framer", "_parser", "_relayed", "_rewrite", "_text_from_events")

    def __init__(
        self,
        parser: _StreamParser,
        text_from_events: Callable[[Iterable[bytes]], str],
        rewrite: bool,
    ) -> None:
        self._framer = SseFramer()
        self._parser = parser
        self._rewrite = rewrite
        self._text_from_events = text_from_events
        # Everything sent to the client, kept so that generated_text() can be computed
        # later: the parse happens only for streams that end without usage.
        self._relayed: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        events = self._framer.push(chunk)
        on_event = self._parser.on_event
        if not self._rewrite:
            self._relayed.append(chunk)
            for ev in events:
                on_event(ev)
            return chunk
        out = b"".join([on_event(ev) for ev in events])
        if out:
            self._relayed.append(out)
        return out

    @property
    def complete(self) -> bool:
        return self._parser.complete

    def finish(self) -> tuple[bytes, TapResult]:
        tail = self._framer.flush()
        out = b""
        if tail.strip():
            # An event without its final blank line: the stream ended mid-event, or the
            # server omitted the last terminator. Read it anyway; a truncated one won't parse.
            forwarded = self._parser.on_event(tail)
            if self._rewrite:
                out = forwarded
        elif self._rewrite:
            out = tail
        if out:
            self._relayed.append(out)
        p = self._parser
        return out, TapResult(
            usage=p.usage,
            failed=p.failed,
            model=p.model,
            complete=p.complete,
            _text=partial(_stream_text, self._text_from_events, self._relayed),
        )


def _stream_text(text_from_events: Callable[[Iterable[bytes]], str], relayed: list[bytes]) -> str:
    return text_from_events(split_events(b"".join(relayed)))


def make_tap(provider: str, route: str, streaming: bool, strip_usage_chunk: bool) -> UsageTap:
    """A fresh tap for one response body.

    `provider` is "openai" or "anthropic" (the wire format); `route` the request path;
    `streaming` whether the response is ``text/event-stream``; `strip_usage_chunk` whether
    the proxy injected ``stream_options.include_usage`` into the request (honoured on
    OpenAI chat/completions and completions streams only).
    """
    fmt: ModuleType
    if provider == "openai":
        fmt = usage_openai
    elif provider == "anthropic":
        fmt = usage_anthropic
    else:
        raise ValueError(f"unknown provider format {provider!r}")
    if not streaming:
        return JsonTap(fmt)
    if fmt is usage_anthropic:
        return SseTap(usage_anthropic.AnthropicStream(), fmt.text_from_events, rewrite=False)
    strip = strip_usage_chunk and route.rstrip("/").endswith(_STRIPPABLE_SUFFIX)
    return SseTap(usage_openai.OpenAIStream(strip=strip), fmt.text_from_events, rewrite=strip)
