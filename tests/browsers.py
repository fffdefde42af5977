"""Debian's chromium under Playwright, for the tests that look at pages as a person would.

Playwright's own browsers are never downloaded: ``executable_path`` names the
Debian package's binary. The flags keep chromium off the network (this machine
has none but loopback) and headless.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

__all__ = ["CHROMIUM", "chromium"]

CHROMIUM = "/usr/bin/chromium"
_OFFLINE = ["--headless", "--no-sandbox", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@contextmanager
def chromium(*flags: str) -> Iterator[Browser]:
    """Launch Debian's chromium headless and offline, with ``flags`` added; close it after."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*_OFFLINE, *flags])
        try:
            yield browser
        finally:
            browser.close()
