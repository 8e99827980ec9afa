"""The console in a real headless browser (Debian's chromium driven by Playwright), against
a whole stack: purchases, caps, limit-increase requests, roles, sessions. Every check of
money reads the store or an official SDK's answer, not only the page."""

from __future__ import annotations

import openai
import pytest
from playwright.sync_api import expect
from tollway.limits.admins import Credentials

from tests.support.browser import PHONE, api, go, sign_in
from tests.support.spendkit import balance, buy, chat, priced


def test_buying_credits_shows_the_new_balance_at_once(browser, console_world):
    w = console_world
    page = sign_in(browser, w.stack, w.secrets["acme/billing"])
    go(page, "billing", "Billing")
    expect(page.locator("#balance")).to_have_text("$0.00")
    page.get_by_label("Amount (USD)").fill("12.50")
    page.get_by_role("button", name="Buy credits").click()
    expect(page.locator("#balance")).to_have_text("$12.50")
    expect(page.locator("#status")).to_contain_text("Bought $12.50")
    # Paid through the configured payment provider, once, then credited.
    assert [c["json"]["amount_micro"] for c in w.payments.calls] == [12_500_000]
    assert balance(w.stack) == 12_500_000
    expect(page.get_by_role("table", name="Credit lots")).to_contain_text("purchased")
    # A refused payment adds nothing and says why.
    w.payments.mode = "500"
    page.get_by_label("Amount (USD)").fill("3")
    page.get_by_role("button", name="Buy credits").click()
    expect(page.locator("#status")).to_contain_text("payment was refused")
    expect(page.locator("#balance")).to_have_text("$12.50")
    assert balance(w.stack) == 12_500_000


def test_a_cap_set_in_the_console_refuses_the_next_sdk_request_naming_it(browser, console_world):
    w = console_world
    buy(w.stack, "5.00")
    priced(w.stack)
    service = w.stack.key("acme", name="batch")
    chat(w.stack, service)  # one cent of extra usage: no cap yet
    w.stack.wait_settled()
    page = sign_in(browser, w.stack, w.secrets["acme/admin"])
    go(page, "usage", "Usage")
    expect(page.locator("#org-spend")).to_have_text("$0.01")
    page.get_by_role("button", name="Edit limit of the organization").click()
    editor = page.get_by_role("form", name="Edit the cap of the organization")
    editor.get_by_label("Monthly cap (USD)").fill("0.01")
    editor.get_by_role("button", name="Adjust limit").click()
    expect(page.locator("#org-cap")).to_have_text("$0.01 (set here)")
    with pytest.raises(openai.RateLimitError) as e:
        chat(w.stack, service)
    assert "the organization monthly spend cap" in e.value.message
    # Unlimited lets the next one through.
    page.get_by_role("button", name="Edit limit of the organization").click()
    editor.get_by_role("button", name="Set unlimited").click()
    expect(page.locator("#org-cap")).to_have_text("Unlimited (set here)")
    chat(w.stack, service)


def test_a_member_asks_for_more_an_admin_approves_and_the_next_request_passes(
    browser, console_world
):
    w = console_world
    buy(w.stack, "5.00")
    priced(w.stack)
    alice = w.stack.key("acme", user="alice", name="alice laptop")
    for _ in range(3):  # 2 cents included, then 1 cent of extra reaches her tier's cap
        chat(w.stack, alice)
        w.stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="seat tier 'standard'"):
        chat(w.stack, alice)

    member = sign_in(browser, w.stack, alice)
    expect(member.locator("#page h2")).to_have_text("My usage")
    expect(member.locator("#my-spend")).to_have_text("$0.03")
    expect(member.locator("#my-included")).to_have_text("$0.00 of $0.02")
    expect(member.locator("#my-limit")).to_have_text("$0.01 of $0.01")
    member.get_by_label("What do you need it for? (optional)").fill("release on Friday")
    member.get_by_role("button", name="Request extra usage").click()
    expect(member.locator("#status")).to_contain_text("sent to your organization's admins")

    admin = sign_in(browser, w.stack, w.secrets["acme/admin"])
    go(admin, "requests", "Requests")
    row = admin.get_by_role("row").filter(has_text="release on Friday")
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text("standard")
    row.get_by_label("New limit (USD or unlimited)").fill("1.00")
    row.get_by_role("button", name="Increase limit").click()
    expect(admin.locator("#status")).to_contain_text("Approved alice's request")
    expect(admin.get_by_text("No pending requests.")).to_be_visible()

    chat(w.stack, alice)  # the very next request passes
    member.reload()
    expect(member.locator("#my-limit")).to_contain_text("of $1.00")


