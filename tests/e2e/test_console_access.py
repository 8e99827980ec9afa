"""The console and the admin API across organizations and roles, in a real browser: a
credential of one organization (any role) or a member's key reads and changes nothing of
another through any admin route, by session cookie or by bearer; the pages are usable
with the keyboard alone; and a screenshot of every page at laptop and phone width is saved
under tests/artifacts/console/ (gitignored) for a person to look at."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect
from tollway.limits.increases import LimitIncreases
from tollway.limits.spend import Spend
from tollway.proxy.admin.app import routes

from tests.e2e.test_admin import BODIES
from tests.support.browser import LAPTOP, PHONE, api, go, shoot, sign_in, wait_drawn
from tests.support.spendkit import buy, chat, priced

OPEN = {("GET", "/orgs"), ("GET", "/openapi.json")}


def beta_things(w) -> dict[str, str]:
    """Path values naming real things of organization beta: its key, session, user,
    workspace, tier, credential and a pending request."""
    stack = w.stack
    buy(stack, "1.00", "beta")
    record, secret = stack.key_record("beta", user="zoe", name="zoe key")
    stack.openai(secret).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        extra_headers={"x-tollway-session": "beta-session"},
    )
    stack.wait_settled()
    spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
    stack.run(LimitIncreases(spend).file("beta", "zoe", "more please"))
    return {
        "org": "beta",
        "key_id": record.key_id,
        "session_id": "beta-session",
        "user": "zoe",
        "workspace": "lab",
        "tier": "standard",
        "month": "2026-01",
        "admin_id": w.ids["beta/owner"],
    }


def unchanged(before: dict, after: dict) -> bool:
    """The same keys and values; the ledger's value in a snapshot is every event, shipped
    to the ledger database or still in Redis, so background shipping changes nothing."""
    return before == after


def walk(call, values: dict[str, str], member: bool) -> list[str]:
    """Call every route of the admin route table with organization beta's values; return
    the answers' texts. Every answer must be a refusal, but for the routes open to all."""
    texts = []
    for r in routes():
        path = "/admin" + re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "x"), r.path)
        op = f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower()).strip('_')}"
        body = BODIES.get(op, {}) if r.body is not None else None
        status, text = call(r.method, path, body)
        open_route = (r.method, r.path) in OPEN and not (member and r.path == "/orgs")
        assert status == (200 if open_route else 403), (r.method, path, status, text)
        if r.path == "/orgs":
            assert '"org":"beta"' not in text.replace(" ", "")
        texts.append(text)
    return texts


def test_no_credential_of_acme_reaches_beta_through_any_admin_route(browser, console_world):
    w = console_world
    values = beta_things(w)
    before = w.stack.snapshot("beta")
    alice = w.stack.key("acme", user="alice")
    texts = []
    for who, secret in [
        ("owner", w.secrets["acme/owner"]),
        ("admin", w.secrets["acme/admin"]),
        ("billing", w.secrets["acme/billing"]),
        ("member", alice),
    ]:
        page = sign_in(browser, w.stack, secret)  # the console's session and CSRF token

        def by_session(method, path, body, page=page):
            status, data = api(page, method, path, body)
            return status, data if isinstance(data, str) else str(data).replace("'", '"')

        def by_bearer(method, path, body, secret=secret):
            r = requests.request(
                method,
                w.stack.url + path,
                json=body,
                headers={"authorization": f"Bearer {secret}"},
                timeout=10,
            )
            return r.status_code, r.text

        texts += walk(by_session, values, who == "member")
        texts += walk(by_bearer, values, who == "member")
        page.context.close()
    assert unchanged(before, w.stack.snapshot("beta"))
    for text in texts:
        for secret_thing in ("zoe", values["key_id"], "beta-session", values["admin_id"]):
            assert secret_thing not in text, (secret_thing, text[:200])


def test_the_console_is_usable_with_the_keyboard_alone(browser, console_world):
    w = console_world
    page = browser.new_context(viewport=LAPTOP, base_url=w.stack.url).new_page()
    page.goto("/console")
    expect(page.get_by_label("Credential or API key")).to_be_focused()
    page.keyboard.type(w.secrets["acme/owner"])
    page.keyboard.press("Enter")
    expect(page.locator("#who-text")).to_have_text("acme · owner")
    wait_drawn(page, 0)
    # Tab to the Usage link and follow it.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == "Usage":
            break
    drawn = page.evaluate("() => TW.drawn")
    page.keyboard.press("Enter")
    wait_drawn(page, drawn)
    expect(page.locator("#page h2")).to_have_text("Usage")
    # Billing, then buy credit with the keyboard: type the amount, Enter submits.
    page.goto(page.url.split("#")[0] + "#billing")
    page.get_by_label("Amount (USD)").focus()
    page.keyboard.type("4.75")
    page.keyboard.press("Enter")
    expect(page.locator("#balance")).to_have_text("$4.75")


PAGES = [
    ("billing", "Billing"),
    ("usage", "Usage"),
    ("requests", "Requests"),
    ("keys", "Keys"),
    ("reports", "Reports"),
]


def test_a_screenshot_of_every_page_at_laptop_and_phone_width(browser, console_world):
    w = console_world
    stack = w.stack
    buy(stack, "25.00")
    priced(stack)
    alice = stack.key("acme", user="alice", name="alice laptop")
    bob = stack.key("acme", user="bob", name="bob desktop")
    service = stack.key("acme", name="nightly batch")
    for day in range(4):  # a few days of traffic for the chart
        for key in (alice, bob, service)[: day % 3 + 1]:
            stack.openai(key).chat.completions.create(
                model="gpt-4o" if key == service else "gpt-4o-mini",
                messages=[{"role": "user", "content": "Say hello"}],
                extra_headers={"x-tollway-session": "sess-demo"},
            )
        stack.wait_settled()
        stack.clock.advance(seconds=86_400)
    chat(stack, bob)
    stack.wait_settled()
    spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
    stack.run(LimitIncreases(spend).file("acme", "alice", "a release on Friday"))
    errors: list[str] = []
    for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        page = sign_in(browser, stack, w.secrets["acme/owner"], viewport)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        for hash_, title in PAGES:
            go(page, hash_, title)
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= viewport["width"], (title, size, width)
            shoot(page, f"{hash_}-{size}")
        page.get_by_label("Session id").fill("sess-demo")
        page.get_by_role("button", name="Show session").click()
        expect(page.get_by_text("Total duration (API)")).to_be_visible()
        shoot(page, f"reports-session-{size}")
        member = sign_in(browser, stack, alice, viewport)
        member.on("pageerror", lambda e: errors.append(str(e)))
        member.on("console", lambda m: m.type == "error" and errors.append(m.text))
        expect(member.locator("#my-spend")).not_to_be_empty()
        shoot(member, f"member-{size}")
        signin = browser.new_context(viewport=viewport, base_url=stack.url).new_page()
        signin.goto("/console")
        expect(signin.get_by_label("Credential or API key")).to_be_visible()
        shoot(signin, f"signin-{size}")
    assert errors == []
