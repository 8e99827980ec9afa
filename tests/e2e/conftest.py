"""Fixtures of the console's browser tests (defined in tests/support/browser.py)."""

from tests.support.browser import browser, console_world  # noqa: F401
