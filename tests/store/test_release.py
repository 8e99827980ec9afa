"""A late admission is released: when an admit timed out (a slow store; Tollway answered
503 or served fail-open), `Meter.release` gives its reservation back if it ran, and makes
it take nothing if it runs afterwards. Against a real server."""

from __future__ import annotations

import pytest
from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge, Meter
from tollway.limits.usage import Usage

ENV = {"OPENAI_API_KEY": "x"}
CONFIG = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
organizations:
  acme:
    limits: {rpm: 100, tpm: 6000}
    billing: {mode: prepaid}
"""


@pytest.fixture
async def world(store, clock):
    cfg = parse_config_text(CONFIG, "test.yaml", ENV)
    meter = Meter(store, clock, lambda: cfg)
    record, _ = await ApiKeys(store).create("acme", clock.now_ms())
    await Credits(store, clock, lambda: cfg).buy("acme", 10_000_000)
    return meter, record.principal


def levels(decision) -> dict[str, int]:
    return {b.spec.limit: b.remaining for b in decision.buckets}


async def account(store) -> dict[str, str]:
    return await store.client.hgetall(store.keys.account("acme"))


async def test_an_admission_that_ran_is_given_back(world, store) -> None:
    meter, p = world
    before = await account(store)
    d = await meter.admit(p, "late1", "m", 1000, 5000)
    assert d.admitted and levels(d)["tpm"] == 5000
    assert int((await account(store))["held"]) == 5000
    assert await meter.release(p, "late1") is True
    after = await account(store)
    assert int(after.pop("held")) == 0 and after == before  # the held money is back
    assert await store.client.zscore(store.keys.holds("acme"), "late1") is None
    # The tokens are back: the next admission sees the whole bucket less its own.
    d = await meter.admit(p, "next", "m", 1, 1)
    assert levels(d)["tpm"] == 5999
    assert levels(d)["rpm"] == 98  # the released request keeps its one request, as a failure


async def test_an_admission_that_runs_after_the_release_takes_nothing(world, store) -> None:
    meter, p = world
    assert await meter.release(p, "late2") is False  # nothing admitted yet
    before = await account(store)
    d = await meter.admit(p, "late2", "m", 1000, 5000)
    assert not d.admitted and d.reason == "late"
    assert await account(store) == before
    assert await store.client.zscore(store.keys.holds("acme"), "late2") is None
    d = await meter.admit(p, "next", "m", 1, 1)
    assert levels(d)["tpm"] == 5999 and levels(d)["rpm"] == 99


async def test_release_and_settlement_in_either_order_charge_once(world, store) -> None:
    meter, p = world
    usage = Usage(input_tokens=100, output_tokens=10)
    # Served fail-open: its settlement runs first, the late admit after, then the release.
    await meter.settle(Charge(p, "open1", "m", usage, 110, True))
    await meter.admit(p, "open1", "m", 1000, 5000)
    await meter.release(p, "open1")
    acct = await account(store)
    assert int(acct.get("held", 0)) == 0
    d = await meter.admit(p, "next", "m", 1, 1)
    assert levels(d)["tpm"] == 6000 - 110 - 1
