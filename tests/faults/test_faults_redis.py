"""The store goes away: a real Valkey, started by each test on a free port with an
append-only file, is killed, paused and restarted under the proxy.

Fail-closed (the default) refuses quickly in each provider's format and charges nothing it
refused; fail-open serves without limits and journals the settlements. In both modes every
settlement that could not be written waits in the journal and is settled when the store
returns, so that afterwards the ledger and the day counters equal, exactly, the usage the
upstream reported."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from tollway.limits.errors import StoreUnavailable
from tollway.limits.meter import Charge, periods
from tollway.limits.plans import Principal
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store
from tollway.limits.usage import Usage

from tests.support.faultkit import (
    FaultStack,
    Script,
    ScriptedUpstream,
    TcpProxy,
    Valkey,
    charged,
    drive,
    fetch,
    ledger_debits,
    metric,
    request_for,
    settled,
    upstream_expected,
    wait_for,
)

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000000, tpm: 1000000000}
"""
TIMEOUT = 0.3  # store.timeout_seconds of these stacks
# A refusal for an unavailable store must come within a few store timeouts (connect, then
# read); this bound leaves room for a loaded CI machine.
FAST = 8 * TIMEOUT
REPLAY_WAIT = 15  # seconds: the replayer retries every second


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start()
    yield server
    server.close()


@pytest.fixture
def make_stack(valkey: Valkey, tmp_path: Path) -> Iterator[object]:
    made: list[FaultStack] = []

    def make(policy: str = "closed", url: str | None = None, timeout=TIMEOUT) -> FaultStack:
        path = tmp_path / f"stack{len(made)}"
        path.mkdir()
        store_yaml = f"on_unavailable: {policy}\ntimeout_seconds: {timeout}\n"
        stack = FaultStack(url or valkey.url, path, orgs_yaml=ORGS, store_yaml=store_yaml)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()


def post(stack: FaultStack, i: int, key: str):
    path, headers, body = request_for(i, key)
    return fetch("POST", stack.url + path, json=body, headers=headers)


def assert_charged_exactly(stack: FaultStack) -> None:
    """The day counters, the ledger and month-to-date spend equal what the upstream
    reported, request by request."""
    expected = upstream_expected(stack)
    got = charged(stack)
    assert expected["req"] > 0
    assert {k: got[k] for k in expected} == expected
    assert got["ledger_cost"] == expected["cost"]
    assert got["ledger_events"] == expected["req"]
    month = periods(stack.clock.now_ms(), stack.holder.current.server.tzinfo)[0]
    mtd = stack.redis.hget(stack.keys.month("acme", month), "spend:org")
    assert int(mtd or 0) == expected["cost"]


def without_holds(snapshot: dict) -> dict:
    """A snapshot less what an admission reserves (buckets, holds, held amount)."""
    out = {}
    for name, value in snapshot.items():
        if ":b:" in name or ":hold" in name or name.endswith(":held"):
            continue  # (`held`: the money held per limit while requests are in flight)
        if name.endswith(":acct"):
            value = {k: v for k, v in value.items() if k != "held"}
        out[name] = value
    return out


def assert_no_holds_after_purge(stack: FaultStack) -> None:
    """After an admission (which purges expired holds), nothing is held but its own."""
    principal = stack.key_record()[0].principal
    decision = stack.run(stack.meter.admit(principal, "req_probe", "gpt-4o-mini", 0, 0))
    assert decision.admitted
    holds = stack.redis.zrange(stack.keys.holds("acme"), 0, -1)
    assert holds == ["req_probe"]
    assert int(stack.redis.hget(stack.keys.account("acme"), "held") or 0) == 0
    stack.run(stack.meter.settle(Charge(principal, "req_probe", "gpt-4o-mini", Usage(), 0, False)))


# --- the client of the store --------------------------------------------------------------


async def test_pool_reconnects_after_a_restart(valkey: Valkey) -> None:
    """Connections the server closed when it died are reopened before use: the first
    requests after a restart succeed (a pool that reused them failed one request each)."""
    store = Store.from_url(valkey.url, Keys("pool"), timeout=TIMEOUT)
    try:
        await asyncio.gather(*(store.call("get", store.client.get, "x") for _ in range(8)))
        valkey.kill()
        await asyncio.sleep(0.1)
        valkey.start()
        results = await asyncio.gather(
            *(store.call("get", store.client.get, "x") for _ in range(8)),
            return_exceptions=True,
        )
        assert results == [None] * 8
    finally:
        await store.close()


