"""The metering path against a real 3-primary Redis Cluster and a Sentinel-managed primary.

Both are built from the embedded Valkey binary (tests/support/valkeycluster.py) once per session.
The same end-to-end checks run on each: requests admitted and settled through the proxy
with the official SDK, a bucket refusal, a credit debit and a credit refusal, a spend-cap
refusal, an idempotent settlement, hold purging (keys the scripts reach from prefixes, not
KEYS), and EVALSHA falling back to EVAL on a node that lost its script cache.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from redis.crc import key_slot
from tollway.limits.apikeys import ApiKeys
from tollway.limits.meter import Charge, periods
from tollway.limits.store import Store
from tollway.limits.usage import Usage

from tests.support.stack import Stack
from tests.support.valkeycluster import valkey_cluster, valkey_sentinel

pytestmark = pytest.mark.cluster

HELLO = [{"role": "user", "content": "Say hello"}]
CENT = 10_000  # micro-USD: 2000 input + 500 output tokens of gpt-4o ($2.50/M, $10/M)


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(scope="session")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_sentinel(tmp_path_factory.mktemp("sentinel")) as (url, _primary):
        yield url


@pytest.fixture(params=["cluster", "sentinel"])
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type]:
    url = request.getfixturevalue(f"{request.param}_url")
    made: list[Stack] = []

    def make(orgs_yaml: str) -> Stack:
        path = tmp_path / f"stack{len(made)}"
        path.mkdir()
        s = Stack(url, path, orgs_yaml=orgs_yaml)
        # Every answer costs exactly one cent (see CENT).
        s.fake.behavior.input_tokens, s.fake.behavior.output_tokens = 2000, 500
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


def chat(stack: Stack, key: str, **kw) -> openai.types.chat.ChatCompletion:
    return stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO, **kw)


def add_lot(stack: Stack, org: str, amount: int) -> None:
    """Buy credits by running the add_lot script itself (its KEYS are one org's)."""
    k, lot = stack.keys, "lot_" + secrets.token_hex(4)
    now = stack.clock.now_ms()
    keys = [k.account(org), k.lots(org), k.lot_expiries(org), k.lots_all(org), k.ledger(org)]
    keys.append(k.lot(org, lot))
    args = [
        now,
        lot,
        "purchased",
        amount,
        now + 365 * 86_400_000,
        "purchase",
        "",
        k.lot_prefix(org),
    ]
    stack.run(stack.store.run("add_lot", keys, args))


def day(stack: Stack, org: str = "acme") -> dict[str, int]:
    name = periods(stack.clock.now_ms(), stack.holder.current.server.tzinfo)[1]
    return stack.day(org, name)


def test_admit_and_settle_through_the_sdk(make_stack):
    stack = make_stack("organizations:\n  acme: {limits: {rpm: 100, tpm: 1000000}}\n")
    key = stack.key()
    assert chat(stack, key).choices[0].message.content == "Hello from the fake upstream!"
    streamed = list(chat(stack, key, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    stack.wait_settled()
    d = day(stack)
    assert (d["org|req"], d["org|in"], d["org|out"], d["org|cost"]) == (2, 4000, 1000, 2 * CENT)
    # Every key the scripts wrote for the organization sits in one slot.
    names = list(stack.snapshot())
    assert len(names) > 5
    assert len({key_slot(n.encode()) for n in names}) == 1


def test_bucket_refusal_changes_nothing(make_stack):
    stack = make_stack("organizations:\n  acme: {limits: {rpm: 2}}\n")
    key = stack.key()
    chat(stack, key)
    chat(stack, key)
    stack.wait_settled()
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError, match="Rate limit reached for rpm"):
        chat(stack, key)
    assert stack.snapshot() == before
    stack.clock.advance(seconds=30)  # half a minute refills one request of 2 per minute
    chat(stack, key)


def test_credits_debit_then_refuse(make_stack):
    stack = make_stack("organizations:\n  acme: {billing: {mode: prepaid}}\n")
    key = stack.key()
    add_lot(stack, "acme", 2 * CENT)  # lot keys are reached by prefix inside the scripts
    chat(stack, key)
    chat(stack, key)
    stack.wait_settled()
    acct = stack.redis.hgetall(stack.keys.account("acme"))
    assert int(acct["balance"]) == 0 and int(acct.get("held", 0)) == 0
    debits = stack.ledger("acme", "debit")
    assert len(debits) == 2
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError, match="credit balance is too low"):
        chat(stack, key)
    assert stack.snapshot() == before


def test_spend_cap_refusal_changes_nothing(make_stack):
    stack = make_stack("organizations:\n  acme: {spend_caps: {monthly: 0.02}}\n")
    key = stack.key()
    chat(stack, key)
    chat(stack, key)
    stack.wait_settled()
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError, match="spend cap"):
        chat(stack, key)
    assert stack.snapshot() == before


