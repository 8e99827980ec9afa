"""The fake upstream, checked with the official SDKs pointed straight at it.

What the SDKs do on a cut stream (``cut_after_chunks``), as pinned below: the ``openai`` SDK
raises ``openai.APIConnectionError`` during iteration, after yielding the chunks that were
sent; the ``anthropic`` SDK lets the transport's ``httpx2.RemoteProtocolError`` ("incomplete
chunked read") escape from iteration. A cut non-streaming request raises
``APIConnectionError`` in both SDKs.
"""

from __future__ import annotations

import asyncio

import anthropic
import httpx2
import openai
import pydantic
import pytest

from tests.support.fakeupstream import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    Behavior,
    FakeUpstream,
    run_in_thread,
    started_fake_upstream,
)

MSG = [{"role": "user", "content": "Say hello"}]  # 2 words -> 5 input tokens
CLAUDE = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
def threaded():
    with run_in_thread() as (fake, url):
        yield fake, url


@pytest.fixture
def sync_fake(threaded) -> tuple[FakeUpstream, str]:
    fake, url = threaded
    fake.reset()
    return fake, url


@pytest.fixture
def oai(sync_fake) -> openai.OpenAI:
    return openai.OpenAI(base_url=sync_fake[1] + "/v1", api_key=OPENAI_KEY, max_retries=0)


@pytest.fixture
def ant(sync_fake) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sync_fake[1], api_key=ANTHROPIC_KEY, max_retries=0)


@pytest.fixture
async def afake():
    async with started_fake_upstream() as (fake, url):
        yield fake, url


# -- OpenAI ---------------------------------------------------------------------------------


def test_chat_create(oai, sync_fake):
    fake = sync_fake[0]
    fake.behavior.cache_read_tokens = 7
    fake.behavior.cache_write_tokens = 100  # prompt_tokens_details.cache_write_tokens
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-remaining-tokens"]
    c = raw.parse()
    assert c.object == "chat.completion" and c.model == "gpt-4o-mini"
    assert c.choices[0].message.content == Behavior().text
    assert c.choices[0].finish_reason == "stop"
    u = c.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (112, 5, 117)
    assert u.prompt_tokens_details.cached_tokens == 7
    assert u.prompt_tokens_details.cache_write_tokens == 100
    assert fake.responses[-1] == {
        "path": "/v1/chat/completions", "status": 200, "stream": False, "input_tokens": 5,
        "output_tokens": 5, "cache_write_tokens": 100, "cache_read_tokens": 7,
        "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "web_search_requests": 0,
        "web_fetch_requests": 0, "service_tier": None,
        "completed": True, "text_sent": Behavior().text,
    }  # fmt: skip
    req = fake.requests[-1]
    assert req.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert req.json["messages"] == MSG and req.path == "/v1/chat/completions"


def test_chat_stream_with_usage(oai, sync_fake):
    stream = oai.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == Behavior().text
    assert len(chunks) == 1 + 5 + 1 + 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    assert sync_fake[0].responses[-1]["completed"] is True