@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_store_calls_fail_within_the_timeout(valkey: Valkey, fault: str) -> None:
    """A store that is down, or that accepts and never answers, fails a call within the
    configured timeout: no retries, no hang."""
    store = Store.from_url(valkey.url, Keys("t"), timeout=TIMEOUT)
    try:
        await store.call("get", store.client.get, "x")
        valkey.kill() if fault == "killed" else valkey.pause()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.run("settle", ["a"], [])
            assert time.monotonic() - started < 2 * TIMEOUT + 0.2
    finally:
        if fault == "paused":
            valkey.resume()
        await store.close()


async def test_an_exhausted_pool_fails_at_once(valkey: Valkey) -> None:
    """More calls in flight than pooled connections, on a store that does not answer: the
    extra calls fail at once rather than queue behind the stuck ones."""
    from tollway.limits.connect import connect

    store = Store(connect(valkey.url, TIMEOUT, max_connections=2), Keys("t"))
    try:
        valkey.pause()
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.call("get", store.client.get, "x") for _ in range(6)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert time.monotonic() - started < 2 * TIMEOUT + 0.2
        assert sum("Too many connections" in str(r) for r in results) == 4
    finally:
        valkey.resume()
        await store.close()


# --- fail-closed -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_closed_refuses_quickly_in_each_format_and_recovers(
    make_stack, valkey: Valkey, fault: str
) -> None:
    stack = make_stack("closed")
    key = stack.key()
    oa, an = stack.openai(key), stack.anthropic(key)
    oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    settled(stack)
    before = stack.snapshot()

    valkey.kill() if fault == "killed" else valkey.pause()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as oe:
        oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert time.monotonic() - started < FAST
    assert oe.value.status_code == 503
    assert oe.value.body["code"] == "store_unavailable"
    started = time.monotonic()
    with pytest.raises(anthropic.OverloadedError) as ae:
        an.messages.create(
            model="claude-haiku-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert time.monotonic() - started < FAST
    assert ae.value.status_code == 529
    assert ae.value.body["error"]["type"] == "overloaded_error"
    # A key this process never saw cannot be authenticated without the store.
    started = time.monotonic()
    r = fetch(
        "POST",
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"authorization": "Bearer tw-unknown"},
    )
    assert r.status == 503 and time.monotonic() - started < FAST
    ready = fetch("GET", stack.url + "/readyz")
    assert ready.status == 503 and ready.json()["store"] is False
    assert fetch("GET", stack.url + "/healthz").status == 200
    assert metric(stack, "tollway_store_unavailable_requests_total", policy="closed") == 3

    valkey.start() if fault == "killed" else valkey.resume()
    wait_for(lambda: fetch("GET", stack.url + "/readyz").status == 200, 10, "readiness")
    assert len(stack.fake.responses) == 1  # nothing refused was forwarded
    if fault == "paused":
        # A store that answers too late may still run the admission it was sent after the
        # proxy gave up: that leaves a hold, never a debit, and the hold expires.
        after = stack.snapshot()
        assert without_holds(after) == without_holds(before)
        stack.clock.advance(seconds=stack.holder.current.store.hold_ttl_seconds + 60)
        assert_no_holds_after_purge(stack)
        stack.clock.advance(seconds=-(stack.holder.current.store.hold_ttl_seconds + 60))
    else:
        assert stack.snapshot() == before  # nothing refused was charged
    oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    settled(stack)
    assert_charged_exactly(stack)


# --- fail-open ---------------------------------------------------------------------------------


