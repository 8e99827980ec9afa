"""Driving the console in a real browser: Debian's chromium (``/usr/bin/chromium``,
installed by tests/install-tools.sh), headless, through Playwright's sync API. Playwright's
own browser downloads are never used.

`console_world` builds a stack with two organizations (acme, prepaid, paying through the
fake payment webhook; beta) and their credentials; `sign_in` opens a signed-in page;
`api` calls the admin API from the page, as the page's own script does (session cookie and
CSRF token). Screenshots go to tests/artifacts/console/ (gitignored).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tollway.limits.admins import Credentials

from tests.support import stack as stack_module
from tests.support.fakepayments import SECRET, FakePayments
from tests.support.stack import Stack

SYSTEM_CHROMIUM = Path("/usr/bin/chromium")
EXTRACTED = Path(__file__).resolve().parents[2] / ".tools" / "chromium"  # install-tools.sh
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}


def orgs_yaml(payment_url: str | None) -> str:
    payment = (
        f"{{provider: webhook, webhook_url: '{payment_url}', secret_env: PAY_SECRET}}"
        if payment_url
        else "{provider: none}"
    )
    return f"""
organizations:
  acme:
    limits: {{rpm: 1000, tpm: 1000000}}
    billing:
      mode: prepaid
      auto_reload: {{threshold: 1.00, target: 5.00}}
      payment: {payment}
    extra_usage: {{enabled: true}}
    seat_tiers:
      standard: {{included: 0.02, monthly_cap: 0.01}}
      premium: {{included: 0.05, monthly_cap: unlimited}}
    workspaces:
      research: {{}}
    users:
      alice: {{seat: standard}}
      bob: {{seat: premium}}
  beta:
    billing: {{mode: prepaid}}
    seat_tiers:
      standard: {{included: 0.02, monthly_cap: 0.01}}
    workspaces:
      lab: {{}}
    users:
      zoe: {{seat: standard}}
"""


@dataclass
class World:
    stack: Stack
    payments: FakePayments
    secrets: dict[str, str] = field(default_factory=dict)  # "acme/owner" -> twa-...
    ids: dict[str, str] = field(default_factory=dict)  # "acme/owner" -> adm_...

    def credential(self, org: str, role: str) -> str:
        record, secret = self.stack.run(
            Credentials(self.stack.store).create(org, role, self.stack.clock.now_ms(), role)
        )
        self.secrets[f"{org}/{role}"] = secret
        self.ids[f"{org}/{role}"] = record.cred_id
        return secret


@pytest.fixture
def console_world(stack_factory, monkeypatch) -> Iterator[World]:
    monkeypatch.setitem(stack_module.ENV, "PAY_SECRET", SECRET)
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "operator-" + "t" * 40)
    stack = stack_factory(orgs_yaml(None))
    payments = FakePayments()
    runner, url = stack.run(payments.start())
    stack.reconfigure(orgs_yaml(url))
    world = World(stack, payments)
    for org in ("acme", "beta"):
        for role in ("owner", "admin", "billing"):
            world.credential(org, role)
    yield world
    stack.run(runner.cleanup())


def chromium(extracted: Path = EXTRACTED) -> tuple[Path, dict[str, str] | None]:
    """Debian's chromium: the system's, else the tree tests/install-tools.sh extracted
    (its binary, with the libraries extracted beside it on the library path)."""
    if SYSTEM_CHROMIUM.exists():
        return SYSTEM_CHROMIUM, None
    binary = extracted / "usr" / "lib" / "chromium" / "chromium"
    assert binary.exists(), "chromium is missing: run tests/install-tools.sh (make tools)"
    libs = [
        binary.parent,
        *extracted.glob("usr/lib/*-linux-gnu"),
        # libpulse finds libpulsecommon through ld.so.conf.d, which an extracted tree lacks
        *extracted.glob("usr/lib/*-linux-gnu/pulseaudio"),
        *extracted.glob("lib/*-linux-gnu"),
    ]
    path = ":".join([*map(str, libs), os.environ.get("LD_LIBRARY_PATH", "")])
    return binary, {**os.environ, "LD_LIBRARY_PATH": path}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module: Playwright's sync API keeps an event loop running in
    this thread while it is open, which asyncio.run() and async tests elsewhere refuse."""
    binary, env = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=binary,
            env=env,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield b
        b.close()


def sign_in(browser: Browser, stack: Stack, secret: str, viewport: dict | None = None) -> Page:
    """A new browser context (its own cookies) signed in to the console with `secret`."""
    context = browser.new_context(viewport=viewport or LAPTOP, base_url=stack.url)
    page = context.new_page()
    page.goto("/console")
    page.get_by_label("Credential or API key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_be_visible()
    wait_drawn(page, 0)
    return page


def wait_drawn(page: Page, after: int, timeout: float = 10.0) -> None:
    """Wait until the console has drawn a page more than `after` times (polled from here:
    the console's CSP forbids the string evaluation `wait_for_function` uses)."""
    deadline = time.monotonic() + timeout
    while page.evaluate("() => TW.drawn || 0") <= after:
        assert time.monotonic() < deadline, "the console drew no page"
        page.wait_for_timeout(25)


def go(page: Page, hash_: str, title: str) -> None:
    """Open a console page through its navigation link, as a person would, and wait until
    it is drawn."""
    drawn = page.evaluate("() => TW.drawn || 0")
    moves = not page.url.endswith("#" + hash_)  # a link to the address shown draws nothing
    page.get_by_role("navigation", name="Console pages").get_by_role("link", name=title).click()
    if moves:
        wait_drawn(page, drawn)
    expect(page).to_have_url(f"{page.url.split('#')[0]}#{hash_}")
    expect(page.locator("#page h2")).to_have_text(title)


def api(page: Page, method: str, path: str, body: Any = None, csrf: bool = True) -> tuple[int, Any]:
    """Call the admin API from the page with its session (and its CSRF token)."""
    return page.evaluate(
        """async ([method, path, body, csrf]) => {
            const headers = {};
            if (csrf) headers["x-csrf-token"] = TW.session.csrf;
            if (body !== null) headers["content-type"] = "application/json";
            const r = await fetch(path, {method, headers,
                body: body === null ? undefined : JSON.stringify(body)});
            const text = await r.text();
            let data = text;
            try { data = JSON.parse(text); } catch (e) {}
            return [r.status, data];
        }""",
        [method, path, body, csrf],
    )


def shoot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
