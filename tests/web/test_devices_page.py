"""The devices page at fleet size: server-side pages, sorting, the filter box, bulk
actions, decommission, revoked devices and the access tokens (real cloud, Chromium)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task
from playwright.async_api import Page, expect

from agata.bench.console_bench import insert_fleet
from agata.cloud.services.notifier import Notifier
from agata.protocol.notifications import MetricRecorded
from agata.store import NewTask

from .test_ui import TASK_STARTS, register_device, sign_in, snap

pytestmark = pytest.mark.browser


async def test_ten_thousand_devices_page_sort_and_filter(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    # Prepare: 10,000 devices written straight into the store (the bulk path)
    insert_fleet(cloud.node.store, 10_000)
    await sign_in(page, cloud)
    await page.click("#see-all-devices")
    await expect(page.locator("tr[data-device]")).to_have_count(50)

    # Execute: the page drawn afresh, timed until its rows are there
    started = time.perf_counter()
    await page.reload()
    await expect(page.locator("tr[data-device]")).to_have_count(50)
    interactive = time.perf_counter() - started
    print(f"\ndevices page with 10,000 devices interactive after {interactive * 1000:.0f} ms")

    # Assert: one page of 50, the total, and the pager
    await expect(page.locator("#device-count")).to_have_text("(10,000)")
    await expect(page.locator("#page-range")).to_contain_text("1\u201350 of 10,000")
    await expect(page.locator("tr[data-device]").first).to_have_attribute(
        "data-device", "sim-00000"
    )
    height = await page.evaluate("document.documentElement.scrollHeight")
    assert height < 12_000, height  # not 10,000 rows on one page
    await snap(page, screenshots_dir, "20-devices-10000")

    # Execute: next page, then sort by id descending (twice on the header)
    await page.click("#page-next")
    await expect(page.locator("#page-range")).to_contain_text("51\u2013100 of 10,000")
    await page.click('button[data-sort="user_id"]')
    await expect(page.locator("tr[data-device]").first).to_have_attribute(
        "data-device", "sim-09999"
    )
    await expect(page.locator('th[aria-sort="descending"]')).to_have_count(1)

    # Execute: a filter on an attribute, then a criteria expression, then a bad one
    await page.fill("#device-filter", "location=lab offline")
    await expect(page.locator("#device-count")).to_have_text("(0 matching)")
    await page.fill("#device-filter", "location=home offline")
    await expect(page.locator("#device-count")).to_have_text("(2,500 matching)")
    await page.fill("#device-filter", 'data_qnt > 190 and "gps" in sensors')
    await expect(page.locator("#device-count")).to_contain_text("matching")
    for row in await page.locator("tr[data-device]").all():
        await expect(row).to_contain_text("gps")
    await page.fill("#device-filter", "data_qnt>lots")
    await expect(page.locator("#filter-note")).to_contain_text("data_qnt is a number")
    await snap(page, screenshots_dir, "21-devices-filter-error")


async def test_bulk_revoke_and_decommission_and_tokens(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    # Prepare: three devices
    for user_id in ("pi-a", "pi-b", "pi-c"):
        await register_device(cloud, user_id, data_qnt=10, sensors=["camera"])
        cloud.node.store.set_device_credential(user_id, "h" * 64)
    await cloud.op("rpc_exec_create_enrollment_token", {"uses": 5})
    await sign_in(page, cloud, "devices")

    # Execute: select two, revoke them (confirmed)
    await page.check('[data-select="pi-a"]')
    await page.check('[data-select="pi-b"]')
    await expect(page.locator("#selected-count")).to_have_text("2 selected")
    await page.click('[data-bulk="rpc_exec_revoke_device"]')
    await page.click("#confirm-bulk")

    # Assert: shown as revoked, not online
    await expect(page.locator('tr[data-device="pi-a"] .badge').first).to_have_text("revoked")
    await expect(page.locator('tr[data-device="pi-c"] .badge').first).to_have_text("online")
    await page.fill("#device-filter", "revoked")
    await expect(page.locator("tr[data-device]")).to_have_count(2)

    # Execute: decommission pi-a
    await page.fill("#device-filter", "")
    await page.check('[data-select="pi-a"]')
    await page.click('[data-bulk="rpc_exec_delete_device"]')
    await snap(page, screenshots_dir, "22-devices-decommission-confirm")
    await page.click("#confirm-bulk")

    # Assert
    await expect(page.locator('tr[data-device="pi-a"]')).to_have_count(0)
    await expect(page.locator("tr[data-device]")).to_have_count(2)
    assert (await cloud.op("rpc_exec_get_user_info", {"user_id": "pi-a"})).status_code == 404

    # Execute: revoke the enrollment token from the console
    tokens = page.locator("#enrollment-tokens")
    await expect(tokens).to_contain_text("5")
    await tokens.locator("[data-revoke-token]").click()
    await expect(tokens.locator(".badge")).to_have_text("revoked")
    await expect(page.locator("#operator-tokens")).to_contain_text("first operator")
    await snap(page, screenshots_dir, "23-devices-tokens")


async def test_criteria_as_you_type_and_a_warning_before_saving_one_matching_nobody(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    # Prepare: two devices, one online with data, one long offline
    await register_device(cloud, "pi-1", data_qnt=80, sensors=["camera"])
    insert_fleet(cloud.node.store, 4, prefix="old")  # old-00003 is offline
    await sign_in(page, cloud, "new-task")
    criteria = page.locator('textarea[name="selection_criteria"]')
    note = page.locator("#selection_criteria-msg")

    # Execute / Assert: a typo, a type mismatch, then counts
    await criteria.fill("data_qnty > 50")
    await expect(note).to_contain_text("No device has data_qnty")
    await criteria.fill('data_qnt > "abc"')
    await expect(note).to_contain_text("data_qnt is a number")
    await criteria.fill("data_qnt >= 0")
    await expect(note).to_contain_text("Matches 5 of 5 devices now (4 online)")
    await snap(page, screenshots_dir, "24-criteria-as-you-type")

    # Execute: save criteria that match nobody
    await page.fill('input[name="task_id"]', "nobody")
    await page.fill('input[name="host"]', "127.0.0.1")
    await page.fill('input[name="port"]', "8080")
    await criteria.fill("data_qnt > 1000")
    await expect(note).to_contain_text("Matches 0 of 5")
    await page.click("text=Create task")

    # Assert: warned, not saved; saved after "Save anyway"
    await expect(page.locator("#criteria-matches-nobody")).to_be_visible()
    await snap(page, screenshots_dir, "25-criteria-matches-nobody")
    assert (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "nobody"})).status_code == 404
    await page.click("#save-anyway")
    await expect(page.locator("h1")).to_have_text("nobody")


async def test_log_lines_are_coloured_by_their_level(cloud: Cloud, page: Page) -> None:
    await sign_in(page, cloud)

    levels = await page.evaluate(
        """() => import(new URL("js/feeds.js", document.baseURI)).then((m) => [
            m.logLevel("INFO :      Starting Flower ServerApp"),
            m.logLevel("WARNING :   DEPRECATED FEATURE"),
            m.logLevel("2026-01-01 12:00:00 ERROR agata: boom"),
            m.logLevel("Traceback (most recent call last):"),
            m.logLevel("round 3 accuracy 0.9"),
            m.logLevel("DEBUG : grpc"),
        ])"""
    )

    assert levels == ["info", "warning", "error", "error", "", "debug"]


async def test_the_chart_follows_the_run_and_then_the_operators_choice(
    cloud: Cloud, page: Page
) -> None:
    # Prepare: a task whose first point came from a device
    store = cloud.node.store
    store.create_task(NewTask(task_id="live", host="h", port=1, username="", password=""))
    store.add_metric("live", 1, "pi-1", {"accuracy": 0.25})
    notifier = Notifier(cloud.node.bus)

    async def point(source: str, round_: int, accuracy: float) -> None:
        store.add_metric("live", round_, source, {"accuracy": accuracy})
        metric = {"accuracy": accuracy}
        await notifier.notify(
            MetricRecorded(task_id="live", round=round_, source=source, metrics=metric)
        )

    await sign_in(page, cloud, "tasks/live")
    await expect(page.locator("#chart")).to_be_visible()

    # Execute: the server's aggregated series arrives during the run
    await point("server", 1, 0.5)

    # Assert: the chart switches to it (not stuck on the device that reported first)
    await expect(page.locator("#chart-source")).to_have_value("server")

    # Execute: the operator picks the device; more points arrive
    await page.select_option("#chart-source", "pi-1")
    await point("server", 2, 0.75)
    await point("pi-2", 2, 0.5)

    # Assert: the choice holds
    await expect(page.locator("#chart-source option")).to_have_count(3)
    await expect(page.locator("#chart-source")).to_have_value("pi-1")


async def test_the_started_notice_goes_when_the_task_has_finished(cloud: Cloud, page: Page) -> None:
    await create_bundle_task(cloud, "quick")
    await sign_in(page, cloud, "tasks/quick")

    # Execute: start it from its page; its server side runs two rounds and finishes
    await page.click("#start-form button[type=submit]")
    await expect(page.get_by_text("Task quick started")).to_be_visible()

    # Assert: the notice goes once the task is no longer running
    await expect(page.locator("#task-state .badge")).to_have_text("finished", timeout=TASK_STARTS)
    await expect(page.get_by_text("Task quick started")).to_have_count(0)
