"""Notices that go stale must go (issue 16 item 4): "Task … started" once the task has
finished, and "Cannot reach the AGATA gateway" once the gateway answers again — on the
page that showed it, whatever action showed it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task
from playwright.async_api import Page, expect

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
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    await create_bundle_task(cloud, "held", server_arguments=["1", "--hold"])
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "held"})
    assert started.status_code == 200, started.text
    await sign_in(page, cloud, "tasks/held")
    await expect(page.locator("#task-state .badge")).to_have_text("running")
    await expect(page.locator("#live")).to_have_attribute("data-status", "live")

    # Execute: the network goes away; the operator presses Stop; the network comes back
    await page.context.set_offline(True)
    await page.click("#stop-task")
    confirm = page.locator("#confirm-stop")
    if await confirm.count():
        await confirm.click()
    unreachable = page.locator(".action-msg", has_text="Cannot reach the AGATA gateway")
    await expect(unreachable).to_be_visible()
    await snap(page, screenshots_dir, "20-gateway-unreachable")
    await page.context.set_offline(False)

    # Assert: once the console is live again the message is gone, the task still runs
    await expect(page.locator("#live")).to_have_attribute("data-status", "live", timeout=20_000)
    await expect(page.locator(".action-msg")).not_to_contain_text("Cannot reach", timeout=20_000)
    await expect(page.locator("#task-state .badge")).to_have_text("running")
