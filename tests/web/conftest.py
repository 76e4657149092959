"""Browser fixtures: Debian's Chromium driven by Playwright, and a page per test that
fails the test on any JavaScript error."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloud_harness import Cloud, running_cloud
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, async_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
PHONE: ViewportSize = {"width": 390, "height": 844}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def screenshots_dir() -> Path:
    """``test-output/screenshots`` (or ``$AGATA_TEST_OUTPUT/screenshots``)."""
    root = Path(os.environ.get("AGATA_TEST_OUTPUT", REPO / "test-output"))
    path = root / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def cloud_flags() -> dict[str, object]:
    """Settings flags of the test's cloud; override with ``parametrize("cloud_flags", ...)``."""
    return {}


@pytest.fixture
async def cloud(tmp_path: Path, cloud_flags: dict[str, object]) -> AsyncIterator[Cloud]:
    """A real cloud on loopback, started before the page and stopped after it closed (so
    no event stream is open while the gateway shuts down)."""
    async with running_cloud(tmp_path, **cloud_flags) as running:
        yield running


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(cloud: Cloud, browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=DESKTOP, locale="en-GB")
    page = await context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        # The browser logs every refused request ("Failed to load resource: ... 401");
        # those are expected in tests of errors. Anything else is a bug.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"
