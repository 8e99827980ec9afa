"""Auto-reload against a fake payment webhook (a real aiohttp app on loopback): one
purchase under a burst of settlements and across replicas, none without a payment method,
failed payments retried with one idempotency key and never credited, run-time settings."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any

import aiohttp
import pytest
from tollway.limits.credits import Credits
from tollway.limits.money import parse_usd
from tollway.limits.payments import NoPaymentProvider
from tollway.proxy.runtime.app import AUTO_RELOADER
from tollway.proxy.runtime.autoreload import AutoReloader
from tollway.proxy.runtime.payment_webhook import WebhookPaymentProvider

from tests.support import stack as stack_module
from tests.support.fakepayments import SECRET, FakePayments
from tests.support.ledgerkit import ledger_events

USD = parse_usd
MODEL = "claude-sonnet-4-6"  # 3 USD/M in, 15 USD/M out
HELLO = [{"role": "user", "content": "Say hello"}]  # 5 input tokens at the fake


def orgs(url: str | None, reload: str = "{threshold: 1.00, target: 5.00}") -> str:
    payment = (
        f"{{provider: webhook, webhook_url: '{url}', secret_env: PAY_SECRET}}"
        if url
        else "{provider: none}"
    )
    auto = f"      auto_reload: {reload}\n" if reload else ""
    return (
        "organizations:\n  acme:\n    billing:\n      mode: prepaid\n"
        + auto
        + f"      payment: {payment}\n"
    )


@pytest.fixture
def pay_stack(stack_factory, monkeypatch):
    """(stack, payments, url): a prepaid org whose payment method is the fake webhook."""
    monkeypatch.setitem(stack_module.ENV, "PAY_SECRET", SECRET)
    stack = stack_factory(orgs(None))
    payments = FakePayments()
    runner, url = stack.run(payments.start())
    stack.reconfigure(orgs(url))
    auto_reloader = stack.app[AUTO_RELOADER]
    auto_reloader.base_delay = 0.01  # back-off 10, 20, 40 ms... instead of seconds
    auto_reloader.max_attempts = 3
    yield stack, payments, url
    stack.run(runner.cleanup())


def credits(stack) -> Credits:
    return Credits(stack.store, stack.clock)


def balance(stack):
    return stack.run(credits(stack).balance("acme"))


def events(stack, kind: str) -> list[dict[str, str]]:
    return stack.ledger("acme", kind)


def counted(stack, result: str) -> float:
    value = stack.metrics.registry.get_sample_value(
        "tollway_auto_reloads_total", {"org": "acme", "result": result}
    )
    return value or 0.0


def wait_auto_reloads(stack) -> None:
    """Wait for every reload the proxy started (they run in the background)."""

    async def drain() -> None:
        auto_reloader = stack.app[AUTO_RELOADER]
        for _ in range(1000):
            if not auto_reloader.tasks:
                return
            await asyncio.gather(*auto_reloader.tasks, return_exceptions=True)
        raise AssertionError("reloads keep starting")

    stack.run(drain())


def burst(stack, key: str, n: int) -> None:
    async def go() -> None:
        client = stack.async_anthropic(key)
        try:
            await asyncio.gather(
                *(
                    client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
                    for _ in range(n)
                )
            )
        finally:
            await client.close()

    asyncio.run(go())
    stack.wait_settled()


def assert_ledger_replays(stack) -> None:
    b = balance(stack)
    assert stack.run(credits(stack).recompute_from_ledger("acme")) == b.lots_total - b.debt


# --- one purchase under a burst --------------------------------------------------------------
def test_a_burst_of_settlements_makes_exactly_one_purchase(pay_stack):
    stack, payments, _ = pay_stack
    payments.delay = 0.3  # the purchase is still in flight while more settlements arrive
    stack.run(credits(stack).buy("acme", USD("1.50")))
    stack.fake.behavior.output_tokens = 10_000  # 0.150015 USD per request
    burst(stack, stack.key(), 20)
    wait_auto_reloads(stack)

    assert len(payments.calls) == 1
    call = payments.calls[0]
    assert call["signature_ok"] and call["idempotency_header"] == call["json"]["idempotency_key"]
    [reload] = events(stack, "reload")
    assert reload["ref"] == "pay_1"
    assert int(reload["amount"]) == call["json"]["amount_micro"]
    assert reload["amount"] == str(USD(call["json"]["amount_usd"]))  # the string is exact
    lots = [lot for lot in stack.run(credits(stack).lots("acme")) if lot.source == "reload"]
    assert len(lots) == 1 and lots[0].kind == "purchased" and lots[0].ref == "pay_1"
    assert counted(stack, "paid") == 1 and counted(stack, "failed") == 0
    # 20 requests of 0.150015: 3.0003 USD from 1.50; the reload brought it to 5 at its time.
    b = balance(stack)
    assert b.lots_total - b.debt == USD("1.50") + lots[0].amount - 20 * 150_015
    assert_ledger_replays(stack)


def test_two_replicas_never_have_two_reloads_in_flight(pay_stack):
    stack, payments, _ = pay_stack
    payments.delay = 0.2
    stack.run(credits(stack).buy("acme", USD("0.50")))  # below the threshold of 1
    mine = stack.app[AUTO_RELOADER]

    async def both() -> list[Any]:
        other = AutoReloader(
            stack.holder, stack.store, stack.clock, stack.metrics, mine.session, base_delay=0.01
        )
        tasks = [r.start("acme") for r in (mine, other, mine, other)]
        assert tasks[2] is None and tasks[3] is None  # in-process guard: one per process
        return await asyncio.gather(*(t for t in tasks if t is not None))

    results = stack.run(both())
    assert sorted(results) == ["busy", "paid"]  # the other replica found the Redis lock
    assert len(payments.calls) == 1 and payments.max_in_flight == 1
    assert balance(stack).available == USD("5")
    assert stack.redis.get(stack.keys.auto_reload_lock("acme")) is None  # released
    # Settlements computed before the purchase may still ask for one: the balance is read
    # again under the lock, and nothing more is bought.
    assert stack.run(mine.purchase("acme")) == "not_needed"
    assert len(payments.calls) == 1


# --- no payment method ------------------------------------------------------------------------
def test_no_payment_method_means_no_purchase_ever(stack_factory):
    stack = stack_factory(orgs(None))
    stack.run(credits(stack).buy("acme", USD("1.05")))
    stack.fake.behavior.output_tokens = 10_000
    burst(stack, stack.key(), 3)  # 1.05 - 0.45: below the threshold of 1
    wait_auto_reloads(stack)
    assert counted(stack, "skipped") == 3 and counted(stack, "paid") == 0
    assert events(stack, "reload") == [] and events(stack, "reload_failed") == []
    assert balance(stack).available == USD("1.05") - 3 * 150_015
    assert isinstance(stack.app[AUTO_RELOADER].provider(stack.holder.current.organizations["acme"]),
                      NoPaymentProvider)  # fmt: skip
    assert_ledger_replays(stack)


# --- failed payments ------------------------------------------------------------------------------
def test_a_failing_webhook_is_retried_and_creates_no_credit(pay_stack):
    stack, payments, _ = pay_stack
    payments.mode = "500"
    stack.run(credits(stack).buy("acme", USD("0.50")))
    lots_before = stack.run(credits(stack).lots("acme"))
    assert stack.run(stack.app[AUTO_RELOADER].purchase("acme")) == "failed"

    assert len(payments.calls) == 3  # max_attempts
    keys = {c["json"]["idempotency_key"] for c in payments.calls}
    assert len(keys) == 1  # one purchase, one key, across its retries
    assert {c["json"]["amount_micro"] for c in payments.calls} == {USD("4.50")}
    failed = events(stack, "reload_failed")
    assert [f["attempt"] for f in failed] == ["1", "2", "3"]
    assert all(f["error"] == "payment webhook answered 500" for f in failed)
    assert {f["key"] for f in failed} == keys
    assert counted(stack, "failed") == 3 and counted(stack, "paid") == 0
    assert stack.run(credits(stack).lots("acme")) == lots_before
    assert balance(stack).available == USD("0.50")
    assert events(stack, "reload") == []
    assert_ledger_replays(stack)


def test_a_payment_that_succeeds_on_retry_credits_once(pay_stack):
    stack, payments, _ = pay_stack
    payments.fail_first = 2
    stack.run(credits(stack).buy("acme", USD("0.25")))
    assert stack.run(stack.app[AUTO_RELOADER].purchase("acme")) == "paid"
    assert len(payments.calls) == 3
    assert len({c["json"]["idempotency_key"] for c in payments.calls}) == 1
    assert len(events(stack, "reload_failed")) == 2
    [reload] = events(stack, "reload")
    assert (reload["ref"], int(reload["amount"])) == ("pay_3", USD("4.75"))
    assert balance(stack).available == USD("5")
    assert counted(stack, "failed") == 2 and counted(stack, "paid") == 1
    assert_ledger_replays(stack)


# --- run-time settings ---------------------------------------------------------------------------
def test_run_time_settings_apply_to_the_next_settlement(pay_stack):
    stack, payments, url = pay_stack
    stack.reconfigure(orgs(url, reload=""))  # no auto-reload in the config
    stack.run(credits(stack).buy("acme", USD("2")))
    stack.fake.behavior.output_tokens = 10_000
    key = stack.key()
    burst(stack, key, 1)
    wait_auto_reloads(stack)
    assert payments.calls == []
    stack.run(credits(stack).set_auto_reload("acme", USD("3"), USD("10")))
    burst(stack, key, 1)
    wait_auto_reloads(stack)
    assert len(payments.calls) == 1
    assert balance(stack).available == USD("10")
    stack.run(credits(stack).disable_auto_reload("acme"))
    stack.run(credits(stack).set_auto_reload("acme", USD("20"), USD("30")))
    stack.run(credits(stack).disable_auto_reload("acme"))
    burst(stack, key, 1)
    wait_auto_reloads(stack)
    assert len(payments.calls) == 1  # off wins over the config and earlier overrides
    assert_ledger_replays(stack)


# --- the webhook provider on its own --------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("500", "payment webhook answered 500"),
        ("no_id", "payment webhook answered without a payment_id"),
        ("bad_json", "payment webhook answered without a payment_id"),
    ],
)
async def test_webhook_answers_that_are_not_payments(mode, error):
    payments = FakePayments(mode=mode)
    runner, url = await payments.start()
    try:
        async with aiohttp.ClientSession() as session:
            result = await WebhookPaymentProvider(url, SECRET, session).charge("acme", 7, "k1")
    finally:
        await runner.cleanup()
    assert (result.ok, result.payment_id, result.error) == (False, None, error)


async def test_webhook_request_is_exact_and_signed():
    payments = FakePayments()
    runner, url = await payments.start()
    try:
        async with aiohttp.ClientSession() as session:
            provider = WebhookPaymentProvider(url, SECRET, session)
            result = await provider.charge("acme", 12_345_678, "key-1")
            unsigned = await WebhookPaymentProvider(url, None, session).charge("acme", 1, "k")
    finally:
        await runner.cleanup()
    assert (result.ok, result.payment_id) == (True, "pay_1")
    assert payments.calls[0]["json"] == {
        "org": "acme",
        "amount_usd": "12.345678",
        "amount_micro": 12_345_678,
        "idempotency_key": "key-1",
    }
    assert payments.calls[0]["signature_ok"]
    assert not unsigned.ok and unsigned.error == "payment webhook answered 401"


async def test_webhook_timeout_and_connection_refused_are_failures(unused_tcp_port):
    payments = FakePayments(delay=2.0)
    runner, url = await payments.start()
    try:
        async with aiohttp.ClientSession() as session:
            # Real time: the provider's own timeout (0.2 s) must run out.
            slow = await WebhookPaymentProvider(url, SECRET, session, timeout=0.2).charge(
                "acme", 1, "k"
            )
            closed = f"http://127.0.0.1:{unused_tcp_port}/pay"
            refused = await WebhookPaymentProvider(closed, SECRET, session).charge("acme", 1, "k")
    finally:
        await runner.cleanup()
    assert (slow.ok, slow.error) == (False, "payment webhook timed out")
    assert not refused.ok and refused.error.startswith("payment webhook unreachable")


# --- written down before paying, finished after a crash ---------------------------------------
def pending(stack) -> list[dict[str, Any]]:
    return stack.run(stack.app[AUTO_RELOADER].workflow.pending("acme"))


def test_reload_started_is_recorded_before_the_payment_provider_is_called(pay_stack):
    stack, payments, _ = pay_stack
    payments.delay = 0.3
    stack.run(credits(stack).buy("acme", USD("0.50")))
    seen: dict[str, Any] = {}

    async def run() -> str:
        task = stack.app[AUTO_RELOADER].start("acme")
        while not payments.in_flight:  # the provider has been called
            await asyncio.sleep(0.01)
        seen["started"] = await ledger_events(stack.reader, "acme", "reload_started")
        seen["pending"] = await stack.app[AUTO_RELOADER].workflow.pending("acme")
        return await task

    assert stack.run(run()) == "paid"
    [started] = seen["started"]
    [entry] = seen["pending"]
    key = payments.calls[0]["json"]["idempotency_key"]
    assert started["key"] == entry["key"] == key
    assert int(started["amount"]) == entry["amount"] == USD("4.50")
    assert pending(stack) == []  # finished
    [lot] = [lot for lot in stack.run(credits(stack).lots("acme")) if lot.source == "reload"]
    assert lot.id == started["lot"]


class DiesAfterPaying:
    """A payment provider through which the payment is made, after which the process dies
    (the task is cancelled before the lot is added)."""

    def __init__(self, inner: WebhookPaymentProvider) -> None:
        self.inner = inner

    async def charge(self, org: str, amount_micro: int, idempotency_key: str):
        await self.inner.charge(org, amount_micro, idempotency_key)
        raise asyncio.CancelledError


def test_a_payment_made_before_the_process_died_is_credited_by_reconciliation(pay_stack):
    stack, payments, _ = pay_stack
    stack.run(credits(stack).buy("acme", USD("0.50")))
    auto_reloader = stack.app[AUTO_RELOADER]
    org_cfg = stack.holder.current.organizations["acme"]
    dying = DiesAfterPaying(auto_reloader.provider(org_cfg))
    with pytest.raises((asyncio.CancelledError, concurrent.futures.CancelledError)):
        stack.run(auto_reloader.workflow.purchase("acme", org_cfg.billing.auto_reload, dying))
    assert len(payments.paid) == 1  # the customer paid...
    assert balance(stack).available == USD("0.50")  # ...and has no credit yet
    [entry] = pending(stack)

    # Too early: the purchase might still be running in another process.
    assert stack.run(auto_reloader.reconcile()) == 0
    stack.clock.advance(ms=auto_reloader.lock_ttl_ms())
    stack.redis.delete(stack.keys.auto_reload_lock("acme"))  # a dead process's lock expires
    assert stack.run(auto_reloader.reconcile()) == 1
    assert len(payments.calls) == 2 and len(payments.paid) == 1  # asked again, paid once
    assert payments.calls[1]["json"]["idempotency_key"] == entry["key"]
    [lot] = [lot for lot in stack.run(credits(stack).lots("acme")) if lot.source == "reload"]
    assert (lot.id, lot.amount, lot.ref) == (
        entry["lot"],
        USD("4.50"),
        payments.paid[entry["key"]],
    )
    assert balance(stack).available == USD("5")
    assert pending(stack) == [] and counted(stack, "reconciled") == 1
    assert stack.run(auto_reloader.reconcile()) == 0  # nothing twice
    assert_ledger_replays(stack)


def test_reconciliation_of_a_lot_already_added_only_clears_the_entry(pay_stack):
    stack, payments, _ = pay_stack
    stack.run(credits(stack).buy("acme", USD("0.50")))
    auto_reloader = stack.app[AUTO_RELOADER]
    assert stack.run(auto_reloader.purchase("acme")) == "paid"
    [lot] = [lot for lot in stack.run(credits(stack).lots("acme")) if lot.source == "reload"]
    # A process that died after adding the lot, before removing its entry:
    key = payments.calls[0]["json"]["idempotency_key"]
    entry = {"key": key, "amount": lot.amount, "lot": lot.id, "started": 0}
    stack.redis.hset(stack.keys.auto_reload_pending("acme"), key, json.dumps(entry))
    assert stack.run(auto_reloader.reconcile()) == 0
    assert pending(stack) == [] and len(payments.calls) == 1
    assert balance(stack).available == USD("5")
