"""Usage taps against recorded provider payloads (tests/support/payloads/).

Every stream is replayed whole, split in two at every byte, and one byte at a time, with
LF, CRLF and CR line endings: the forwarded bytes and the result must never depend on it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from tollway.limits.usage import Usage
from tollway.proxy.wire.sse import SseFramer, event_fields, split_events
from tollway.proxy.wire.taps import TapResult, make_tap

PAYLOADS = Path(__file__).resolve().parents[1] / "support" / "payloads"
CHAT = "/v1/chat/completions"
ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def load(name: str, ending: str = "lf") -> bytes:
    # Recorded JSON never holds a raw newline inside a data line, so this is safe.
    return (PAYLOADS / name).read_bytes().replace(b"\n", ENDINGS[ending])


def run(payload_chunks: list[bytes], provider: str, route: str, strip: bool):
    tap = make_tap(provider, route, streaming=True, strip_usage_chunk=strip)
    out = [tap.feed(chunk) for chunk in payload_chunks]
    rest, result = tap.finish()
    return b"".join(out) + rest, result


def summary(result: TapResult) -> tuple:
    return (result.usage, result.failed, result.model, result.complete, result.generated_text())


def splits(payload: bytes):
    yield [payload]
    for i in range(1, len(payload)):
        yield [payload[:i], payload[i:]]
    yield [payload[i : i + 1] for i in range(len(payload))]


def stream(payload: bytes, provider: str, route: str = CHAT, strip: bool = False):
    """(forwarded bytes, summary), asserted identical for every way of chunking `payload`."""
    reference = None
    for chunks in splits(payload):
        forwarded, result = run(chunks, provider, route, strip)
        got = (forwarded, summary(result))
        if reference is None:
            reference = got
        else:
            assert got == reference, f"differs when split as {[len(c) for c in chunks][:3]}"
    return reference


def json_tap(name: str, provider: str, route: str) -> TapResult:
    body = load(name)
    tap = make_tap(provider, route, streaming=False, strip_usage_chunk=False)
    half = len(body) // 2
    assert tap.feed(body[:half]) == body[:half]
    assert tap.feed(body[half:]) == body[half:]
    rest, result = tap.finish()
    assert rest == b""
    return result


# --- JSON bodies -------------------------------------------------------------------------


def test_openai_chat_json():
    result = json_tap("openai_chat.json", "openai", CHAT)
    assert result.usage == Usage(input_tokens=62, output_tokens=11, cache_read_tokens=1280)
    assert (result.failed, result.complete) == (False, True)
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.generated_text() == "Bonjour ! Le café est prêt. ☕"


def test_openai_completions_json():
    result = json_tap("openai_completions.json", "openai", "/v1/completions")
    assert result.usage == Usage(input_tokens=5, output_tokens=7)
    assert result.generated_text() == "\n\nThis is indeed a test"


def test_openai_embeddings_json():
    result = json_tap("openai_embeddings.json", "openai", "/v1/embeddings")
    assert result.usage == Usage(input_tokens=17)
    assert result.model == "text-embedding-3-small"


def test_openai_responses_json():
    result = json_tap("openai_responses.json", "openai", "/v1/responses")
    assert result.usage == Usage(
        input_tokens=152, output_tokens=210, cache_read_tokens=2176, reasoning_tokens=192
    )
    assert result.model == "o4-mini-2025-04-16"
    assert result.generated_text() == "Paris is the capital of France."
    assert not result.failed


def test_anthropic_messages_json():
    result = json_tap("anthropic_messages.json", "anthropic", "/v1/messages")
    assert result.usage == Usage(
        input_tokens=27, output_tokens=71, cache_write_tokens=1843, cache_read_tokens=14012
    )
    assert result.model == "claude-sonnet-4-6"
    assert result.generated_text() == (
        "I'll check the weather in San Francisco for you."
        '{"location":"San Francisco, CA","unit":"celsius"}'
    )


@pytest.mark.parametrize("body", [b"", b"{not json", b'{"usage": {"prompt', b"[1, 2]", b"null"])
def test_json_that_does_not_parse_has_no_usage(body):
    tap = make_tap("openai", CHAT, streaming=False, strip_usage_chunk=False)
    tap.feed(body)
    rest, result = tap.finish()
    assert (rest, result.usage, result.complete, result.generated_text()) == (b"", None, False, "")


def test_json_error_body_is_failed():
    tap = make_tap("anthropic", "/v1/messages", streaming=False, strip_usage_chunk=False)
    tap.feed(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert tap.finish()[1].failed


# --- OpenAI streams ----------------------------------------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
def test_chat_stream_with_client_requested_usage_is_relayed_untouched(ending):
    payload = load("openai_chat_stream_usage.sse", ending)
    forwarded, (usage, failed, model, complete, text) = stream(payload, "openai")
    assert forwarded == payload
    assert usage == Usage(input_tokens=141, output_tokens=9, cache_read_tokens=1920)
    assert (failed, complete, model) == (False, True, "gpt-4o-mini-2024-07-18")
    assert text == "Grüß Gott 👋 The usage is fine."


@pytest.mark.parametrize("ending", ENDINGS)
def test_chat_stream_with_injected_usage_is_stripped(ending):
    payload = load("openai_chat_stream_usage.sse", ending)
    forwarded, (usage, failed, _, complete, text) = stream(payload, "openai", strip=True)
    # Exactly what the upstream sends a client that did not ask for usage: no usage chunk,
    # and no "usage":null member in the other chunks.
    assert forwarded == load("openai_chat_stream_plain.sse", ending)
    assert usage == Usage(input_tokens=141, output_tokens=9, cache_read_tokens=1920)
    assert (failed, complete) == (False, True)
    assert text == "Grüß Gott 👋 The usage is fine."


def test_stripping_holds_back_only_the_incomplete_event():
    payload = load("openai_chat_stream_usage.sse")
    events = split_events(payload)
    tap = make_tap("openai", CHAT, streaming=True, strip_usage_chunk=True)
    sent = b""
    for i, event in enumerate(events):
        cut = len(event) // 2
        assert tap.feed(event[:cut]) == b""  # mid-event: nothing complete to send yet
        sent += tap.feed(event[cut:])
        expected = [e.replace(b',"usage":null', b"") for e in events[: i + 1]]
        assert sent == b"".join(e for e in expected if b'"choices":[]' not in e)
    assert tap.finish()[0] == b""


@pytest.mark.parametrize("ending", ENDINGS)
def test_usage_in_a_chunk_with_choices_without_strip(ending):
    payload = load("openai_chat_stream_usage_in_choices.sse", ending)
    forwarded, (usage, _, model, complete, text) = stream(payload, "openai")
    assert forwarded == payload
    assert usage == Usage(input_tokens=31, output_tokens=7)
    assert (model, complete, text) == ("qwen2.5-7b-instruct-q4_k_m.gguf", True, "4 \u00d7 2 = 8")


@pytest.mark.parametrize("ending", ENDINGS)
def test_usage_in_a_chunk_with_choices_is_kept_without_its_usage(ending):
    payload = load("openai_chat_stream_usage_in_choices.sse", ending)
    forwarded, (usage, _, _, complete, text) = stream(payload, "openai", strip=True)
    assert usage == Usage(input_tokens=31, output_tokens=7)
    assert (complete, text) == (True, "4 \u00d7 2 = 8")
    sent, original = split_events(forwarded), split_events(payload)
    assert len(sent) == len(original)
    for before, after in zip(original, sent, strict=True):
        if b'"usage"' not in before:
            assert after == before
            continue
        assert after.endswith(ENDINGS[ending] * 2)
        expected = orjson.loads(event_fields(before)[1])
        del expected["usage"]
        assert event_fields(after)[1] == orjson.dumps(expected)  # same keys, same order


@pytest.mark.parametrize("strip", [False, True])
def test_completions_stream(strip):
    payload = load("openai_completions_stream.sse")
    forwarded, (usage, _, model, complete, text) = stream(
        payload, "openai", "/v1/completions", strip
    )
    assert usage == Usage(input_tokens=6, output_tokens=5)
    assert (model, complete, text) == (
        "gpt-3.5-turbo-instruct:20230824-v2",
        True,
        "\n\nOnce upon a time",
    )
    if strip:
        kept = [e for e in split_events(payload) if b'"choices":[]' not in e]
        assert forwarded == b"".join(kept).replace(b',"usage":null', b"")
    else:
        assert forwarded == payload


@pytest.mark.parametrize("ending", ENDINGS)
def test_responses_stream(ending):
    payload = load("openai_responses_stream.sse", ending)
    # strip is only honoured on completions routes: a responses stream is never rewritten.
    forwarded, (usage, failed, model, complete, text) = stream(
        payload, "openai", "/v1/responses", strip=True
    )
    assert forwarded == payload
    assert usage == Usage(input_tokens=37, output_tokens=11)
    assert (failed, complete, model) == (False, True, "gpt-4.1-mini-2025-04-14")
    assert text == "Hello! How can I help you today?"


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("strip", [False, True])
def test_openai_stream_cut_off(ending, strip):
    payload = load("openai_chat_stream_cut.sse", ending)
    forwarded, (usage, failed, model, complete, text) = stream(payload, "openai", strip=strip)
    assert (usage, failed, complete) == (None, False, False)
    assert model == "gpt-4.1-2025-04-14"
    assert text == 'get_weather{"location":"Zürich"}Checking the weather'
    if not strip:
        assert forwarded == payload


OPENAI_ERRORS = {
    "chat": b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"error":{"message":"The server had an error while processing your request. '
    b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n',
    "responses": b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":4,"delta":"Hi"}\n\n'
    b"event: error\n"
    b'data: {"type":"error","sequence_number":5,"code":"server_error",'
    b'"message":"The server had an error","param":null}\n\n',
    "response.failed": b"event: response.failed\n"
    b'data: {"type":"response.failed","sequence_number":9,"response":{"id":"resp_1",'
    b'"status":"failed","error":{"code":"server_error","message":"boom"},"usage":null}}\n\n',
    "named event only": b"event: error\ndata: upstream went away\n\n",
}


@pytest.mark.parametrize("name", OPENAI_ERRORS)
def test_openai_stream_error_event_is_failed(name):
    forwarded, (usage, failed, *_) = stream(OPENAI_ERRORS[name], "openai")
    assert forwarded == OPENAI_ERRORS[name]
    assert failed and usage is None


def test_content_that_says_usage_is_not_mistaken_for_usage():
    payload = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"usage"}}],"usage":null}\n\n'
        b"data: [DONE]\n\n"
    )
    forwarded, (usage, _, _, complete, text) = stream(payload, "openai", strip=True)
    assert forwarded == payload.replace(b',"usage":null', b"")
    assert (usage, complete, text) == (None, True, "usage")


# --- Anthropic streams -------------------------------------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
def test_anthropic_stream_message_delta_usage_is_cumulative(ending):
    payload = load("anthropic_stream.sse", ending)
    forwarded, (usage, failed, model, complete, text) = stream(payload, "anthropic", "/v1/messages")
    assert forwarded == payload
    # Last message_delta wins: 89, neither 48 + 89 nor 3 + 48 + 89.
    assert usage == Usage(input_tokens=412, output_tokens=89, cache_read_tokens=3186)
    assert (failed, complete, model) == (False, True, "claude-sonnet-4-6")
    assert text == (
        "The user wants the weather; I should call the tool."
        "Je regarde la météo à Zürich 🌦️."
        '{"location": "Zürich"}'
    )


@pytest.mark.parametrize("ending", ENDINGS)
def test_anthropic_stream_ending_in_error_is_failed(ending):
    payload = load("anthropic_stream_error.sse", ending)
    forwarded, (usage, failed, model, complete, text) = stream(payload, "anthropic", "/v1/messages")
    assert forwarded == payload
    assert (failed, complete, model) == (True, False, "claude-opus-4-1-20250805")
    assert usage == Usage(input_tokens=1520, output_tokens=1)
    assert text == "Here is the"


@pytest.mark.parametrize("ending", ENDINGS)
def test_anthropic_stream_cut_off_keeps_input_usage(ending):
    payload = load("anthropic_stream_cut.sse", ending)
    forwarded, (usage, failed, _, complete, text) = stream(payload, "anthropic", "/v1/messages")
    assert forwarded == payload
    assert usage == Usage(input_tokens=96, output_tokens=1, cache_write_tokens=2048)
    assert (failed, complete) == (False, False)
    assert text == "Once upon a time, in a village by the fjord, lived Åsa and her cat"


def test_anthropic_null_fields_in_message_delta_keep_earlier_values():
    payload = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"model":"claude-x","usage":'
        b'{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,'
        b'"output_tokens":1}}}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":'
        b'{"input_tokens":null,"cache_creation_input_tokens":null,"output_tokens":30}}\n\n'
    )
    _, (usage, _, _, complete, _) = stream(payload, "anthropic", "/v1/messages")
    assert usage == Usage(
        input_tokens=10, output_tokens=30, cache_write_tokens=5, cache_read_tokens=7
    )
    assert complete


def test_anthropic_events_without_event_lines_are_read_by_type():
    payload = (
        b'data: {"type":"message_start","message":{"model":"m","usage":{"input_tokens":4,'
        b'"output_tokens":1}}}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"ok"}}\n\n'
        b'data: {"type":"error","error":{"type":"api_error","message":"Internal"}}\n\n'
    )
    _, (usage, failed, model, complete, text) = stream(payload, "anthropic", "/v1/messages")
    assert (usage, failed, model, complete, text) == (
        Usage(input_tokens=4, output_tokens=1),
        True,
        "m",
        False,
        "ok",
    )


# --- framing and construction ------------------------------------------------------------


def test_framer_handles_every_terminator_mix():
    body = b"a\n\nb\r\n\r\nc\r\rd\r\n\ne\n\r\nf\r\r\ng\r\nh\n\n"
    expected = [b"a\n\n", b"b\r\n\r\n", b"c\r\r", b"d\r\n\n", b"e\n\r\n", b"f\r\r\n", b"g\r\nh\n\n"]
    for chunks in splits(body):
        framer = SseFramer()
        events = [e for chunk in chunks for e in framer.push(chunk)]
        assert events == expected
        assert framer.flush() == b""


def test_framer_keeps_an_unterminated_tail():
    framer = SseFramer()
    assert framer.push(b"data: 1\n\ndata: 2\n") == [b"data: 1\n\n"]
    assert framer.pending == len(b"data: 2\n")
    assert framer.flush() == b"data: 2\n"


def test_event_fields():
    assert event_fields(b"event:x\r\ndata:{\r\ndata: }\r\nid: 3\r\n: comment\r\n\r\n") == (
        b"x",
        b"{\n}",
    )
    assert event_fields(b": keep-alive\n\n") == (None, None)


def test_feed_does_not_copy_when_relaying_untouched():
    tap = make_tap("anthropic", "/v1/messages", streaming=True, strip_usage_chunk=False)
    chunk = b"event: ping\ndata: {}\n\n"
    assert tap.feed(chunk) is chunk


def test_unknown_provider_is_refused():
    with pytest.raises(ValueError, match="gemini"):
        make_tap("gemini", CHAT, streaming=True, strip_usage_chunk=False)


# ---- every usage field of the providers' current SDK types ---------------------------------


def test_openai_chat_usage_reads_cache_writes_reasoning_and_tier():
    from tollway.proxy.wire import openai as wire

    body = {
        "service_tier": "priority",
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 500},
            "completion_tokens_details": {"reasoning_tokens": 250},
        },
    }
    assert wire.usage_from_body(body) == Usage(
        input_tokens=300,
        output_tokens=300,
        cache_write_tokens=500,
        cache_read_tokens=200,
        reasoning_tokens=250,
        service_tier="priority",
    )


def test_openai_responses_usage_reads_long_ttl_writes_and_tool_calls():
    from tollway.proxy.wire import openai as wire

    body = {
        "service_tier": "flex",
        "output": [
            {"type": "web_search_call"},
            {"type": "web_search_call"},
            {"type": "file_search_call"},
            {"type": "message"},
        ],
        "usage": {
            "input_tokens": 5000,
            "output_tokens": 40,
            "input_tokens_details": {
                "cached_tokens": 1000,
                "cache_write_tokens": 3000,
                "cache_write_tokens_details": {"ttl_12h_tokens": 2000, "ttl_30m_tokens": 1000},
            },
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    assert wire.usage_from_body(body) == Usage(
        input_tokens=1000,
        output_tokens=40,
        cache_write_tokens=3000,
        cache_write_1h_tokens=2000,
        cache_read_tokens=1000,
        web_search_requests=2,
        file_search_requests=1,
        service_tier="flex",
    )


def test_anthropic_usage_reads_1h_writes_server_tools_tier_and_speed():
    from tollway.proxy.wire import anthropic as wire

    u = {
        "input_tokens": 10,
        "output_tokens": 500,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 7000,
        "cache_creation": {"ephemeral_1h_input_tokens": 2500, "ephemeral_5m_input_tokens": 500},
        "output_tokens_details": {"thinking_tokens": 400},
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1},
        "service_tier": "batch",
    }
    assert wire.usage_from_usage_object(u) == Usage(
        input_tokens=10,
        output_tokens=500,
        cache_write_tokens=3000,
        cache_read_tokens=7000,
        cache_write_1h_tokens=2500,
        reasoning_tokens=400,
        web_search_requests=3,
        web_fetch_requests=1,
        service_tier="batch",
    )
    fast = wire.usage_from_usage_object({**u, "service_tier": "standard", "speed": "fast"})
    assert fast is not None and fast.service_tier == "fast"


def test_an_absurd_count_is_kept_for_the_ceiling_not_read_as_zero():
    from tollway.proxy.wire import openai as wire

    body = {"usage": {"prompt_tokens": 10**12, "completion_tokens": 2.0e9}}
    assert wire.usage_from_body(body) == Usage(input_tokens=10**12, output_tokens=2_000_000_000)
    assert wire.count(-5) == 0 and wire.count("7") == 0 and wire.count(True) == 0
