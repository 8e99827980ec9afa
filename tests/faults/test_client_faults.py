"""Clients that misbehave: slow (slowloris) headers and bodies, huge bodies, bodies that are
not JSON or not the right JSON, odd unicode, header tricks.

Each gets a clear 4xx (in the provider's format whenever the request reached Tollway's
handler; aiohttp's own plain-text 400 for requests HTTP itself refuses), never a 500, and
leaves every key of the organization as it was."""

from __future__ import annotations

import socket
import time

import orjson
import pytest

from tests.support.faultkit import fetch, settled

SERVER = "server: {client_header_timeout: 1.0, client_body_timeout: 1.0, max_body_bytes: 65536}\n"
# Real-time waits below are bounded by the 1 s timeouts above plus room for a busy machine.
SLACK = 3.0


@pytest.fixture
def stack(stack_factory):
    return stack_factory(extra_yaml=SERVER)


def connect(stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """One whole response (headers and a Content-Length body), without waiting for the
    server to close the connection."""
    sock.settimeout(timeout)
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def raw(stack, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with connect(stack) as sock:
        sock.sendall(data)
        return read_all(sock, 5)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict:
    return orjson.loads(response.split(b"\r\n\r\n", 1)[1])


def headers(key: str, provider: str = "openai") -> dict[str, str]:
    if provider == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"authorization": f"Bearer {key}"}


PATH = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def assert_format(status: int, body: dict, provider: str, code: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    if provider == "anthropic":
        assert body["type"] == "error" and body["error"]["message"]
    else:
        assert body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
        if code is not None:
            assert body["error"]["code"] == code


# --- slow clients --------------------------------------------------------------------------------


def test_trickled_headers_are_cut_off(stack) -> None:
    key = stack.key()
    before = stack.snapshot()
    with connect(stack) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        closed_after = None
        for i in range(40):  # one header byte every 0.1 s: never a complete request
            try:
                sock.sendall(b"X-Slow-%d: y\r\n" % i if i % 5 == 0 else b"")
                sock.settimeout(0.1)
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 1.0 + SLACK
    assert stack.snapshot() == before and stack.fake.requests == []
    del key


def test_a_connection_that_never_speaks_is_closed(stack) -> None:
    with connect(stack) as sock:
        started = time.monotonic()
        assert read_all(sock, 1.0 + SLACK) == b""
        assert time.monotonic() - started < 1.0 + SLACK


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_body_that_stops_coming_is_408(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(key, provider).items())
    with connect(stack) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {PATH[provider]} HTTP/1.1\r\nHost: x\r\n{head}"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            '{"model": "gpt-4o-mini",'.encode()
        )
        response = read_response(sock, 1.0 + SLACK)
        assert time.monotonic() - started < 1.0 + SLACK
    assert status_of(response) == 408
    assert_format(408, body_of(response), provider)
    assert stack.snapshot() == before and stack.fake.requests == []


# --- big bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_huge_declared_body_is_413_before_it_is_read(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers(key, provider).items())
    with connect(stack) as sock:
        sock.sendall(
            f"POST {PATH[provider]} HTTP/1.1\r\nHost: x\r\n{head}"
            f"Content-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n".encode()
            + b"{" * 1024  # a terabyte announced, a kilobyte sent: the answer comes anyway
        )
        # The answer, read to its Content-Length: waiting for the server to close the
        # kept-alive connection would wait out the socket timeout.
        response = read_response(sock)
    assert status_of(response) == 413
    assert_format(413, body_of(response), provider, "request_too_large")
    if provider == "anthropic":
        assert body_of(response)["error"]["type"] == "request_too_large"
    assert stack.snapshot() == before and stack.fake.requests == []


def test_a_chunked_body_over_the_limit_is_413(stack) -> None:
    key = stack.key()
    before = stack.snapshot()
    with connect(stack) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 16384
        sent = 0
        try:
            for _ in range(64):  # up to 1 MiB, 16 times the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_response(sock)
    assert status_of(response) == 413
    assert stack.snapshot() == before and stack.fake.requests == []


# --- bodies that are not the right JSON ----------------------------------------------------------

BAD_BODIES = {
    "not json": b"model=gpt-4o-mini&messages=hi",
    "truncated": b'{"model": "gpt-4o-mini", "messages": [',
    "array": b'[{"model": "gpt-4o-mini"}]',
    "null": b"null",
    "string": b'"gpt-4o-mini"',
    "empty": b"",
    "model missing": b'{"messages": []}',
    "model a number": b'{"model": 123, "messages": []}',
    "model null": b'{"model": null, "messages": []}',
    "model a list": b'{"model": ["gpt-4o-mini"], "messages": []}',
    "model empty": b'{"model": "", "messages": []}',
    "model unpriced": b'{"model": "gpt-9", "messages": []}',
    "model with NUL": b'{"model": "gpt-4o-mini\\u0000", "messages": []}',
    "model RTL": b'{"model": "\\u202egpt-4o-mini", "messages": []}',
    "lone surrogate": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
    b'"content": "\\ud800"}]}',
    "invalid utf-8": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
    b'"content": "\xff\xfe"}]}',
    "deep nesting": b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "duplicate keys": b'{"model": "gpt-9", "model": 5}',
    "big number": b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1' + b"0" * 400 + b"}",
}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_are_400_in_format_and_change_nothing(stack, provider, case) -> None:
    key = stack.key()
    before = stack.snapshot()
    for content_type in ("application/json", "text/plain", None):
        h = headers(key, provider)
        if content_type:
            h["content-type"] = content_type
        reply = fetch("POST", stack.url + PATH[provider], body=BAD_BODIES[case], headers=h)
        assert reply.status == 400, (case, reply.status, reply.body)
        assert_format(400, reply.json(), provider)
    assert stack.snapshot() == before and stack.fake.requests == []


# fmt: off
ODD_BUT_SERVED = {
    # Tollway checks what it meters (the model); the rest is the upstream's to judge.
    "messages a string": {"model": "gpt-4o-mini", "messages": "hello"},
    "messages an object": {"model": "gpt-4o-mini", "messages": {"role": "user"}},
    "stream a string": {"model": "gpt-4o-mini", "messages": [], "stream": "yes"},
    "stream a number": {"model": "gpt-4o-mini", "messages": [], "stream": 1},
    "stream_options odd": {"model": "gpt-4o-mini", "messages": [], "stream": True,
                           "stream_options": 5},
    "enormous max_tokens": {"model": "gpt-4o-mini", "messages": [], "max_tokens": 2**62},
    "float max_tokens": {"model": "gpt-4o-mini", "messages": [], "max_tokens": 1e308},
    "negative max_tokens": {"model": "gpt-4o-mini", "messages": [], "max_tokens": -1},
    "unicode": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "nul\u0000 rtl\u202e\u05e9\u05dc\u05d5\u05dd emoji"
         "\U0001f600\U0001f469\u200d\U0001f469\u200d\U0001f467 e\u0301 \ufeff\uffff"}]},
    "huge string in budget": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "word " * 10000}]},
}
# fmt: on