def test_a_billing_credential_cannot_change_a_cap(browser, console_world):
    w = console_world
    page = sign_in(browser, w.stack, w.secrets["acme/billing"])
    go(page, "usage", "Usage")
    expect(page.locator("#org-cap")).to_have_text("Unlimited")
    expect(page.get_by_role("button", name="Edit limit of the organization")).to_have_count(0)
    before = w.stack.snapshot("acme")
    for method, path, body in [
        ("PUT", "/admin/orgs/acme/caps/organization", {"amount": "1.00"}),
        ("PUT", "/admin/orgs/acme/caps/tiers/standard", {"amount": "unlimited"}),
        ("PUT", "/admin/orgs/acme/caps/users/alice", {"amount": "9.00"}),
        ("DELETE", "/admin/orgs/acme/caps/organization", None),
        ("PUT", "/admin/orgs/acme/extra-usage", {"enabled": False}),
    ]:
        status, answer = api(page, method, path, body)
        assert status == 403, (method, path, answer)
        assert "billing role cannot" in answer["error"]["message"]
    assert w.stack.snapshot("acme") == before
    # What billing may do, it does: auto-reload.
    go(page, "billing", "Billing")
    page.get_by_role("button", name="Edit auto-reload").click()
    page.get_by_label("Threshold (USD)").fill("2")
    page.get_by_label("Reload to (USD)").fill("20")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#auto-reload-state")).to_contain_text(
        "below $2.00, buy credit up to $20.00"
    )


def test_sessions_cookie_csrf_sign_out_and_revocation(browser, console_world):
    w = console_world
    page = sign_in(browser, w.stack, w.secrets["acme/owner"])
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "tollway_console",
        True,
        "Strict",
    )
    assert w.secrets["acme/owner"] not in cookie["value"]
    # A change without the CSRF token is refused and changes nothing.
    status, answer = api(page, "PUT", "/admin/orgs/acme/caps/organization", {"amount": "1"}, False)
    assert status == 403 and "CSRF" in answer["error"]["message"]
    assert api(page, "GET", "/admin/orgs/acme/caps")[1]["caps"]["organization"]["cap"] is None
    assert api(page, "PUT", "/admin/orgs/acme/caps/organization", {"amount": "1"})[0] == 200
    # The operator's token does not sign in to the console.
    other = page.context.browser.new_context(base_url=w.stack.url).new_page()
    other.goto("/console")
    other.get_by_label("Credential or API key").fill("operator-" + "t" * 40)
    other.get_by_role("button", name="Sign in").click()
    expect(other.locator("#signin-error")).to_contain_text("Not an organization credential")
    # Revoking the credential ends its session at the next call.
    admin = sign_in(browser, w.stack, w.secrets["acme/admin"])
    assert api(admin, "GET", "/admin/orgs/acme/caps")[0] == 200
    w.stack.run(Credentials(w.stack.store).revoke(w.ids["acme/admin"]))
    assert api(admin, "GET", "/admin/orgs/acme/caps")[0] == 401
    # Signing out ends the session on the server, not only in the browser.
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin")).to_be_visible()
    assert api(page, "GET", "/admin/orgs/acme/caps", csrf=False)[0] == 401


def test_the_pages_work_at_phone_width(browser, console_world):
    w = console_world
    buy(w.stack, "7.25")
    page = sign_in(browser, w.stack, w.secrets["acme/owner"], PHONE)
    for hash_, title in [("billing", "Billing"), ("usage", "Usage"), ("keys", "Keys")]:
        go(page, hash_, title)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (title, width)
    go(page, "keys", "Keys")
    page.get_by_label("Name").fill("phone key")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("tw-")
    chat(w.stack, secret)  # the key just shown works with the official SDK