def test_settlement_is_idempotent(make_stack):
    stack = make_stack("organizations:\n  acme: {billing: {mode: prepaid}}\n")
    key = stack.key()
    add_lot(stack, "acme", 100 * CENT)
    raw = stack.openai(key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO
    )
    rid = raw.headers["x-request-id"]
    stack.wait_settled()
    before = stack.snapshot()
    principal = stack.run(ApiKeys(stack.store).resolve(key))
    again = stack.run(
        stack.meter.settle(Charge(principal, rid, "gpt-4o", Usage(2000, 500), CENT, True, None, 5))
    )
    assert again.duplicate and again.cost == CENT
    assert stack.snapshot() == before


def test_expired_holds_are_purged(make_stack):
    """A proxy that died mid-request leaves a hold; the next admission, on whatever node
    holds the organization's slot, gives its reservation back."""
    stack = make_stack("organizations:\n  acme: {billing: {mode: prepaid}, limits: {tpm: 10000}}\n")
    key = stack.key()
    add_lot(stack, "acme", 100 * CENT)
    principal = stack.run(ApiKeys(stack.store).resolve(key))
    decision = stack.run(stack.meter.admit(principal, "req_dead", "gpt-4o", 5000, CENT))
    assert decision.admitted
    acct = stack.keys.account("acme")
    assert int(stack.redis.hget(acct, "held")) == CENT
    stack.clock.advance(seconds=stack.holder.current.store.hold_ttl_seconds + 1)
    chat(stack, key)
    stack.wait_settled()
    assert int(stack.redis.hget(acct, "held")) == 0
    assert stack.redis.zcard(stack.keys.holds("acme")) == 0
    assert not stack.redis.exists(stack.keys.hold("acme", "req_dead"))


async def test_script_cache_loss_falls_back_to_eval(cluster_url: str):
    store = Store.from_url(cluster_url, timeout=2.0)
    try:
        await store.load_scripts()
        await store.client.script_flush()  # a cluster client sends it to every primary
        assert await store.client.script_exists(store.scripts["add_lot"].sha) == [False]
        keys = [store.keys.account("x"), store.keys.lots("x"), store.keys.lot_expiries("x")]
        keys += [store.keys.lots_all("x"), store.keys.ledger("x"), store.keys.lot("x", "l1")]
        args = [1000, "l1", "purchased", 5, 2000, "purchase", "", store.keys.lot_prefix("x")]
        assert await store.run("add_lot", keys, args) == [5, 0]
        await store.client.delete(*keys)
    finally:
        await store.close()


async def test_credit_operations_and_reports_on_the_cluster(cluster_url: str, tmp_path):
    """The credit API (scripts, single-slot transactions, pipelines), shipping and report
    reads, for organizations spread over the three primaries."""
    from datetime import date, timedelta

    from tollway.limits import reports
    from tollway.limits.clock import ManualClock
    from tollway.limits.credits import Credits
    from tollway.limits.history import History
    from tollway.limits.ledgerdb import SqliteLedger
    from tollway.limits.reconcile import reconcile
    from tollway.limits.rkeys import Keys

    store = Store.from_url(cluster_url, Keys("t" + secrets.token_hex(5)), timeout=2.0)
    store.history = History(store, SqliteLedger(tmp_path / "ledger.sqlite3"))
    credits = Credits(store, ManualClock())
    orgs = ["acme", "b", "c", "d"]  # their slots sit on all three primaries
    assert await store.ping()  # discovers the cluster
    nodes = {store.client.get_node_from_key(store.keys.account(o)).name for o in orgs}
    assert len(nodes) == 3
    try:
        for org in orgs:
            await credits.buy(org, 5_000_000)
            await credits.grant(org, 1_000_000, timedelta(days=30), identity="id-" + org)
            await credits.set_auto_reload(org, 1_000_000, 5_000_000)
            await credits.disable_auto_reload(org)
            await credits.clear_auto_reload(org)
            assert (await credits.balance(org)).available == 6_000_000
            assert len(await credits.lots(org)) == len(await credits.history(org)) == 2
            assert await credits.recompute_from_ledger(org) == 6_000_000
        assert await reports.find_sessions(store, orgs, "no-such-session") == []
        day = date(2026, 1, 1)
        assert (await reports.usage_report(store, "acme", "org", day, day)).total.empty
        assert await reconcile(store, orgs) == []
    finally:
        await store.history.close()
        await store.close()