@pytest.mark.parametrize("case", sorted(ODD_BUT_SERVED))
def test_odd_but_well_formed_requests_never_500(stack, case) -> None:
    """Served (the upstream judges them) or refused with a 4xx; what is served is charged
    exactly what the upstream reported, what is refused changes nothing."""
    key = stack.key()
    reply = fetch(
        "POST", stack.url + PATH["openai"], json=ODD_BUT_SERVED[case], headers=headers(key)
    )
    assert reply.status < 500, reply.body
    settled(stack)
    day = stack.day()
    if reply.status == 200 and stack.fake.responses[-1]["completed"]:
        rec = stack.fake.responses[-1]
        if rec["stream"] and not rec["output_tokens"]:
            # A stream without a usage chunk: charged like one cut off (text relayed).
            assert day["org|out"] > 0
        else:
            assert (day["org|in"], day["org|out"]) == (rec["input_tokens"], rec["output_tokens"])
    else:
        assert "org|cost" not in day


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"X-Evil: a\rInjected: b",  # a bare CR
        b"X-Evil: a\nInjected: b",  # a bare LF
        b"X-Evil: a\x00b",  # NUL
        b"X-Evil: a\r\n folded",  # obsolete line folding
        b"Bad Name: x",  # space in a name
        b"X-Evil : x",  # space before the colon
    ],
)
def test_header_injection_is_refused_by_http_itself(stack, header: bytes) -> None:
    key = stack.key()
    before = stack.snapshot()
    response = raw(
        stack,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\n"
        + header
        + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert status_of(response) == 400, response
    for r in stack.fake.requests:
        assert "Injected" not in r.headers
    assert stack.snapshot() == before


def test_conflicting_keys_are_refused(stack) -> None:
    """Two different keys in one request (two Authorization headers, or Authorization and
    x-api-key) could be read differently by a proxy in front of Tollway: refused, 401."""
    mine, other = stack.key(), stack.key("acme", name="other")
    before = stack.snapshot()
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    for pair in (
        (f"Authorization: Bearer {mine}", f"Authorization: Bearer {other}"),
        (f"Authorization: Bearer {mine}", f"x-api-key: {other}"),
        (f"x-api-key: {mine}", f"x-api-key: {other}"),
    ):
        response = raw(
            stack,
            (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + "".join(h + "\r\n" for h in pair)
                + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + body,
        )
        assert status_of(response) == 401, response
        assert body_of(response)["error"]["code"] == "invalid_api_key"
    # The same key twice is no conflict.
    response = raw(
        stack,
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {mine}\r\nx-api-key: {mine}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body,
    )
    assert status_of(response) == 200
    settled(stack)
    assert stack.fake.requests and len(stack.fake.requests) == 1
    del before


def test_odd_session_ids_stay_inside_the_organization(stack) -> None:
    key = stack.key()
    for session in ("{other}", "a:b:c", "\u00e9t\u00e9", "x" * 500, "../../x"):
        reply = fetch(
            "POST",
            stack.url + PATH["openai"],
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={**headers(key), "x-tollway-session": session},
        )
        assert reply.status == 200
    settled(stack)
    sessions = {e.get("sess") for e in stack.ledger("acme")}
    assert len(sessions) == 5 and None not in sessions  # every request in its own session
    # The session's spend (what a session budget is checked against) is kept in Redis under
    # the organization's own hash tag, whatever the id holds, and expires.
    kept = list(stack.redis.scan_iter(f"{stack.prefix}:*sess:*"))
    assert len(kept) == 5
    assert all(k.startswith(f"{stack.prefix}:{{acme}}:sess:") for k in kept)
    assert all(stack.redis.pttl(k) > 0 for k in kept)
    assert not [r for r in stack.fake.requests if "x-tollway-session" in r.headers]
