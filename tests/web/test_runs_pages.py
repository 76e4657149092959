"""The console's runs (issue 11 item 8) in a real browser against a real cloud: the task
page's run history, runs laid over each other on the chart, every reported metric
selectable with the value axis scaled to the data, the CSV export of a run's metrics,
a run's own page with its log, devices and artifacts, Stop asking first, and repeated
device events grouped."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import pytest
from cloud_harness import Cloud, create_bundle_task
from playwright.async_api import Page, expect

from .test_ui import TASK_STARTS, register_device, report, sign_in, snap

pytestmark = pytest.mark.browser

RUNS_SERVER_PY = """
import sys, time
from pathlib import Path
from agata.runtime import TaskReporter
r = TaskReporter()
rounds = int(sys.argv[2])
print("training for", rounds, "rounds", flush=True)
for n in range(1, rounds + 1):
    r.send_metrics(n, acc=0.6 + n / 20, loss=1.0 / n, auc=0.7 + n / 50)
model = Path(sys.argv[1]) / "model.txt"
model.write_text("model of " + str(rounds) + " rounds")
r.save_artifact(model)
if "--hold" in sys.argv:
    time.sleep(120)
r.finished()
"""


async def run_to_end(cloud: Cloud, task_id: str, arguments: list[str]) -> None:
    started = await cloud.op(
        "rpc_exec_start_server_task", {"task_id": task_id, "arguments": arguments}
    )
    assert started.status_code == 200, started.text
    for _ in range(300):  # 30 s
        task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})).json()
        if not task["running"] and task["state"] != "queued":
            assert task["state"] == "finished", task
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


async def test_run_history_overlay_metrics_csv_and_a_runs_page(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    # Prepare: two finished runs of one task, 2 and 4 rounds, each saving an artifact
    await create_bundle_task(cloud, "digits")
    upload = await cloud.http.post(
        "/api/tasks/digits/files",
        files=[("files", ("server.py", RUNS_SERVER_PY.encode()))],
        headers=cloud.auth,
    )
    assert upload.status_code == 200, upload.text
    await run_to_end(cloud, "digits", ["2"])
    await run_to_end(cloud, "digits", ["4"])
    await sign_in(page, cloud, "tasks")
    # the task list names the current run and links to it
    await expect(page.locator('tr[data-task="digits"] [data-run-link="2"]')).to_have_text("run 2")
    await page.click('tr[data-task="digits"] a.id-link')

    # Assert: the run history, newest first, with arguments, outcome and final accuracy
    rows = page.locator("#task-runs tr[data-run]")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_have_attribute("data-run", "2")
    await expect(rows.nth(0)).to_contain_text("4")
    await expect(rows.nth(0)).to_contain_text("finished")
    await expect(rows.nth(0)).to_contain_text("80.0 %")  # 0.6 + 4/20
    await expect(rows.nth(1)).to_contain_text("70.0 %")  # 0.6 + 2/20
    # the chart shows the current run: 4 rounds of accuracy, its axis scaled to the data
    chart = page.locator("#chart svg")
    await expect(chart).to_have_attribute("data-metric", "acc")
    await expect(page.locator("#chart circle.pt")).to_have_count(4)
    ticks = await page.locator("#chart .y-tick").all_text_contents()
    assert float(ticks[0]) >= 0.6 and float(ticks[-1]) <= 0.85, ticks  # 0.65..0.8, not 0..1

    # Execute: lay run 1 over it
    await page.check('#task-runs input.compare-run[data-run="1"]')

    # Assert: two series, run 1 dashed under run 2, named in the legend
    await expect(page.locator("#chart g.series")).to_have_count(2)
    await expect(page.locator("#chart circle.pt")).to_have_count(6)
    await expect(page.locator("#chart-legend")).to_contain_text("run 2")
    await expect(page.locator("#chart-legend")).to_contain_text("run 1")
    await snap(page, screenshots_dir, "30-task-runs-overlay")

    # Execute: every reported metric can be charted
    options = await page.locator("#chart-metric option").all_text_contents()
    assert options == ["acc", "loss", "auc"], options
    await page.select_option("#chart-metric", "loss")
    await expect(chart).to_have_attribute("data-metric", "loss")
    ticks = await page.locator("#chart .y-tick").all_text_contents()
    assert float(ticks[0]) <= 0.25 and float(ticks[-1]) >= 1.0, ticks
    await page.uncheck('#task-runs input.compare-run[data-run="1"]')
    await expect(page.locator("#chart g.series")).to_have_count(1)

    # Execute: export run 2's metrics as CSV
    async with page.expect_download() as download_info:
        await page.click("#export-csv")
    download = await download_info.value
    assert download.suggested_filename == "task_digits_run_2_metrics.csv"
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == ["run", "round", "source", "time", "acc", "loss", "auc"]
    assert [(r["run"], r["round"], r["source"]) for r in table] == [
        ("2", str(n), "server") for n in range(1, 5)
    ]
    assert float(table[3]["acc"]) == pytest.approx(0.8) and float(table[3]["loss"]) == 0.25

    # Execute: open run 1's page from the history
    await page.click('#task-runs a[href="#/tasks/digits/runs/1"]')

    # Assert: its record, its own chart, log and artifact
    await expect(page.locator("h1")).to_have_text("digits · run 1")
    await expect(page.locator("#run-state .badge")).to_have_text("finished")
    await expect(page.locator("#run-server-arguments")).to_contain_text("2")
    await expect(page.locator("#chart circle.pt")).to_have_count(2)
    await expect(page.locator("#log")).to_contain_text("training for 2 rounds")
    await expect(page.locator("#log")).not_to_contain_text("training for 4 rounds")
    await expect(page.locator("#run-artifacts")).to_contain_text("model.txt")
    await expect(page.locator("#run-devices")).to_contain_text("No device took part")
    async with page.expect_download() as artifact_info:
        await page.click('#run-artifacts [data-artifact="model.txt"]')
    artifact = await artifact_info.value
    saved = await asyncio.to_thread(Path(await artifact.path()).read_text)
    assert saved == "model of 2 rounds"
    await snap(page, screenshots_dir, "31-run-page")


async def test_stop_asks_first_and_repeated_device_events_are_grouped(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    await create_bundle_task(cloud, "held", server_arguments=["1", "--hold"])
    await register_device(cloud, "pi-1", data_qnt=80, sensors=["camera"])
    started = await cloud.op("rpc_exec_start_server_task", {"task_id": "held"})
    assert started.status_code == 200, started.text
    await sign_in(page, cloud, "tasks/held")
    await expect(page.locator("#task-state .badge")).to_have_text("running")

    # Execute: the device reports running three times (one per round), then another event
    for n in (1, 2, 3):
        await report(cloud, "pi-1", "held", "running", round=n, metrics={"acc": 0.5 + n / 10})

    # Assert: one entry "device pi-1 running task held" counted 3 times (live and reloaded)
    grouped = page.locator("#timeline li", has_text="device pi-1 running task held")
    await expect(grouped).to_have_count(1)
    await expect(grouped).to_have_attribute("data-count", "3", timeout=TASK_STARTS)
    await expect(grouped).to_contain_text("\u00d73")
    await page.reload()
    await expect(grouped).to_have_attribute("data-count", "3")
    # a live report after the reload joins the loaded entry
    await report(cloud, "pi-1", "held", "running", round=4, metrics={"acc": 0.9})
    await expect(grouped).to_have_attribute("data-count", "4")
    await expect(grouped).to_have_count(1)
    await snap(page, screenshots_dir, "32-task-grouped-events")

    # Execute: Stop asks first; Cancel keeps the run
    await page.click("#stop-task")
    confirm = page.locator(".confirm")
    await expect(confirm).to_contain_text("Stop run 1 of task held?")
    await page.click("#cancel-stop")
    await expect(confirm).to_have_count(0)
    await expect(page.locator("#task-state .badge")).to_have_text("running")
    await page.click("#stop-task")
    await page.click("#confirm-stop")

    # Assert: the run ended as stopped, in the history too
    await expect(page.locator("#task-state .badge")).to_have_text("stopped")
    await expect(page.locator('#task-runs tr[data-run="1"]')).to_contain_text("stopped")