def test_chat_stream_without_usage_and_variants(oai, sync_fake):
    fake = sync_fake[0]
    chunks = list(oai.chat.completions.create(model="m", messages=MSG, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason
    assert fake.responses[-1]["output_tokens"] == 0  # nothing reported on the wire
    fake.behavior = Behavior(usage_in_last_content_chunk=True, output_tokens=42)
    opts = {"include_usage": True}
    chunks = list(oai.chat.completions.create(model="m", messages=MSG, stream=True,
                                              stream_options=opts))  # fmt: skip
    assert (
        chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 42
    )
    fake.behavior = Behavior(omit_usage=True)
    chunks = list(oai.chat.completions.create(model="m", messages=MSG, stream=True,
                                              stream_options=opts))  # fmt: skip
    assert all(c.usage is None for c in chunks)


def test_chat_stream_helper_and_parse(oai, sync_fake):
    with oai.chat.completions.stream(
        model="gpt-4o-mini", messages=MSG, stream_options={"include_usage": True}
    ) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == Behavior().text and final.usage.total_tokens == 10

    class City(pydantic.BaseModel):
        city: str

    sync_fake[0].behavior.text = '{"city": "Paris"}'
    parsed = oai.chat.completions.parse(model="gpt-4o-mini", messages=MSG, response_format=City)
    assert parsed.choices[0].message.parsed == City(city="Paris")


def test_max_tokens_truncates(oai):
    c = oai.chat.completions.create(model="m", messages=MSG, max_completion_tokens=2)
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 2
    assert c.choices[0].message.content == "Hello from "


def test_completions(oai):
    c = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three")
    assert c.choices[0].text == Behavior().text and c.usage.prompt_tokens == 6
    chunks = list(oai.completions.create(model="x", prompt="a", stream=True,
                                         stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(ch.choices[0].text for ch in chunks[:-1]) == Behavior().text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 4 + 5


def test_embeddings(oai, sync_fake):
    e = oai.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 16
    assert e.usage.prompt_tokens == 6 and e.usage.total_tokens == 6
    assert sync_fake[0].requests[-1].json["encoding_format"] == "base64"  # the SDK's default
    f = oai.embeddings.create(model="m", input="x", encoding_format="float", dimensions=4)
    assert len(f.data[0].embedding) == 4
    assert sync_fake[0].responses[-1]["output_tokens"] == 0


def test_responses(oai, sync_fake):
    sync_fake[0].behavior.cache_read_tokens = 2
    r = oai.responses.create(model="gpt-4o-mini", input="Say hello", instructions="Be brief")
    assert r.output_text == Behavior().text and r.status == "completed"
    assert r.usage.input_tokens == 9 and r.usage.output_tokens == 5  # 4 words + 3, + 2 cached
    assert r.usage.input_tokens_details.cached_tokens == 2
    events = list(oai.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]  # fmt: skip
    assert types.count("response.output_text.delta") == 5 and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.total_tokens == 4 + 2 + 5
    with oai.responses.stream(model="gpt-4o-mini", input="hi") as s:
        final = s.get_final_response()
    assert final.output_text == Behavior().text and final.usage.output_tokens == 5


def test_openai_errors(oai, sync_fake):
    bad = openai.OpenAI(base_url=sync_fake[1] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model="m", messages=MSG)
    assert ei.value.code == "invalid_api_key"
    sync_fake[0].behavior.status = 429
    with pytest.raises(openai.RateLimitError) as ei:
        oai.chat.completions.create(model="m", messages=MSG)
    assert ei.value.code == "rate_limit_exceeded" and ei.value.response.headers["retry-after"]
    sync_fake[0].behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        oai.responses.create(model="m", input="x")
    assert sync_fake[0].responses[-1]["completed"] is False


def test_openai_stream_cut_and_error(oai, sync_fake):
    sync_fake[0].behavior.cut_after_chunks = 2
    got = []
    with pytest.raises(openai.APIConnectionError):
        for c in oai.chat.completions.create(model="m", messages=MSG, stream=True):
            got.append(c)
    assert len(got) == 3  # role chunk + 2 content chunks
    rec = sync_fake[0].responses[-1]
    assert rec["completed"] is False and rec["text_sent"] == "Hello from "
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=MSG)
    sync_fake[0].behavior = Behavior(stream_error_after_chunks=1)
    with pytest.raises(openai.APIError, match="server had an error"):
        list(oai.chat.completions.create(model="m", messages=MSG, stream=True))


def test_malformed_json_and_bad_requests(oai, sync_fake):
    sync_fake[0].behavior.malformed_json = True
    with pytest.raises((openai.APIResponseValidationError, ValueError)):
        oai.chat.completions.create(model="m", messages=MSG)
    url = sync_fake[1]
    h = {"authorization": f"Bearer {OPENAI_KEY}", "content-type": "application/json"}
    r = httpx2.post(url + "/v1/chat/completions", content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx2.post(url + "/v1/chat/completions", json={"model": "m"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx2.post(url + "/v1/nope", json={}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    h = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    r = httpx2.post(url + "/v1/messages", content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx2.post(url + "/v1/messages", json={"model": CLAUDE, "messages": MSG}, headers=h)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    assert r.headers["request-id"]
    r = httpx2.post(url + "/v1/messages", json={}, headers={"x-api-key": ANTHROPIC_KEY})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]


def test_models(oai, ant, sync_fake):
    assert "gpt-4o-mini" in [m.id for m in oai.models.list()]
    assert oai.models.retrieve("gpt-4o-mini").owned_by == "system"
    models = list(ant.models.list())
    assert models[0].id == CLAUDE and models[0].display_name
    assert ant.models.retrieve(CLAUDE).type == "model"
    assert sync_fake[0].requests[-1].headers["anthropic-version"]
    assert "anthropic-ratelimit-requests-limit" not in sync_fake[0].requests[-1].headers


# -- Anthropic ------------------------------------------------------------------------------


def test_messages_create(ant, sync_fake):
    fake = sync_fake[0]
    fake.behavior = Behavior(cache_write_tokens=11, cache_read_tokens=13, input_tokens=20)
    raw = ant.messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=MSG)
    assert raw.headers["request-id"] and raw.headers["anthropic-ratelimit-tokens-remaining"]
    m = raw.parse()
    assert m.content[0].text == Behavior().text and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (20, 5)
    assert m.usage.cache_creation_input_tokens == 11 and m.usage.cache_read_input_tokens == 13
    assert fake.requests[-1].headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"  # SDK 2.x
    fake.behavior = Behavior(ratelimit_headers=False)
    raw = ant.messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=MSG)
    assert not any(k.startswith("anthropic-ratelimit") for k in raw.headers)


def test_messages_stream_raw(ant, sync_fake):
    system = [{"type": "text", "text": "You are terse", "cache_control": {"type": "ephemeral"}}]
    events = list(ant.messages.create(model=CLAUDE, max_tokens=100, messages=MSG,
                                      system=system, stream=True))  # fmt: skip
    types = [e.type for e in events]  # the SDK hides `ping`
    assert types == ["message_start", "content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop", "message_delta", "message_stop"]  # fmt: skip
    assert events[0].message.usage.input_tokens == 8  # 5 words + 3
    assert events[-2].usage.output_tokens == 5 and events[-2].usage.input_tokens == 8
    assert events[-2].delta.stop_reason == "end_turn"
    assert sync_fake[0].responses[-1]["completed"] is True


def test_messages_stream_helper(ant):
    with ant.messages.stream(model=CLAUDE, max_tokens=3, messages=MSG) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from the fa" and final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3 and final.usage.input_tokens == 5


def test_x_api_key_auth(sync_fake):
    body = {"model": CLAUDE, "max_tokens": 5, "messages": MSG}
    h = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    r = httpx2.post(sync_fake[1] + "/v1/messages", json=body, headers=h)
    assert r.status_code == 200 and r.json()["usage"]["input_tokens"] == 5
    h["x-api-key"] = "wrong"
    r = httpx2.post(sync_fake[1] + "/v1/messages", json=body, headers=h)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    h = {"authorization": f"Bearer {OPENAI_KEY}", "anthropic-version": "2023-06-01"}
    r = httpx2.post(sync_fake[1] + "/v1/messages", json=body, headers=h)
    assert r.status_code == 401  # the OpenAI key is no good on Anthropic routes


def test_count_tokens(ant):
    assert ant.messages.count_tokens(model=CLAUDE, messages=MSG).input_tokens == 5


def test_anthropic_errors(ant, sync_fake):
    bad = anthropic.Anthropic(base_url=sync_fake[1], api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=CLAUDE, max_tokens=10, messages=MSG)
    for status, exc, etype in [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ]:
        sync_fake[0].behavior.status = status
        with pytest.raises(exc) as ei:
            ant.messages.create(model=CLAUDE, max_tokens=10, messages=MSG)
        assert ei.value.body["error"]["type"] == etype


def test_anthropic_stream_cut_and_error(ant, sync_fake):
    fake = sync_fake[0]
    fake.behavior.cut_after_chunks = 1
    with pytest.raises(httpx2.RemoteProtocolError):
        list(ant.messages.create(model=CLAUDE, max_tokens=10, messages=MSG, stream=True))
    rec = fake.responses[-1]
    assert rec["completed"] is False and rec["input_tokens"] == 5 and rec["output_tokens"] == 1
    fake.behavior = Behavior(stream_error_after_chunks=2)
    got = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        for e in ant.messages.create(model=CLAUDE, max_tokens=10, messages=MSG, stream=True):
            got.append(e)
    assert ei.value.body["error"]["type"] == "overloaded_error"
    assert [e.type for e in got].count("content_block_delta") == 2
    assert fake.responses[-1]["completed"] is False


# -- async clients, pause and delays ---------------------------------------------------------


async def test_async_clients(afake):
    url = afake[1]
    oai = openai.AsyncOpenAI(base_url=url + "/v1", api_key=OPENAI_KEY, max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=url, api_key=ANTHROPIC_KEY, max_retries=0)
    c = await oai.chat.completions.create(model="m", messages=MSG)
    assert c.usage.prompt_tokens == 5
    stream = await oai.chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = [ch async for ch in stream]
    assert chunks[-1].usage.completion_tokens == 5
    async with ant.messages.stream(model=CLAUDE, max_tokens=50, messages=MSG) as s:
        final = await s.get_final_message()
    assert final.usage.output_tokens == 5 and final.content[0].text == Behavior().text
    r = await oai.responses.create(model="m", input="hi", stream=True)
    assert [e async for e in r][-1].response.usage.output_tokens == 5
    await oai.close()
    await ant.close()


async def test_pause_resume_and_delays(afake):
    fake, url = afake
    fake.behavior = Behavior(pause_after_chunks=2, delay_between_chunks=0.01)
    ant = anthropic.AsyncAnthropic(base_url=url, api_key=ANTHROPIC_KEY, max_retries=0)
    stream = await ant.messages.create(model=CLAUDE, max_tokens=50, messages=MSG, stream=True)
    seen: list[str] = []

    async def consume() -> None:
        async for e in stream:
            seen.append(e.type)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    assert seen.count("content_block_delta") == 2 and not task.done()
    assert fake.responses[-1]["text_sent"] == "Hello from "
    fake.resume.set()
    await asyncio.wait_for(task, 2)
    assert seen[-1] == "message_stop" and fake.responses[-1]["completed"] is True
    fake.behavior = Behavior(delay_first_byte=0.1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await ant.messages.create(model=CLAUDE, max_tokens=5, messages=MSG)
    assert loop.time() - t0 >= 0.1
    await ant.close()


def test_release_from_other_thread(oai, sync_fake):
    fake = sync_fake[0]
    fake.behavior.pause_after_chunks = 0
    stream = oai.chat.completions.create(model="m", messages=MSG, stream=True)
    first = next(iter(stream))  # the role chunk comes before the pause
    assert first.choices[0].delta.role == "assistant"
    fake.release()
    assert len(list(stream)) == 6