def test_open_serves_without_limits_and_the_journal_settles_at_request_time(
    make_stack, valkey: Valkey
) -> None:
    stack = make_stack("open")
    key = stack.key()
    assert post(stack, 0, key).status == 200  # the key is now known to this process
    settled(stack)
    day_before = periods(stack.clock.now_ms(), stack.holder.current.server.tzinfo)[1]

    valkey.kill()
    for i in range(8):
        r = post(stack, i, key)
        assert r.status == 200, r.body
        assert not [h for h in r.headers if "ratelimit" in h.lower()]  # no limits applied
    settled(stack)
    unknown = fetch(
        "POST",
        stack.url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
        headers={"x-api-key": "tw-unknown", "anthropic-version": "2023-06-01"},
    )
    assert unknown.status == 529
    ready = fetch("GET", stack.url + "/readyz")
    assert ready.status == 200 and ready.json()["store"] is False
    assert metric(stack, "tollway_store_unavailable_requests_total", policy="open") == 8
    assert metric(stack, "tollway_store_unavailable_requests_total", policy="closed") == 1
    assert metric(stack, "tollway_journal_entries_total", event="written") == 8
    assert metric(stack, "tollway_journal_pending") == 8

    # Replayed two days later, the settlements still land on the day of the requests.
    stack.clock.advance(seconds=2 * 86400)
    valkey.start()
    wait_for(lambda: metric(stack, "tollway_journal_pending") == 0, REPLAY_WAIT, "the replay")
    assert metric(stack, "tollway_journal_entries_total", event="replayed") == 8
    assert not list((stack.tmp / ".tollway" / "journal").glob("*.jsonl"))
    assert_charged_exactly(stack)
    days = {e["day"] for e in stack.ledger("acme")}
    assert days == {day_before}


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_a_known_key_on_an_unmetered_route_while_the_store_is_down(
    make_stack, valkey: Valkey, policy: str
) -> None:
    """Unmetered routes re-read a key older than a second; with the store down, fail-open
    serves a key this process knows, fail-closed refuses it."""
    stack = make_stack(policy)
    key = stack.key()
    assert (
        fetch("GET", stack.url + "/v1/models", headers={"authorization": f"Bearer {key}"}).status
        == 200
    )
    valkey.kill()
    time.sleep(1.1)  # real time: the process's key cache is re-read after one second
    reply = fetch("GET", stack.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert reply.status == (200 if policy == "open" else 503)


# --- under load --------------------------------------------------------------------------------


def load_through_an_outage(stack: FaultStack, key: str, down, up, seconds: float = 3.0):
    """Mixed traffic for `seconds`; one second in, `down()`; a second later, `up()`.
    Returns the load's result once every settlement, journaled ones included, is done."""

    async def scenario():
        load = asyncio.ensure_future(drive([stack.url], key, seconds=seconds, concurrency=6))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(down)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(up)
        return await load

    result = asyncio.run(scenario())
    settled(stack)
    wait_for(lambda: metric(stack, "tollway_journal_pending") == 0, REPLAY_WAIT, "the replay")
    return result


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_kill_and_restart_under_load_charges_exactly(make_stack, valkey: Valkey, policy: str):
    """A SIGKILL of the store mid-load (appendfsync always), then a restart: nothing
    settled is lost, nothing is charged twice, nothing refused is charged."""
    stack = make_stack(policy)
    key = stack.key()
    assert post(stack, 0, key).status == 200
    result = load_through_an_outage(stack, key, valkey.kill, valkey.start)
    journaled = metric(stack, "tollway_journal_entries_total", event="written")
    print(f"{policy}: sent {result.sent}, statuses {dict(result.statuses)}, journaled {journaled}")
    assert not result.errors, result
    refused = result.statuses[503] + result.statuses[529]
    assert result.ok + refused == result.sent, result
    if policy == "closed":
        assert refused > 0
    else:
        assert refused == 0 and metric(stack, "tollway_journal_entries_total", event="written")
    # Every answer that was served reached the upstream; none that was refused did.
    assert len(stack.fake.responses) == result.ok + 1
    assert_charged_exactly(stack)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restart_with_everysec_loses_no_settled_debit(make_stack, tmp_path: Path, how: str):
    """appendfsync everysec: a graceful stop (SIGTERM) flushes the AOF; a killed process
    loses nothing either, since the server writes the AOF before it answers (only the
    machine's own crash could lose the last second)."""
    server = Valkey(tmp_path / "everysec", fsync="everysec")
    server.start()
    try:
        stack = make_stack("closed", url=server.url)
        key = stack.key()
        down = server.stop if how == "stop" else server.kill
        result = load_through_an_outage(stack, key, down, server.start, seconds=2.5)
        assert result.ok > 0 and not result.errors
        assert_charged_exactly(stack)
    finally:
        server.close()


@pytest.mark.parametrize("fault", ["out of memory", "read-only", "misconf", "busy"])
def test_a_store_that_refuses_writes_is_unavailable(make_stack, valkey: Valkey, fault: str):
    """Out of memory (maxmemory, noeviction), read-only (a primary demoted in a failover),
    MISCONF (writes stopped after a failed snapshot) or BUSY (a script past its time
    limit): the store answers, but refuses. Requests are refused in their format (never a
    500), settlements are journaled, and once it serves again the ledger is exact."""
    stack = make_stack("closed")
    key = stack.key()
    assert post(stack, 0, key).status == 200
    settled(stack)
    admin = stack.redis
    refusals = {
        "out of memory": (_oom, lambda a: a.config_set("maxmemory", "0")),
        "read-only": (
            lambda a: a.execute_command("REPLICAOF", "127.0.0.1", "1"),
            lambda a: a.execute_command("REPLICAOF", "NO", "ONE"),
        ),
        "misconf": (lambda a: _misconf(a, valkey.pid), _snapshots_work),
        "busy": (_busy, _end_busy),
    }
    refuse, accept = refusals[fault]

    def refuse_writes() -> None:
        refuse(admin)

    def accept_writes() -> None:
        accept(admin)

    result = load_through_an_outage(stack, key, refuse_writes, accept_writes)
    refused = result.statuses[503] + result.statuses[529]
    assert refused > 0 and result.ok + refused == result.sent, result
    assert not result.errors
    assert_charged_exactly(stack)


def _oom(admin) -> None:
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")


def _misconf(admin, server_pid: int) -> None:
    """A snapshot that fails (its child process killed mid-save): with save points set,
    the server stops writes and answers MISCONF."""
    admin.config_set("save", "3600 1")
    admin.config_set("rdb-key-save-delay", "1000000")  # µs per key: the child takes its time
    admin.bgsave()
    wait_for(lambda: _children(server_pid), 10, "the snapshot's child process")
    for child in _children(server_pid):
        os.kill(child, signal.SIGKILL)
    status = lambda: admin.info("persistence")["rdb_last_bgsave_status"]  # noqa: E731
    wait_for(lambda: status() == "err", 10, "a failed snapshot")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _snapshots_work(admin) -> None:
    admin.config_set("rdb-key-save-delay", "0")
    admin.bgsave()
    wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a save")
    admin.config_set("save", "")


_BUSY_SCRIPT = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) + 5
while tonumber(redis.call('TIME')[1]) < stop do end
return 1
"""


def _busy(admin) -> None:
    """A script running past busy-reply-threshold: every other client gets BUSY."""
    import threading

    import redis

    admin.config_set("busy-reply-threshold", "100")
    url = admin.connection_pool.connection_kwargs
    runner = redis.Redis(host=url["host"], port=url["port"], socket_timeout=10)

    def run() -> None:
        with contextlib.suppress(redis.exceptions.ResponseError):  # killed: "script killed"
            runner.eval(_BUSY_SCRIPT, 0)
        runner.close()

    threading.Thread(target=run, daemon=True).start()
    wait_for(lambda: _is_busy(admin), 5, "BUSY")


def _is_busy(admin) -> bool:
    import redis

    try:
        admin.ping()
    except redis.exceptions.ResponseError as e:
        return str(e).startswith("BUSY")
    return False


def _end_busy(admin) -> None:
    admin.script_kill()
    wait_for(lambda: not _is_busy(admin), 5, "the end of BUSY")
    admin.config_set("busy-reply-threshold", "5000")


# --- exactly once ------------------------------------------------------------------------------


def test_a_settlement_retried_charges_once(make_stack) -> None:
    stack = make_stack()
    meter = stack.meter
    principal = Principal("acme", "key_x")
    usage = Usage(input_tokens=100, output_tokens=50)
    stack.run(meter.admit(principal, "req_twice", "gpt-4o-mini", 100, 15))
    first = stack.run(meter.settle(Charge(principal, "req_twice", "gpt-4o-mini", usage, 45, True)))
    after_first = stack.snapshot()
    second = stack.run(meter.settle(Charge(principal, "req_twice", "gpt-4o-mini", usage, 45, True)))
    assert not first.duplicate and second.duplicate
    assert second.cost == first.cost == 45
    assert stack.snapshot() == after_first
    assert len(ledger_debits(stack)) == 1


def test_a_settle_whose_reply_was_lost_is_journaled_and_charged_once(make_stack, valkey: Valkey):
    """The settle script ran, but its answer never came back (a timeout around a write
    that happened): the proxy journals it, the replay finds it settled, nothing doubles."""
    relay = TcpProxy(valkey.port)
    try:
        stack = make_stack("closed", url=relay.url)
        stack.inspect_via(valkey.url)
        key = stack.key()
        stack.fake.behavior.pause_after_chunks = 2
        oa = stack.openai(key)
        stream = oa.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        next(iter(stream))  # admitted: the answer is flowing
        relay.set_mode("drop_replies")
        stack.fake.release()
        list(stream)
        settled(stack)
        assert metric(stack, "tollway_journal_entries_total", event="written") == 1
        assert len(ledger_debits(stack)) == 1  # the write happened
        relay.set_mode("pass")
        wait_for(lambda: metric(stack, "tollway_journal_pending") == 0, REPLAY_WAIT, "replay")
        assert metric(stack, "tollway_journal_entries_total", event="replayed") == 1
        assert len(ledger_debits(stack)) == 1
        assert_charged_exactly(stack)
    finally:
        relay.close()


def test_a_client_side_timeout_around_a_real_settle_never_doubles(make_stack, valkey) -> None:
    relay = TcpProxy(valkey.port)
    try:
        stack = make_stack("closed", url=relay.url)
        stack.inspect_via(valkey.url)
        meter = stack.meter
        principal = Principal("acme", "key_x")
        usage = Usage(input_tokens=10, output_tokens=5)
        stack.run(meter.admit(principal, "req_lost", "gpt-4o-mini", 10, 2))
        relay.set_mode("drop_replies")
        with pytest.raises(StoreUnavailable):
            stack.run(meter.settle(Charge(principal, "req_lost", "gpt-4o-mini", usage, 5, True)))
        relay.set_mode("pass")
        after_lost = stack.snapshot()
        retried = stack.run(
            meter.settle(Charge(principal, "req_lost", "gpt-4o-mini", usage, 5, True))
        )
        assert retried.duplicate and retried.cost == 5
        assert stack.snapshot() == after_lost
        assert len(ledger_debits(stack)) == 1
    finally:
        relay.close()


def test_a_stuck_settlement_never_delays_the_answer(make_stack, valkey: Valkey) -> None:
    """The store stops answering while the upstream works: the client has its JSON answer
    at once, while the settlement waits out the store's timeout and goes to the journal."""
    relay = TcpProxy(valkey.port)
    try:
        stack = make_stack("closed", url=relay.url, timeout=3.0)
        stack.inspect_via(valkey.url)
        key = stack.key()
        upstream = ScriptedUpstream(stack)
        stack.point_upstreams_to(upstream.url)
        answer = {"id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
                  "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}  # fmt: skip
        upstream.script = Script(pieces=[orjson.dumps(answer)])

        async def store_goes_silent() -> None:  # admitted by now; the settle is next
            relay.set_mode("blackhole", wait=False)
            await asyncio.sleep(0.1)

        upstream.on_request = store_goes_silent
        started = time.monotonic()
        assert post(stack, 0, key).status == 200
        # The settlement is stuck for the 3 s store timeout; the answer did not wait.
        assert time.monotonic() - started < 2.0
        wait_for(
            lambda: metric(stack, "tollway_journal_entries_total", event="written") == 1,
            10,
            "the stuck settlement to time out into the journal",
        )
        relay.set_mode("pass")
        wait_for(lambda: metric(stack, "tollway_journal_pending") == 0, REPLAY_WAIT, "replay")
        day = stack.day()
        assert (day["org|in"], day["org|out"], day["org|req"]) == (9, 4, 1)
        assert len(ledger_debits(stack)) == 1
        upstream.close()
    finally:
        relay.close()
