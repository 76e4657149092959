"""The operator console in a real browser against a real cloud (gateway on loopback).

Each test starts a cloud in-process (memory:// bus, SQLite in tmp_path), opens
Debian's Chromium through Playwright and works the console as an operator would.
Screenshots of every page (desktop and 390 px phone) go to test-output/screenshots/.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
from cloud_harness import CLIENT_PY, SERVER_PY, Cloud, create_bundle_task
from playwright.async_api import Page, expect

from .conftest import DESKTOP, PHONE

pytestmark = pytest.mark.browser

TASK_STARTS = 15_000  # ms: a task process starting and reporting (python start-up)
DIGITS_APP = Path(__file__).resolve().parents[2] / "examples" / "tasks" / "digits-app"
DIGITS_APP_FILES = sorted(DIGITS_APP.glob("*.*"))


async def snap(page: Page, folder: Path, name: str) -> None:
    """Full-page screenshots at desktop and phone width."""
    await page.screenshot(path=folder / f"{name}-desktop.png", full_page=True)
    await page.set_viewport_size(PHONE)
    await page.wait_for_timeout(150)  # layout settles
    await page.screenshot(path=folder / f"{name}-phone.png", full_page=True)
    await page.set_viewport_size(DESKTOP)


async def sign_in(page: Page, cloud: Cloud, route: str = "") -> None:
    await page.goto(f"{cloud.node.url}/ui/#/{route}")
    await page.fill("#token", cloud.token)
    await page.press("#token", "Enter")
    await expect(page.locator("#topbar")).to_be_visible()


def bundle_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "bundle"
    folder.mkdir()
    server, client = folder / "server.py", folder / "client.py"
    server.write_text(SERVER_PY)
    client.write_text(CLIENT_PY)
    return [server, client]


async def register_device(cloud: Cloud, user_id: str, **fields: object) -> None:
    response = await cloud.op("rpc_exec_update_user_info", {"user_id": user_id, **fields})
    assert response.status_code == 200, response.text


async def report(cloud: Cloud, user_id: str, task_id: str, status: str, **fields: object) -> None:
    body = {"user_id": user_id, "task_id": task_id, "status": status, **fields}
    response = await cloud.op("rpc_exec_report_device_task", body)
    assert response.status_code == 200, response.text


async def test_sign_in_rejects_a_wrong_token_and_a_revoked_session_returns_to_it(
    cloud: Cloud, tmp_path: Path, page: Page, screenshots_dir: Path
) -> None:
    await register_device(cloud, "pi-1", data_qnt=80, sensors=["camera"])

    # Prepare: the console asks for a token first
    await page.goto(f"{cloud.node.url}/")
    await expect(page).to_have_url(f"{cloud.node.url}/ui/#/signin")
    await snap(page, screenshots_dir, "01-signin")

    # Execute: a wrong token, then the right one (Enter submits)
    await page.fill("#token", "agata_op_wrong")
    await page.press("#token", "Enter")
    await expect(page.locator(".signin-status .alert-error")).to_contain_text(
        "token was not accepted"
    )
    await page.fill("#token", cloud.token)
    await page.press("#token", "Enter")

    # Assert: the fleet overview with the registered device online
    await expect(page.locator("h1")).to_have_text("Fleet overview")
    await expect(page.locator('[data-stat="devices-online"] .value')).to_have_text("1")
    await expect(page.locator('[data-stat="tasks-running"] .value')).to_have_text("0")
    stored = await page.evaluate("sessionStorage.getItem('agata.operator-token')")
    assert stored == cloud.token
    await snap(page, screenshots_dir, "02-overview")

    # Execute: the token stops working (as when it is revoked)
    await page.evaluate("sessionStorage.setItem('agata.operator-token', 'agata_op_revoked')")
    await page.goto(f"{cloud.node.url}/ui/#/devices")

    # Assert: back at sign-in with a clear message; signing in returns to the page
    await expect(page.locator(".signin-status")).to_contain_text("Your session ended")
    await page.fill("#token", cloud.token)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Devices")


async def test_create_upload_start_and_watch_a_task_train(
    cloud: Cloud, tmp_path: Path, page: Page, screenshots_dir: Path
) -> None:
    await register_device(cloud, "pi-cam", data_qnt=120, sensors=["camera"])
    await register_device(cloud, "pi-small", data_qnt=10, sensors=[])
    await sign_in(page, cloud, "tasks")
    await expect(page.locator("h1")).to_have_text("Tasks")
    await page.click("#new-task")

    # Execute: fill the form; an invalid criteria shows the server's error first
    await page.fill("#f-task_id", "digits")
    await page.fill("#f-tags", "digits, demo")
    await page.fill("#f-host", "127.0.0.1")
    await page.fill("#f-port", "8080")
    await page.fill("#f-username", "user")
    await page.fill("#f-password", "secret")
    await page.fill("#f-client_arguments", "--epochs 1")
    await page.fill("#f-selection_criteria", "(data_qnt > 50) and")
    criteria_msg = page.locator("#selection_criteria-msg")
    await expect(criteria_msg).to_contain_text("not a valid expression")
    await expect(page.locator("#f-selection_criteria")).to_have_attribute("aria-invalid", "true")
    await snap(page, screenshots_dir, "03-new-task-invalid-criteria")
    await page.fill("#f-selection_criteria", '(data_qnt > 50) and ("camera" in sensors)')
    await expect(criteria_msg).to_contain_text("Valid expression")
    await page.fill("#f-server_arguments", "3")
    await page.press("#f-server_arguments", "Enter")

    # Assert: the task page, stopped, waiting for its bundle
    await expect(page).to_have_url(f"{cloud.node.url}/ui/#/tasks/digits")
    await expect(page.locator(".flash")).to_contain_text("Task digits created")
    await expect(page.locator("#task-state .badge")).to_have_text("stopped")
    await expect(page.locator("#start-form")).to_be_visible()
    await expect(page.locator("#devices-matching")).to_contain_text("pi-cam")
    await expect(page.locator("#devices-matching")).not_to_contain_text("pi-small")

    # Execute: upload the bundle through the file input
    files = bundle_files(tmp_path)
    await page.locator("#task-files ~ * [data-role=bundle-input]").set_input_files(files)

    # Assert: names, sizes and SHA-256 as the server computed them
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        await expect(page.locator(f'[data-sha256="{digest}"]')).to_be_visible()
    await expect(page.locator(".upload-status")).to_contain_text("Uploaded 2 file(s)")

    # Execute: start it (stored arguments: 3 rounds)
    await page.evaluate("window.__notReloaded = true")
    await page.click("#start-task")

    # Assert: the chart gets its points live and the task finishes by itself
    chart_points = page.locator("#chart circle.pt")
    await expect(chart_points).to_have_count(3, timeout=TASK_STARTS)
    await expect(page.locator("#task-state .badge")).to_have_text("finished", timeout=TASK_STARTS)
    await expect(page.locator('[data-stat="round"] .value')).to_have_text("3")
    await expect(page.locator('[data-stat="accuracy"] .value')).to_have_text("80.0 %")
    await expect(page.locator("#log")).to_contain_text("Finished")
    await expect(page.locator("#timeline")).to_contain_text("Task started on cloud")
    assert await page.evaluate("window.__notReloaded === true"), "the page was reloaded"
    await snap(page, screenshots_dir, "04-task-finished")

    # Assert: the list shows it with its last round and accuracy
    await page.click('nav a[data-nav="tasks"]')
    row = page.locator('tr[data-task="digits"]')
    await expect(row).to_contain_text("finished")
    await expect(row).to_contain_text("80.0 %")
    await expect(row).to_contain_text("demo")
    await snap(page, screenshots_dir, "05-tasks")

    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "digits"})).json()
    assert task["tags"] == ["digits", "demo"]
    assert task["client_argv"] == ["--epochs", "1"]
    assert task["selection_criteria"] == '(data_qnt > 50) and ("camera" in sensors)'


async def test_stop_a_held_task_then_edit_and_delete_it(
    cloud: Cloud, tmp_path: Path, page: Page, screenshots_dir: Path
) -> None:
    await create_bundle_task(cloud, "held", tags=["demo"])
    await register_device(cloud, "pi-1", data_qnt=80, sensors=["camera"])
    await sign_in(page, cloud, "tasks/held")

    # Execute: start with arguments of this run only
    await page.fill("#start-arguments", "2 --hold")
    await page.press("#start-arguments", "Enter")

    # Assert: running, two rounds on the chart; a device reporting shows up live
    await expect(page.locator("#task-state .badge")).to_have_text("running")
    await expect(page.locator("#chart circle.pt")).to_have_count(2, timeout=TASK_STARTS)
    await report(cloud, "pi-1", "held", "running", round=2, metrics={"acc": 0.6, "loss": 0.9})
    await expect(page.locator("#devices-running")).to_contain_text("pi-1")
    await expect(page.locator("#timeline")).to_contain_text("device pi-1 running task held")
    # pi-1's metrics reach the page only as a live ``metric`` event
    await page.select_option("#chart-source", "pi-1")
    await expect(page.locator("#chart circle.pt")).to_have_count(1)
    await page.select_option("#chart-source", "server")
    await snap(page, screenshots_dir, "06-task-running")

    # Execute: stop it (it asks first; Cancel keeps it running)
    await page.click("#stop-task")
    await expect(page.locator(".confirm")).to_contain_text("Stop run 1 of task held?")
    await page.click("#cancel-stop")
    await expect(page.locator(".confirm")).to_have_count(0)
    await expect(page.locator("#task-state .badge")).to_have_text("running")
    await page.click("#stop-task")
    await page.click("#confirm-stop")

    # Assert: the state changes and Delete becomes possible
    await expect(page.locator("#task-state .badge")).to_have_text("stopped")
    await expect(page.locator("#task-reason")).to_contain_text("stopped by the operator")
    await expect(page.locator("#delete-task")).to_be_visible()

    # Execute: edit it
    await page.click("#edit-task")
    await expect(page.locator("#f-task_id")).to_be_disabled()
    await page.fill("#f-tags", "demo, edited")
    await page.fill("#f-port", "9091")
    await snap(page, screenshots_dir, "07-edit-task")
    await page.click("#task-form button[type=submit]")

    # Assert: saved
    await expect(page.locator(".flash")).to_contain_text("Task held saved")
    await expect(page.locator("h1 ~ .chips")).to_contain_text("edited")
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "held"})).json()
    assert task["port"] == 9091
    assert task["tags"] == ["demo", "edited"]

    # Execute: delete it (with confirmation)
    await page.click("#delete-task")
    await page.click("#confirm-delete")

    # Assert: gone
    await expect(page).to_have_url(f"{cloud.node.url}/ui/#/tasks")
    await expect(page.locator(".flash")).to_contain_text("Task held deleted")
    await snap(page, screenshots_dir, "12-task-deleted")
    await expect(page.locator('tr[data-task="held"]')).to_have_count(0)
    response = await cloud.op("rpc_exec_get_task_by_id", {"task_id": "held"})
    assert response.status_code == 404


async def test_the_create_form_uploads_the_files_picked_in_it(
    cloud: Cloud, tmp_path: Path, page: Page
) -> None:
    await sign_in(page, cloud, "new-task")
    await expect(page.locator("h1")).to_have_text("New task")

    # Execute: the form's own picker, then Enter in the ID field
    await page.locator("[data-role=bundle-input]").set_input_files(bundle_files(tmp_path))
    await expect(page.locator("#task-form")).to_contain_text("server.py")
    await page.fill("#f-task_id", "from-form")
    await page.press("#f-task_id", "Enter")

    # Assert: created with its bundle; it can start at once
    await expect(page.locator(".flash")).to_contain_text("its bundle has 2 file(s)")
    await expect(page.locator("#task-files")).to_contain_text("client.py")
    await expect(page.locator("#start-form .alert-warn")).to_have_count(0)


async def test_the_form_creates_a_flower_app_task_with_its_run_rules_and_limits(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    await sign_in(page, cloud, "new-task")
    hint = page.locator('[data-field="server_arguments"] .hint')
    await expect(hint).to_contain_text("server.py")

    # Execute: a Flower App, with the run rules and two limits
    await page.select_option("#f-kind", "flower-app")
    await expect(hint).to_contain_text("run config")
    await expect(page.locator("[data-bundle-hint]")).to_contain_text("pyproject.toml")
    await page.locator("[data-role=bundle-input]").set_input_files(DIGITS_APP_FILES)
    await page.fill("#f-task_id", "app-from-form")
    await page.click("#task-form-runs summary")
    await page.fill("#f-min_devices", "2")
    await page.fill("#f-start_deadline_s", "90")
    await page.fill("#f-memory_mb", "512")
    await page.fill("#f-wall_seconds", "3600")
    await snap(page, screenshots_dir, "13-new-flower-app-task")
    await page.click("#task-form button[type=submit]")

    # Assert: stored as a Flower App with what the form said; the page shows it
    await expect(page.locator(".flash")).to_contain_text("its bundle has 4 file(s)")
    await expect(page.locator("#task-kind")).to_contain_text("Flower App")
    await expect(page.locator("#task-limits")).to_have_text("512 MB memory, 3600 s wall time")
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "app-from-form"})).json()
    assert task["kind"] == "flower-app"
    assert (task["min_devices"], task["start_deadline_s"]) == (2, 90)
    assert task["limits"] == {"memory_mb": 512, "wall_seconds": 3600}

    # Execute: edit it: no deadline, no memory limit
    await page.click("#edit-task")
    await expect(page.locator("#f-kind")).to_have_value("flower-app")
    await expect(page.locator("#task-form-runs")).to_have_attribute("open", "")
    await page.fill("#f-start_deadline_s", "")
    await page.fill("#f-memory_mb", "")
    await page.click("#task-form button[type=submit]")

    # Assert: cleared, the rest kept
    await expect(page.locator(".flash")).to_contain_text("Task app-from-form saved")
    await expect(page.locator("#task-limits")).to_have_text("3600 s wall time")
    task = (await cloud.op("rpc_exec_get_task_by_id", {"task_id": "app-from-form"})).json()
    assert (task["kind"], task["min_devices"], task["start_deadline_s"]) == ("flower-app", 2, None)
    assert task["limits"] == {"wall_seconds": 3600}


@pytest.mark.parametrize("cloud_flags", [{"max_upload_bytes": 1000}])
async def test_an_oversized_upload_and_a_refused_start_show_their_errors(
    cloud: Cloud, tmp_path: Path, page: Page, screenshots_dir: Path
) -> None:
    body = {"task_id": "big", "host": "127.0.0.1", "port": 8080, "files_paths": []}
    assert (await cloud.op("rpc_exec_create_task", body)).status_code == 200
    await sign_in(page, cloud, "tasks/big")
    await expect(page.locator("h1")).to_have_text("big")
    large = tmp_path / "server.py"
    large.write_text("# padding\n" * 300)

    # Execute: a start without a bundle, then an upload over the limit
    await page.click("#start-task")
    start_error = page.locator(".action-msg .alert-error")
    await expect(start_error).to_contain_text("upload the bundle files first")
    await page.locator("[data-role=bundle-input]").set_input_files([large])

    # Assert: readable errors, nothing written
    upload_error = page.locator(".upload-status .alert-error")
    await expect(upload_error).to_contain_text("Too large")
    await expect(upload_error).to_contain_text("exceeds the limit of 1000")
    await expect(page.locator("#task-files")).to_contain_text("No files yet")
    await snap(page, screenshots_dir, "08-upload-too-large")
    listing = await cloud.http.get("/api/tasks/big/files", headers=cloud.auth)
    assert listing.json() == []

    # Execute: a task that does not exist
    await page.goto(f"{cloud.node.url}/ui/#/tasks/nope")

    # Assert: said in words, with a way back
    await expect(page.locator("main .alert-error")).to_contain_text("Not found")
    await expect(page.locator("main .alert-error")).to_contain_text("nope")
    await expect(page.get_by_role("link", name="Back to the tasks")).to_be_visible()


async def test_devices_page_shows_attributes_and_clears_a_quarantine(
    cloud: Cloud, tmp_path: Path, page: Page, screenshots_dir: Path
) -> None:
    await create_bundle_task(cloud, "flaky", server_arguments=["1", "--hold"])
    await create_bundle_task(cloud, "steady", server_arguments=["1", "--hold"])
    for task_id in ("flaky", "steady"):  # a device reports only on tasks it is offered
        started = await cloud.op("rpc_exec_start_server_task", {"task_id": task_id})
        assert started.status_code == 200, started.text
    await register_device(
        cloud,
        "pi-garden",
        data_qnt=240,
        avg_acc_contrib=0.12,
        avg_disconnection_per_round=0.5,
        sensors=["camera", "humidity"],
        extra={"os": "raspbian"},
    )
    await register_device(cloud, "jetson-2", data_qnt=900, sensors=["gpu"])
    await report(cloud, "pi-garden", "flaky", "running")
    until = time.time() + 5400  # away from a unit's edge however long the page takes
    await report(
        cloud,
        "pi-garden",
        "flaky",
        "quarantined",
        reason="client.py exited 1: boom",
        quarantined_until=until,
    )
    await report(cloud, "pi-garden", "steady", "running")
    await sign_in(page, cloud)

    # Assert: the overview's recent failures name the device's quarantine and its end
    failure = page.locator('[data-failure-device="pi-garden"]')
    await expect(failure).to_be_visible()
    await expect(page.locator("#ov-failures ~ *")).to_contain_text("boom")
    await expect(page.locator("#ov-failures ~ *")).to_contain_text(
        re.compile(r"ends in 1 h (29|30) min")
    )
    await page.click('nav a[data-nav="devices"]')

    # Assert: attributes, sensors, current task and the quarantine with its reason
    row = page.locator('tr[data-device="pi-garden"]')
    await expect(row).to_contain_text("240")
    await expect(row).to_contain_text("humidity")
    await expect(row).to_contain_text("os=raspbian")
    await expect(row).to_contain_text("online")
    await expect(row.locator('[data-quarantine="flaky"]')).to_contain_text("boom")
    await expect(row.locator('[data-quarantine="flaky"]')).to_contain_text(
        re.compile(r"ends in 1 h (29|30) min")
    )
    await expect(row).to_contain_text("steady")
    await expect(page.locator('tr[data-device="jetson-2"]')).to_contain_text("gpu")
    await snap(page, screenshots_dir, "09-devices")

    # Execute: clear the quarantine
    await row.locator('[data-clear="pi-garden/flaky"]').click()

    # Assert: gone from the page and from the cloud
    await expect(row.locator('[data-quarantine="flaky"]')).to_have_count(0)
    device = (await cloud.op("rpc_exec_get_user_info", {"user_id": "pi-garden"})).json()
    assert all(t["status"] != "quarantined" for t in device["tasks"])

    # Execute: the device's own page
    await row.locator("a.id-link").click()

    # Assert
    await expect(page.locator("h1")).to_have_text("pi-garden")
    await expect(page.locator("#h-attrs ~ *")).to_contain_text("camera")
    await expect(page.locator("#h-tasks ~ *")).to_contain_text("steady")
    await snap(page, screenshots_dir, "10-device-detail")

    # Execute: an enrollment token from the devices page
    await page.click('nav a[data-nav="devices"]')
    await page.click("text=Create enrollment token")
    await expect(page.locator("#enrollment-token")).to_have_value(re.compile(r".{8,}"))


async def test_an_operator_revokes_a_devices_credential(
    cloud: Cloud, page: Page, screenshots_dir: Path
) -> None:
    # Prepare: an enrolled device that has reported
    token = (await cloud.op("rpc_exec_create_enrollment_token", {})).json()["enrollment_token"]
    enrolled = await cloud.http.post(
        "/api/devices/enroll", json={"user_id": "pi-lost", "enrollment_token": token}
    )
    credential = enrolled.json()["credential"]
    body = {"user_id": "pi-lost", "data_qnt": 50}
    assert (await cloud.op("rpc_exec_update_user_info", body, token=credential)).is_success
    await sign_in(page, cloud, "devices/pi-lost")
    await expect(page.locator(".subtitle")).to_contain_text("enrolled with its own credential")

    # Execute: revoke, cancel once, then confirm
    await page.click("#revoke-device")
    await page.click("text=Cancel")
    await expect(page.locator("#confirm-revoke")).to_have_count(0)
    await page.click("#revoke-device")
    await snap(page, screenshots_dir, "11-device-revoke-confirm")
    await page.click("#confirm-revoke")

    # Assert: told so, the page shows it, and the device is refused
    await expect(page.get_by_text("Credential of pi-lost revoked")).to_be_visible()
    await expect(page.locator(".subtitle")).to_contain_text("not enrolled")
    await expect(page.locator("#revoke-device")).to_have_count(0)
    refused = await cloud.op("rpc_exec_update_user_info", body, token=credential)
    assert refused.status_code == 401
