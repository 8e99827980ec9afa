"""A fast fake model API for load tests: OpenAI chat and Anthropic messages, JSON and SSE.

`tests/support/fakeupstream.py` is the faithful fake (every route, every hook, SDK-checked); it
builds each answer from dicts and costs ~0.3 ms of CPU per request, which on a 2-core
machine would be taken from the proxy under test. This one is a raw asyncio protocol with
answers prebuilt at start-up: ~30 µs per request. It speaks enough HTTP/1.1 for wrk, aiohttp
and the SDKs: keep-alive, Content-Length request bodies, Content-Length or chunked answers.

Routes (any other path: 404):

- ``POST /v1/chat/completions``: a chat completion; with ``"stream": true`` an SSE stream
  (role chunk, content chunks, finish chunk, then the usage chunk only when the request
  asked for ``stream_options.include_usage``, then ``[DONE]``).
- ``POST /v1/messages``: an Anthropic message, or its SSE stream (``message_start`` with the
  input usage, content deltas, ``message_delta`` with the cumulative usage, ``message_stop``).

Usage reported: ``--input-tokens`` / ``--output-tokens`` (fixed, whatever the request says).
Per-request knobs, as request headers (a proxy passes them through):
``x-bench-chunks`` (content chunks of a stream), ``x-bench-chunk-delay-ms`` (sleep before
every content chunk but the first), ``x-bench-first-byte-delay-ms`` (sleep before the
answer's headers).

    python -m bench.upstream --port 9001 [--input-tokens 40] [--output-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from collections.abc import Callable

import orjson

_STREAM = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_KNOB = re.compile(rb"\r\nx-bench-([a-z-]+):\s*([0-9.]+)", re.IGNORECASE)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*([0-9]+)", re.IGNORECASE)

MODEL_OPENAI = "gpt-4o-mini"
MODEL_ANTHROPIC = "claude-sonnet-4-6"


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: object, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


class Answers:
    """Every answer body, built once."""

    def __init__(self, input_tokens: int, output_tokens: int, chunks: int) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.default_chunks = chunks
        self.words = [f"word{i} " for i in range(max(chunks, 1) * 4)]
        text = "".join(self.words[:chunks])
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        }
        self.chat_json = orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": MODEL_OPENAI,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
        self.messages_json = orjson.dumps(
            {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": MODEL_ANTHROPIC,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": self._anthropic_usage(output_tokens),
            }
        )
        self._openai_usage = usage

    def _anthropic_usage(self, output_tokens: int) -> dict:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def chat_stream(self, chunks: int, with_usage: bool) -> list[bytes]:
        """The events of a chat stream; index 1..chunks are the content events."""
        base = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL_OPENAI,
        }
        if with_usage:
            base["usage"] = None

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event({**base, "choices": [choice]})

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": self.words[i % len(self.words)]}) for i in range(chunks)]
        events.append(chunk({}, "stop"))
        if with_usage:
            events.append(_event({**base, "choices": [], "usage": self._openai_usage}))
        events.append(b"data: [DONE]\n\n")
        return events

    def messages_stream(self, chunks: int) -> list[bytes]:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": MODEL_ANTHROPIC,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": self._anthropic_usage(1),
            },
        }
        events = [_event(start, "message_start")]
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        events.append(_event(block, "content_block_start"))
        for i in range(chunks):
            delta = {"type": "text_delta", "text": self.words[i % len(self.words)]}
            ev = {"type": "content_block_delta", "index": 0, "delta": delta}
            events.append(_event(ev, "content_block_delta"))
        events.append(_event({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": self._anthropic_usage(self.output_tokens),
        }
        events.append(_event(delta, "message_delta"))
        events.append(_event({"type": "message_stop"}, "message_stop"))
        return events


_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"x-request-id: req_bench\r\nContent-Length: %d\r\n\r\n"
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nx-request-id: req_bench\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


_TASKS: set[asyncio.Task] = set()  # delayed answers in progress (kept from the GC)


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, answers: Answers, stream_cache: dict) -> None:
        self.answers = answers
        self.cache = stream_cache
        self.buf = b""
        self.head: bytes | None = None
        self.need = 0
        self.busy = False  # a delayed answer is being written: parse nothing meanwhile
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        self._pump()

    def _pump(self) -> None:
        while not self.busy and self.transport is not None:
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.head = self.buf[: end + 2]
                self.buf = self.buf[end + 4 :]
                m = _CONTENT_LENGTH.search(self.head)
                if m is None and b"chunked" in self.head.lower():
                    self.transport.write(_BAD)  # request bodies always have a length here
                    self.transport.close()
                    return
                self.need = int(m.group(1)) if m else 0
            if len(self.buf) < self.need:
                return
            body, self.buf = self.buf[: self.need], self.buf[self.need :]
            head, self.head = self.head, None
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")]
        path = line.split(b" ", 2)[1].split(b"?", 1)[0] if b" " in line else b""
        knobs = {k.lower(): float(v) for k, v in _KNOB.findall(head)} if b"x-bench-" in head else {}
        stream = _STREAM.search(body) is not None
        a = self.answers
        if path == b"/v1/chat/completions":
            if not stream:
                return self._send(_JSON_HEAD % len(a.chat_json) + a.chat_json, knobs)
            with_usage = _INCLUDE_USAGE.search(body) is not None
            chunks = int(knobs.get(b"chunks", a.default_chunks))
            key = ("chat", chunks, with_usage)
            make: Callable[[], list[bytes]] = lambda: a.chat_stream(chunks, with_usage)  # noqa: E731
            first_content = 1
        elif path == b"/v1/messages":
            if not stream:
                return self._send(_JSON_HEAD % len(a.messages_json) + a.messages_json, knobs)
            chunks = int(knobs.get(b"chunks", a.default_chunks))
            key = ("messages", chunks, False)
            make = lambda: a.messages_stream(chunks)  # noqa: E731
            first_content = 2
        else:
            return self._send(_NOT_FOUND, knobs)
        events = self.cache.get(key)
        if events is None:
            events = self.cache[key] = [_chunk(ev) for ev in make()]
        delay = knobs.get(b"chunk-delay-ms", 0) / 1000
        if not delay and not knobs.get(b"first-byte-delay-ms"):
            self.transport.write(_SSE_HEAD + b"".join(events) + b"0\r\n\r\n")
            return None
        self.busy = True
        self._spawn(self._slow_stream(events, first_content, delay, knobs))
        return None

    def _send(self, data: bytes, knobs: dict) -> None:
        wait = knobs.get(b"first-byte-delay-ms", 0) / 1000
        if not wait:
            self.transport.write(data)
            return
        self.busy = True

        async def later() -> None:
            await asyncio.sleep(wait)
            self._write(data)
            self._done()

        self._spawn(later())

    async def _slow_stream(
        self, events: list[bytes], first_content: int, delay: float, knobs: dict
    ) -> None:
        wait = knobs.get(b"first-byte-delay-ms", 0) / 1000
        if wait:
            await asyncio.sleep(wait)
        self._write(_SSE_HEAD)
        for i, ev in enumerate(events):
            if delay and i > first_content:
                await asyncio.sleep(delay)
            self._write(ev)
        self._write(b"0\r\n\r\n")
        self._done()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _done(self) -> None:
        self.busy = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, answers: Answers) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    cache: dict = {}
    return await loop.create_server(
        lambda: UpstreamProtocol(answers, cache), host, port, backlog=1024, reuse_address=True
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--input-tokens", type=int, default=40)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--chunks", type=int, default=16, help="content chunks of a stream")
    args = p.parse_args()
    import uvloop

    async def run() -> None:
        server = await serve(
            args.host, args.port, Answers(args.input_tokens, args.output_tokens, args.chunks)
        )
        async with server:
            await server.serve_forever()

    uvloop.run(run())


if __name__ == "__main__":
    main()
