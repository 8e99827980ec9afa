"""A faithful fake of the OpenAI and Anthropic model APIs, for tests and benchmarks.

A real aiohttp app served on loopback. The official ``openai`` and ``anthropic`` SDKs,
pointed straight at it, work normally (create, stream, parse). Tests steer the next
responses through ``fake.behavior`` and inspect ``fake.requests`` / ``fake.responses``.

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` (OpenAI format) and ``/v1/messages``, ``/v1/messages/count_tokens``
(Anthropic format); ``GET /v1/models`` and ``/v1/models/{id}`` answer in Anthropic's shape
when the request carries ``anthropic-version``, else in OpenAI's.

Rules the tests can rely on:

* **Input tokens** (when ``Behavior.input_tokens`` is None): ``words + 3``, where ``words``
  counts whitespace-separated words in the request text: every string found under the body's
  ``messages``, ``system``, ``prompt``, ``input`` and ``instructions``, descending through
  lists and into the ``content``, ``text`` and ``input`` keys of objects (so ``role`` and
  ``type`` are not counted). E.g. one user message "Say hello" gives 5.
  ``input_tokens`` is the *uncached* part (``tollway.limits.usage.Usage`` semantics); OpenAI formats
  report ``prompt_tokens`` (Responses: ``input_tokens``) ``= input + cache_read +
  cache_write`` with ``cached_tokens = cache_read`` and ``cache_write_tokens`` (Responses:
  with ``cache_write_tokens_details``, ``ttl_12h_tokens = cache_write_1h``).
  count_tokens answers ``input + cache_read + cache_write``.
* **Other usage fields**, as the current SDK types define them: ``reasoning_tokens`` (part
  of the output: OpenAI ``*_tokens_details.reasoning_tokens``, Anthropic
  ``output_tokens_details.thinking_tokens``), ``cache_write_1h_tokens`` (part of the cache
  writes: Anthropic ``cache_creation.ephemeral_1h_input_tokens``), ``web_search_requests``
  and ``web_fetch_requests`` (Anthropic ``server_tool_use``; the Responses API lists one
  ``web_search_call`` output item per search), ``service_tier`` (OpenAI top-level
  ``service_tier``, default ``default``; Anthropic ``usage.service_tier``, default
  ``standard``).
  Embeddings report no output and no cache tokens.
* **Chunks**: ``text`` is cut into ``chunks`` pieces of near-equal character length, one
  content delta each. A request ``max_tokens`` / ``max_completion_tokens`` /
  ``max_output_tokens`` below ``chunks`` keeps only that many pieces, finishing with
  ``length`` / ``max_tokens`` / ``incomplete``. **Output tokens** (when None) = pieces sent.
* **Stream layouts**: chat: role chunk, one chunk per piece, finish chunk (``delta: {}``,
  ``finish_reason``), usage chunk (``choices: []``, only with ``include_usage``), ``[DONE]``.
  completions: the same without the role chunk. Responses: ``response.created``,
  ``response.in_progress``, ``output_item.added``, ``content_part.added``, deltas,
  ``output_text.done``, ``content_part.done``, ``output_item.done``, ``response.completed``.
  Anthropic: ``message_start`` (full input usage, ``output_tokens: 1``),
  ``content_block_start``, ``ping``, deltas, ``content_block_stop``, ``message_delta``
  (cumulative usage: all four counts), ``message_stop``.
* **Hooks** count content chunks: after ``n`` of them (``n = 0`` means before the first) the
  stream pauses on ``resume``, then is cut, then sends its error event, in that order.
  ``delay_between_chunks`` is slept before every content chunk but the first;
  ``delay_before_end`` after the text (Responses: after ``output_text.done``), before the
  events that close the stream and carry its final usage.
  JSON responses: ``delay_first_byte`` applies; ``cut_after_chunks`` (any value) closes the
  connection without answering; the other stream hooks are ignored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import secrets
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

OPENAI_KEY = "sk-upstream-openai-test"
ANTHROPIC_KEY = "sk-ant-upstream-test"

# The operator's account also holds a fine-tune named after another customer (unpriced):
# Tollway must never show it to a tenant.
OPENAI_MODELS = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "ft:gpt-4o-mini:othercorp::9xQa1",
]
ANTHROPIC_MODELS = {
    "claude-sonnet-4-6": "Claude Sonnet 4.6",
    "claude-opus-4-6": "Claude Opus 4.6",
    "claude-haiku-4-5-20251001": "Claude Haiku 4.5",
}
_GENERATION = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
}


@dataclass
class Behavior:
    """What the next responses do; tests mutate ``fake.behavior`` between calls."""

    text: str = "Hello from the fake upstream!"
    chunks: int = 5
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    service_tier: str | None = None
    speed: str | None = None  # Anthropic usage.speed ("fast")
    status: int = 200
    delay_first_byte: float = 0.0
    delay_between_chunks: float = 0.0
    pause_after_chunks: int | None = None
    delay_before_end: float = 0.0  # streams: slept after the text, before the closing events
    cut_after_chunks: int | None = None
    stream_error_after_chunks: int | None = None
    usage_in_last_content_chunk: bool = False
    omit_usage: bool = False
    malformed_json: bool = False
    ratelimit_headers: bool = True
    retry_after: int = 1  # the retry-after header (seconds) sent with a 429


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any | None
    query: dict[str, str] = field(default_factory=dict)


class _Abort(Exception):
    """Ends a stream early (cut or error event already handled)."""


def _rid(prefix: str, n: int = 24) -> str:
    return prefix + secrets.token_hex(n // 2)


def _count_words(body: Any) -> int:
    def walk(v: Any) -> int:
        if isinstance(v, str):
            return len(v.split())
        if isinstance(v, list):
            return sum(walk(x) for x in v)
        if isinstance(v, dict):
            return sum(walk(v[k]) for k in ("content", "text", "input") if k in v)
        return 0

    if not isinstance(body, dict):
        return 0
    keys = ("messages", "system", "prompt", "input", "instructions")
    return sum(walk(body[k]) for k in keys if k in body)


def _json(data: Any) -> bytes:
    return orjson.dumps(data)


def _openai_error(status: int, message: str, etype: str, code: str | None, param=None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def _anthropic_error(etype: str, message: str) -> dict:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": None}


_OPENAI_STATUS = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
}
_ANTHROPIC_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FakeUpstream:
    """The fake model API: build the app with :meth:`app`, steer it with :attr:`behavior`.

    ``requests``: every request received. ``responses``: one dict per authorized request to a
    generation route (chat, completions, embeddings, responses, messages), updated live while
    it streams: ``path``, ``status``, ``stream``, the usage that actually went on the wire
    (``input_tokens``, ``output_tokens``, ``cache_write_tokens``, ``cache_read_tokens``, in
    ``Usage`` semantics, 0 when not sent), ``completed`` (False when cut, errored, malformed or
    refused) and ``text_sent`` (content text written so far).
    """

    def __init__(self) -> None:
        self.behavior = Behavior()
        self.requests: list[RecordedRequest] = []
        self.responses: list[dict[str, Any]] = []
        self.resume = asyncio.Event()
        self.record = True  # False: keep no requests/responses (long benchmark runs)
        self._loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        """Default behavior, empty records, a fresh (cleared) ``resume`` event."""
        self.behavior = Behavior()
        self.requests.clear()
        self.responses.clear()
        self.resume = asyncio.Event()

    def release(self) -> None:
        """Set ``resume`` safely from any thread (the server may run in another loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.resume.set()
        else:
            loop.call_soon_threadsafe(self.resume.set)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # -- dispatch -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        raw = await request.read()
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        path = request.path
        if self.record:
            headers_copy = CIMultiDict(request.headers)
            rr = RecordedRequest(
                request.method, path, headers_copy, raw, parsed, dict(request.query)
            )
            self.requests.append(rr)
        b = dataclasses.replace(self.behavior)
        anthropic = path.startswith("/v1/messages") or (
            path.startswith("/v1/models") and "anthropic-version" in request.headers
        )
        headers = self._headers(anthropic, b, path in _GENERATION)
        if b.delay_first_byte:
            await asyncio.sleep(b.delay_first_byte)

        def err(status: int, message: str, etype: str | None = None, code=None, param=None):
            if anthropic:
                body = _anthropic_error(
                    etype or _ANTHROPIC_STATUS.get(status, "api_error"), message
                )
                body["request_id"] = headers["request-id"]
            else:
                body = _openai_error(status, message, etype or "invalid_request_error", code, param)
            return web.Response(
                status=status, body=_json(body), headers=headers, content_type="application/json"
            )

        if not self._authorized(request, anthropic):
            if anthropic:
                return err(401, "invalid x-api-key", "authentication_error")
            return err(401, "Incorrect API key provided.", code="invalid_api_key")
        if anthropic and "anthropic-version" not in request.headers:
            return err(400, "anthropic-version: header is required")

        route = {
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
        }.get((request.method, path))
        if route is None and request.method == "GET" and path.startswith("/v1/models/"):
            route = self._models
        if route is None and request.method == "POST" and path in _GENERATION:
            route = self._generate
        if route is None:
            etype = "not_found_error" if anthropic else "invalid_request_error"
            return err(404, f"Invalid URL ({request.method} {path})", etype)
        if request.method == "POST" and not isinstance(parsed, dict):
            if anthropic:
                return err(400, "There was an error parsing the body of your request")
            return err(400, "We could not parse the JSON body of your request.")
        return await route(request, parsed, b, headers, err, anthropic)

    @staticmethod
    def _authorized(request: web.Request, anthropic: bool) -> bool:
        auth = request.headers.get("authorization", "")
        if anthropic:
            key = request.headers.get("x-api-key")
            return key == ANTHROPIC_KEY or (key is None and auth == f"Bearer {ANTHROPIC_KEY}")
        return auth == f"Bearer {OPENAI_KEY}"

    @staticmethod
    def _headers(anthropic: bool, b: Behavior, generation: bool) -> dict[str, str]:
        if anthropic:
            h = {"request-id": _rid("req_011C"), "anthropic-organization-id": "org-fake"}
            if b.ratelimit_headers and generation:
                reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
                for kind, limit in (
                    ("requests", 4000),
                    ("tokens", 2000000),
                    ("input-tokens", 1600000),
                    ("output-tokens", 400000),
                ):
                    h[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
                    h[f"anthropic-ratelimit-{kind}-remaining"] = str(limit - 1)
                    h[f"anthropic-ratelimit-{kind}-reset"] = reset
            return h
        h = {
            "x-request-id": _rid("req_", 32),
            "openai-version": "2020-10-01",
            "openai-processing-ms": "7",
            "openai-organization": "org-fake",
        }
        if b.ratelimit_headers and generation:
            h |= {
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-limit-tokens": "30000000",
                "x-ratelimit-remaining-requests": "9999",
                "x-ratelimit-remaining-tokens": "29999990",
                "x-ratelimit-reset-requests": "6ms",
                "x-ratelimit-reset-tokens": "0s",
            }
        return h

    # -- models and count_tokens ----------------------------------------------------------

    async def _models(self, request, body, b, headers, err, anthropic):
        def info(m: str) -> dict:
            if anthropic:
                return {"type": "model", "id": m, "display_name": ANTHROPIC_MODELS[m],
                        "created_at": "2025-09-29T00:00:00Z", "lifecycle": "active"}  # fmt: skip
            return {"id": m, "object": "model", "created": 1721172741, "owned_by": "system"}

        models = list(ANTHROPIC_MODELS) if anthropic else OPENAI_MODELS
        if request.path != "/v1/models":
            mid = request.path.removeprefix("/v1/models/")
            if mid not in models:
                return err(404, f"model: {mid}", "not_found_error", code="model_not_found")
            return web.Response(
                body=_json(info(mid)), headers=headers, content_type="application/json"
            )
        if anthropic:
            out = {"data": [info(m) for m in models], "has_more": False,
                   "first_id": models[0], "last_id": models[-1]}  # fmt: skip
        else:
            out = {"object": "list", "data": [info(m) for m in models]}
        return web.Response(body=_json(out), headers=headers, content_type="application/json")

    async def _count_tokens(self, request, body, b, headers, err, anthropic):
        if "model" not in body or "messages" not in body:
            return err(400, "model and messages: Field required")
        n = b.input_tokens if b.input_tokens is not None else _count_words(body) + 3
        data = _json({"input_tokens": n + b.cache_read_tokens + b.cache_write_tokens})
        return web.Response(body=data, headers=headers, content_type="application/json")

    # -- generation -----------------------------------------------------------------------

    async def _generate(self, request, body, b, headers, err, anthropic):
        path = request.path
        stream = bool(body.get("stream")) and path != "/v1/embeddings"
        rec = {"path": path, "status": b.status, "stream": stream, "input_tokens": 0,
               "output_tokens": 0, "cache_write_tokens": 0, "cache_read_tokens": 0,
               "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "web_search_requests": 0,
               "web_fetch_requests": 0, "service_tier": None,
               "completed": False, "text_sent": ""}  # fmt: skip
        if self.record:
            self.responses.append(rec)
        required = {"/v1/messages": ("model", "messages", "max_tokens"),
                    "/v1/chat/completions": ("model", "messages"),
                    "/v1/embeddings": ("model", "input")}.get(path, ("model",))  # fmt: skip
        missing = [k for k in required if k not in body]
        if missing:
            rec["status"] = 400
            if anthropic:
                return err(400, f"{missing[0]}: Field required")
            msg = f"Missing required parameter: '{missing[0]}'."
            return err(400, msg, code="missing_required_parameter", param=missing[0])
        if b.status != 200:
            if b.status == 429:
                headers["retry-after"] = str(b.retry_after)
            if anthropic:
                return err(b.status, f"Fake upstream error {b.status}")
            etype, code, msg = _OPENAI_STATUS.get(
                b.status, ("server_error", None, "The server had an error processing your request.")
            )
            return err(b.status, msg, etype, code)

        n = max(b.chunks, 0)
        pieces = [b.text[i * len(b.text) // n : (i + 1) * len(b.text) // n] for i in range(n)]
        limit = next(
            (body[k] for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
             if isinstance(body.get(k), int)), None,
        )  # fmt: skip
        truncated = limit is not None and limit < len(pieces)
        if truncated:
            pieces = pieces[:limit]
        words = _count_words(body)
        u = {
            "input_tokens": b.input_tokens if b.input_tokens is not None else words + 3,
            "output_tokens": b.output_tokens if b.output_tokens is not None else len(pieces),
            "cache_write_tokens": b.cache_write_tokens,
            "cache_read_tokens": b.cache_read_tokens,
        }
        if path == "/v1/embeddings":
            u["output_tokens"] = u["cache_read_tokens"] = u["cache_write_tokens"] = 0
        gen = _Gen(self, request, body, b, headers, rec, pieces, u, truncated)
        if not stream:
            return await gen.json_response()
        return await gen.stream(anthropic)


class _Gen:
    """One generation: builds the provider's JSON body or SSE stream."""

    def __init__(self, fake, request, body, b, headers, rec, pieces, u, truncated):
        self.fake, self.request, self.body, self.b = fake, request, body, b
        self.headers, self.rec, self.pieces, self.u = headers, rec, pieces, u
        self.truncated, self.path, self.model = truncated, request.path, body["model"]
        self.text = "".join(pieces)
        self.created = int(time.time())
        self.resp: web.StreamResponse | None = None
        self.seq = 0
        self.cut = False
        prefix = {"/v1/messages": "msg_01", "/v1/responses": "resp_",
                  "/v1/completions": "cmpl-"}.get(self.path, "chatcmpl-")  # fmt: skip
        self.id, self.item_id = _rid(prefix, 28), _rid("msg_", 32)

    # -- usage objects ----------------------------------------------------------------------

    def openai_usage(self) -> dict:
        u, b = self.u, self.b
        p = u["input_tokens"] + u["cache_read_tokens"] + u["cache_write_tokens"]
        if self.path == "/v1/embeddings":
            return {"prompt_tokens": p, "total_tokens": p}
        if self.path == "/v1/responses":
            long_ttl = b.cache_write_1h_tokens
            by_ttl = {
                "ttl_12h_tokens": long_ttl,
                "ttl_30m_tokens": u["cache_write_tokens"] - long_ttl,
            }
            details = {
                "cached_tokens": u["cache_read_tokens"],
                "cache_write_tokens": u["cache_write_tokens"],
                "cache_write_tokens_details": by_ttl,
            }
            return {"input_tokens": p, "input_tokens_details": details,
                    "output_tokens": u["output_tokens"],
                    "output_tokens_details": {"reasoning_tokens": b.reasoning_tokens},
                    "total_tokens": p + u["output_tokens"]}  # fmt: skip
        details = {
            "cached_tokens": u["cache_read_tokens"],
            "audio_tokens": 0,
            "cache_write_tokens": u["cache_write_tokens"],
        }
        return {"prompt_tokens": p, "completion_tokens": u["output_tokens"],
                "total_tokens": p + u["output_tokens"], "prompt_tokens_details": details,
                "completion_tokens_details": {"reasoning_tokens": b.reasoning_tokens,
                    "audio_tokens": 0, "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0}}  # fmt: skip

    def anthropic_usage(self, output_tokens: int) -> dict:
        u, b = self.u, self.b
        long_ttl = b.cache_write_1h_tokens
        by_ttl = {
            "ephemeral_1h_input_tokens": long_ttl,
            "ephemeral_5m_input_tokens": u["cache_write_tokens"] - long_ttl,
        }
        thinking = min(b.reasoning_tokens, output_tokens)
        tools = {
            "web_search_requests": b.web_search_requests,
            "web_fetch_requests": b.web_fetch_requests,
        }
        return {"input_tokens": u["input_tokens"],
                "cache_creation_input_tokens": u["cache_write_tokens"],
                "cache_read_input_tokens": u["cache_read_tokens"],
                "cache_creation": by_ttl, "output_tokens": output_tokens,
                "output_tokens_details": {"thinking_tokens": thinking},
                "server_tool_use": tools,
                "service_tier": b.service_tier or "standard",
                **({"speed": b.speed} if b.speed else {})}  # fmt: skip

    def report(self, *, output: bool = True, inputs: bool = True, completed: bool = False):
        """Record the usage that went on the wire."""
        b = self.b
        if inputs:
            for k in ("input_tokens", "cache_write_tokens", "cache_read_tokens"):
                self.rec[k] = self.u[k]
            self.rec["cache_write_1h_tokens"] = b.cache_write_1h_tokens
            self.rec["service_tier"] = b.service_tier
        if output:
            self.rec["output_tokens"] = self.u["output_tokens"]
            self.rec["reasoning_tokens"] = b.reasoning_tokens
            self.rec["web_search_requests"] = b.web_search_requests
            self.rec["web_fetch_requests"] = b.web_fetch_requests
        self.rec["completed"] = completed

    # -- JSON bodies --------------------------------------------------------------------------

    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"

    def chat_base(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "service_tier": self.b.service_tier or "default",
                "system_fingerprint": "fp_fake0001"}  # fmt: skip

    def response_obj(self, status: str, final: bool) -> dict:
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": status, "background": False, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete" else None,
                "instructions": self.body.get("instructions"),
                "max_output_tokens": self.body.get("max_output_tokens"), "model": self.model,
                "output": self.output_items() if final else [],
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "service_tier": self.b.service_tier or "default",
                "store": True, "temperature": 1.0,
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
                "usage": self.openai_usage() if final and not self.b.omit_usage else None,
                "user": None, "metadata": {}}  # fmt: skip

    def output_items(self) -> list[dict]:
        searches = [{"id": _rid("ws_", 24), "type": "web_search_call", "status": "completed",
                     "action": {"type": "search", "query": "fake"}}
                    for _ in range(self.b.web_search_requests)]  # fmt: skip
        return [*searches, self.message_item("completed", self.text)]

    def message_item(self, status: str, text: str | None) -> dict:
        content = [] if text is None else [self.text_part(text)]
        return {"id": self.item_id, "type": "message", "status": status,
                "content": content, "role": "assistant"}  # fmt: skip

    @staticmethod
    def text_part(text: str) -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def json_body(self) -> dict:
        p = self.path
        if p == "/v1/embeddings":
            inputs = self.body.get("input")
            inputs = inputs if isinstance(inputs, list) and inputs else [inputs]
            if all(isinstance(x, int) for x in inputs):
                inputs = [inputs]
            dims = self.body.get("dimensions") or 16
            data = []
            for i in range(len(inputs)):
                vec = [round(((i + 1) * (j + 3) % 17) / 17 - 0.5, 6) for j in range(dims)]
                emb: Any = vec
                if self.body.get("encoding_format") == "base64":
                    emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
                data.append({"object": "embedding", "index": i, "embedding": emb})
            return {"object": "list", "data": data, "model": self.model,
                    "usage": self.openai_usage()}  # fmt: skip
        if p == "/v1/messages":
            stop = "max_tokens" if self.truncated else "end_turn"
            return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [{"type": "text", "text": self.text}], "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": self.anthropic_usage(self.u["output_tokens"])}  # fmt: skip
        if p == "/v1/responses":
            return self.response_obj("incomplete" if self.truncated else "completed", True)
        if p == "/v1/completions":
            choice = {"text": self.text, "index": 0, "logprobs": None,
                      "finish_reason": self.finish_reason()}  # fmt: skip
            return {"id": self.id, "object": "text_completion", "created": self.created,
                    "model": self.model, "system_fingerprint": "fp_fake0001",
                    "choices": [choice], "usage": self.openai_usage()}  # fmt: skip
        msg = {"role": "assistant", "content": self.text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": msg, "logprobs": None,
                  "finish_reason": self.finish_reason()}  # fmt: skip
        return {**self.chat_base(), "object": "chat.completion", "choices": [choice],
                "usage": self.openai_usage()}  # fmt: skip

    async def json_response(self) -> web.StreamResponse:
        if self.b.cut_after_chunks is not None:
            self._close_transport()
            raise asyncio.CancelledError  # aiohttp drops the request without answering
        if self.b.malformed_json:
            data = _json(self.json_body())[:-7] + b",,{oops"
            self.rec["completed"] = False
        else:
            data = _json(self.json_body())
            self.report(completed=True)
        self.rec["text_sent"] = self.text
        return web.Response(body=data, headers=self.headers, content_type="application/json")

    # -- SSE ----------------------------------------------------------------------------------

    def _close_transport(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.close()

    async def send(self, data: Any, event: str | None = None) -> None:
        payload = data if isinstance(data, str) else _json(data).decode()
        line = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
        assert self.resp is not None
        await self.resp.write(line.encode())

    async def rsend(self, etype: str, **fields: Any) -> None:
        """A Responses API event, with its sequence number."""
        await self.send({"type": etype, **fields, "sequence_number": self.seq}, etype)
        self.seq += 1

    async def content(self, send_piece, send_error) -> None:
        """Send the content pieces, applying the pause / cut / error hooks."""
        b = self.b
        for n in range(len(self.pieces) + 1):
            if n:
                if n > 1 and b.delay_between_chunks:
                    await asyncio.sleep(b.delay_between_chunks)
                await send_piece(self.pieces[n - 1])
                self.rec["text_sent"] += self.pieces[n - 1]
            if b.pause_after_chunks == n:
                await self.fake.resume.wait()
            if b.cut_after_chunks == n:
                self.cut = True
                self._close_transport()
                raise _Abort
            if b.stream_error_after_chunks == n:
                await send_error()
                raise _Abort

    async def stream(self, anthropic: bool) -> web.StreamResponse:
        headers = {**self.headers, "Content-Type": "text/event-stream; charset=utf-8",
                   "Cache-Control": "no-cache"}  # fmt: skip
        self.resp = web.StreamResponse(status=200, headers=headers)
        self.resp.enable_chunked_encoding()
        await self.resp.prepare(self.request)
        run = {
            "/v1/messages": self.anthropic_stream,
            "/v1/responses": self.responses_stream,
            "/v1/completions": self.completions_stream,
        }.get(self.path, self.chat_stream)
        try:
            await run()
        except _Abort:
            if self.cut:
                raise asyncio.CancelledError from None  # connection is gone: no chunk terminator
        except ConnectionError:  # the client went away
            self.rec["completed"] = False
            raise asyncio.CancelledError from None
        await self.resp.write_eof()
        return self.resp

    async def openai_error_event(self) -> None:
        msg = "The server had an error while processing your request. Sorry about that!"
        await self.send(_openai_error(500, msg, "server_error", None))

    async def chat_stream(self) -> None:
        opts = self.body.get("stream_options") or {}
        with_usage = bool(opts.get("include_usage")) and not self.b.omit_usage
        base = self.chat_base() | ({"usage": None} if with_usage else {})

        def chunk(delta: dict, finish: str | None = None) -> dict:
            ch = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return base | {"choices": [ch]}

        await self.send(chunk({"role": "assistant", "content": "", "refusal": None}))
        await self.content(lambda p: self.send(chunk({"content": p})), self.openai_error_event)
        await self.openai_finish(chunk({}, self.finish_reason()), base, with_usage)

    async def completions_stream(self) -> None:
        opts = self.body.get("stream_options") or {}
        with_usage = bool(opts.get("include_usage")) and not self.b.omit_usage
        base = {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_fake0001"}  # fmt: skip

        def chunk(text: str, finish: str | None = None) -> dict:
            ch = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return base | {"choices": [ch]}

        await self.content(lambda p: self.send(chunk(p)), self.openai_error_event)
        await self.openai_finish(chunk("", self.finish_reason()), base, with_usage)

    async def openai_finish(self, last: dict, base: dict, with_usage: bool) -> None:
        await asyncio.sleep(self.b.delay_before_end)
        if with_usage and self.b.usage_in_last_content_chunk:
            await self.send(last | {"usage": self.openai_usage()})
        else:
            await self.send(last)
            if with_usage:
                await self.send(base | {"choices": [], "usage": self.openai_usage()})
        self.report(output=with_usage, inputs=with_usage, completed=True)
        await self.send("[DONE]")

    async def responses_stream(self) -> None:
        item, ids = self.message_item("in_progress", None), {"item_id": self.item_id}
        part = {"output_index": 0, "content_index": 0, **ids}
        await self.rsend("response.created", response=self.response_obj("in_progress", False))
        await self.rsend("response.in_progress", response=self.response_obj("in_progress", False))
        await self.rsend("response.output_item.added", output_index=0, item=item)
        await self.rsend("response.content_part.added", **part, part=self.text_part(""))

        async def piece(p: str) -> None:
            await self.rsend("response.output_text.delta", **part, delta=p, logprobs=[])

        async def error() -> None:
            msg = "The server had an error processing your request."
            await self.rsend("error", code="server_error", message=msg, param=None)

        await self.content(piece, error)
        await self.rsend("response.output_text.done", **part, text=self.text, logprobs=[])
        await asyncio.sleep(self.b.delay_before_end)
        await self.rsend("response.content_part.done", **part, part=self.text_part(self.text))
        done = self.message_item("completed", self.text)
        await self.rsend("response.output_item.done", output_index=0, item=done)
        status = "incomplete" if self.truncated else "completed"
        self.report(output=not self.b.omit_usage, inputs=not self.b.omit_usage, completed=True)
        await self.rsend(f"response.{status}", response=self.response_obj(status, True))

    async def anthropic_stream(self) -> None:
        start = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                 "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": self.anthropic_usage(min(1, self.u["output_tokens"]))}  # fmt: skip
        await self.send({"type": "message_start", "message": start}, "message_start")
        self.report(output=False)
        self.rec["output_tokens"] = start["usage"]["output_tokens"]
        block = {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}  # fmt: skip
        await self.send(block, "content_block_start")
        await self.send({"type": "ping"}, "ping")

        async def piece(p: str) -> None:
            delta = {"type": "text_delta", "text": p}
            await self.send({"type": "content_block_delta", "index": 0, "delta": delta},
                            "content_block_delta")  # fmt: skip

        async def error() -> None:
            body = _anthropic_error("overloaded_error", "Overloaded")
            body["request_id"] = self.headers["request-id"]
            await self.send(body, "error")

        await self.content(piece, error)
        await asyncio.sleep(self.b.delay_before_end)
        await self.send({"type": "content_block_stop", "index": 0}, "content_block_stop")
        usage = self.anthropic_usage(self.u["output_tokens"])
        del usage["service_tier"], usage["cache_creation"]  # not in MessageDeltaUsage
        stop = "max_tokens" if self.truncated else "end_turn"
        delta = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                 "usage": usage}  # fmt: skip
        await self.send(delta, "message_delta")
        self.report(completed=True)
        await self.send({"type": "message_stop"}, "message_stop")


async def start_fake_upstream(
    host: str = "127.0.0.1",
) -> tuple[FakeUpstream, web.AppRunner, str]:
    """Serve a new fake on a free port; returns (fake, runner, "http://host:port")."""
    fake = FakeUpstream()
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    fake._loop = asyncio.get_running_loop()
    return fake, runner, f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def started_fake_upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    """``async with started_fake_upstream() as (fake, url):`` in the current event loop."""
    fake, runner, url = await start_fake_upstream()
    try:
        yield fake, url
    finally:
        fake.release()
        await runner.cleanup()


@contextlib.contextmanager
def run_in_thread() -> Iterator[tuple[FakeUpstream, str]]:
    """Serve a fake from a background thread with its own event loop (for sync clients).

    Use ``fake.release()`` (not ``fake.resume.set()``) to resume a paused stream from the
    calling thread.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-upstream", daemon=True)
    thread.start()
    fake, runner, url = asyncio.run_coroutine_threadsafe(start_fake_upstream(), loop).result(10)
    try:
        yield fake, url
    finally:
        fake.release()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
