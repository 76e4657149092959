"""Notices that go stale must go (issue 16 item 4): "Task … started" once the task has
finished, and "Cannot reach the AGATA gateway" once the gateway answers again — on the
page that showed it, whatever action showed it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from cloud_harness import Cloud, cloud_settings, create_bundle_task
from helpers import free_port
from playwright.async_api import Browser, Page, expect

from agata.cloud.cloud_node import CloudNode

from .conftest import DESKTOP
from .test_ui import TASK_STARTS, sign_in, snap

pytestmark = pytest.mark.browser


async def test_the_started_notice_clears_when_the_task_finishes(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    await create_bundle_task(cloud, "short")
    await sign_in(page, cloud, "tasks/short")

    await page.click("#start-task")
    notice = page.locator(".action-msg")
    await expect(notice).to_contain_text("Task short started")

    await expect(page.locator("#task-state .badge")).to_have_text("finished", timeout=TASK_STARTS)
    await expect(notice).not_to_contain_text("started")


async def test_cannot_reach_the_gateway_clears_after_reconnecting(
    tmp_path: Path, browser: Browser, screenshots_dir: Path
) -> None:
    # Prepare: a cloud on a fixed port, so the same gateway can come back where it was
    port = free_port()
    settings = cloud_settings(tmp_path, gateway_port=port, server_grace_seconds=2.0)
    first = CloudNode(settings)  # type: ignore[arg-type]
    await first.start()
    token = await asyncio.to_thread(first.ensure_operator_token)
    assert token
    second: CloudNode | None = None
    context = await browser.new_context(viewport=DESKTOP, locale="en-GB")
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            await create_bundle_task(Cloud(first, http, token), "idle")
        page = await context.new_page()
        page.set_default_timeout(10_000)
        await sign_in(page, Cloud(first, http, token), "tasks/idle")
        await expect(page.locator("#task-state .badge")).to_have_text("stopped")
        await expect(page.locator("#live")).to_have_attribute("data-status", "live")

        # Execute: the gateway goes away; the operator asks for the bundle meanwhile
        await first.stop()
        await expect(page.locator("#live")).not_to_have_attribute("data-status", "live")
        await page.click("#download-bundle")
        unreachable = page.locator(".action-msg", has_text="Cannot reach the AGATA gateway")
        await expect(unreachable).to_be_visible()
        await snap(page, screenshots_dir, "33-gateway-unreachable")
        second = CloudNode(settings)  # type: ignore[arg-type]
        await second.start()

        # Assert: once the console is live again the message is gone by itself
        live = page.locator("#live")
        await expect(live).to_have_attribute("data-status", "live", timeout=30_000)
        await expect(page.locator(".action-msg")).not_to_contain_text("Cannot reach")
        await expect(page.locator("#task-state .badge")).to_have_text("stopped")
    finally:
        await context.close()
        if second is not None:
            await second.stop()
