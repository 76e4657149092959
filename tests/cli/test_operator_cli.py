"""``agata task|device|run ...`` against a real ``agata cloud run`` process on loopback:
tables and ``--json``, the token from the flag, ``AGATA_TOKEN`` or the cloud's token file,
and the exit codes 0 / 1 (the operation failed, its reason on stderr) / 2 (usage)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloud_harness import CLIENT_PY, SERVER_PY
from tls_certs import make_certificates
from typer.testing import CliRunner

from agata.cli.main import app

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@dataclass
class CloudProcess:
    url: str
    data_dir: Path
    token: str

    def op(self, name: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        response = httpx.post(f"{self.url}/{name}", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json() if response.content else None


@contextmanager
def cloud_process(root: Path, *flags: str) -> Iterator[CloudProcess]:
    """``agata cloud run --port 0 FLAGS`` in ``root``; its URL and token file."""
    data_dir = root / "cloud"
    log = (root / "cloud.log").open("wb")
    argv = [sys.executable, "-m", "agata", "cloud", "run", "--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=log,
        env=ENV,
    )
    assert process.stdout is not None
    try:
        deadline = time.monotonic() + 60
        url = ""
        while not url and time.monotonic() < deadline:
            line = process.stdout.readline().decode()
            assert line, f"the cloud exited: {(root / 'cloud.log').read_text()}"
            found = re.search(r"^AGATA cloud on (\S+) ", line)
            url = found.group(1) if found else ""
        assert url, "the cloud did not say where it listens within 60 s"
        token_file = data_dir / "operator-token"
        wait_for(token_file.exists, "the cloud's token file")
        yield CloudProcess(url, data_dir, token_file.read_text().strip())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudProcess]:
    """One cloud for the module's tests."""
    with cloud_process(tmp_path_factory.mktemp("cli-cloud")) as running:
        yield running


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def agata(cloud: CloudProcess, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``agata ARGS --cloud-url URL --data-dir DIR`` in this process; the token comes from
    the cloud's token file unless a test passes one."""
    monkeypatch.delenv("AGATA_TOKEN", raising=False)
    monkeypatch.delenv("AGATA_CLOUD_URL", raising=False)
    monkeypatch.delenv("AGATA_DATA_DIR", raising=False)

    def run(*args: str, where: bool = True, stdin: str | None = None) -> Any:
        extra = ["--cloud-url", cloud.url, "--data-dir", str(cloud.data_dir)] if where else []
        return CliRunner().invoke(app, [*args, *extra], input=stdin)

    return run


def write_bundle(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.py").write_text(SERVER_PY)
    (folder / "client.py").write_text(CLIENT_PY)
    return [str(folder / "server.py"), str(folder / "client.py")]


def task_state(cloud: CloudProcess, task_id: str) -> str:
    return str(cloud.op("rpc_exec_get_task_by_id", {"task_id": task_id})["state"])


def test_a_task_from_create_to_delete(
    agata: Callable[..., Any], cloud: CloudProcess, tmp_path: Path
) -> None:
    files = write_bundle(tmp_path / "bundle")

    created = agata("task", "create", "cli-t1", "--tag", "demo", "--server-args", "3", *files)
    assert created.exit_code == 0, created.output
    assert "task cli-t1 created" in created.stdout
    assert "server.py" in created.stdout and "client.py" in created.stdout

    listed = agata("task", "list", "--json")
    assert listed.exit_code == 0, listed.output
    mine = [t for t in json.loads(listed.stdout) if t["task_id"] == "cli-t1"]
    assert mine and mine[0]["tags"] == ["demo"]

    started = agata("task", "start", "cli-t1")
    assert started.exit_code == 0, started.output
    assert "task cli-t1" in started.stdout
    wait_for(lambda: task_state(cloud, "cli-t1") in ("finished", "failed"), "the task to end")
    record = cloud.op("rpc_exec_get_task_by_id", {"task_id": "cli-t1"})
    assert record["state"] == "finished", record

    table = agata("task", "list")
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if "cli-t1" in line)
    assert "finished" in row and "0.8" in row  # three rounds: acc 0.5 + 3/10

    shown = agata("task", "show", "cli-t1")
    assert shown.exit_code == 0, shown.output
    assert re.search(r"server args\s+3", shown.stdout), shown.stdout
    assert "server.py" in shown.stdout

    deleted = agata("task", "delete", "cli-t1", "--yes")
    assert deleted.exit_code == 0, deleted.output
    gone = agata("task", "show", "cli-t1")
    assert gone.exit_code == 1
    assert "not found" in gone.stderr


def test_stop_ends_a_held_task_and_delete_while_running_is_refused(
    agata: Callable[..., Any], cloud: CloudProcess, tmp_path: Path
) -> None:
    files = write_bundle(tmp_path / "bundle")
    assert agata("task", "create", "cli-held", "--server-args", "1 --hold", *files).exit_code == 0
    assert agata("task", "start", "cli-held").exit_code == 0
    wait_for(lambda: task_state(cloud, "cli-held") == "running", "the task to run")

    refused = agata("task", "delete", "cli-held", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: ") and "running" in refused.stderr

    stopped = agata("task", "stop", "cli-held", "--json")
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(stopped.stdout)["running"] is False
    assert agata("task", "delete", "cli-held", "--yes").exit_code == 0


def test_uploading_to_an_unknown_task_and_bad_names_fail_with_the_reason(
    agata: Callable[..., Any], tmp_path: Path
) -> None:
    hidden = tmp_path / ".secret"
    hidden.write_text("x")
    assert agata("task", "create", "cli-up").exit_code == 0

    bad = agata("task", "upload", "cli-up", str(hidden))
    assert bad.exit_code == 1
    assert "error: " in bad.stderr and ".secret" in bad.stderr

    unknown = agata("task", "upload", "no-such-task", *write_bundle(tmp_path / "b"))
    assert unknown.exit_code == 1
    assert "no-such-task" in unknown.stderr
    assert agata("task", "delete", "cli-up", "--yes").exit_code == 0


def test_the_token_comes_from_the_flag_the_environment_or_the_token_file(
    agata: Callable[..., Any], cloud: CloudProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = ["--cloud-url", cloud.url, "--data-dir", str(tmp_path / "empty")]

    missing = agata("task", "list", *elsewhere, where=False)
    assert missing.exit_code == 2
    assert "no operator token" in missing.stderr and "AGATA_TOKEN" in missing.stderr

    flag = agata("task", "list", "--token", cloud.token, *elsewhere, where=False)
    assert flag.exit_code == 0, flag.output

    monkeypatch.setenv("AGATA_TOKEN", cloud.token)
    env = agata("task", "list", *elsewhere, where=False)
    assert env.exit_code == 0, env.output

    wrong = agata("task", "list", "--token", "agata_op_wrong", *elsewhere, where=False)
    assert wrong.exit_code == 1
    assert wrong.stderr.startswith("error: ")


def test_usage_errors_are_exit_code_2_and_failures_1(
    agata: Callable[..., Any], tmp_path: Path
) -> None:
    assert agata("task", "show").exit_code == 2  # the task id is missing
    assert agata("task", "create", "x", "--port", "0").exit_code == 2
    assert agata("run", "show", "t", "0").exit_code == 2  # runs are numbered from 1
    assert agata("device", "list", "--limit", "501").exit_code == 2

    unreachable = CliRunner().invoke(
        app,
        ["task", "list", "--cloud-url", "http://127.0.0.1:9", "--token", "agata_op_x"],
    )
    assert unreachable.exit_code == 1
    assert "cannot reach the cloud at http://127.0.0.1:9" in unreachable.stderr

    bad_query = agata("device", "list", "-q", "data_qnt>abc")
    assert bad_query.exit_code == 1
    assert "data_qnt is a number" in bad_query.stderr


def enroll(cloud: CloudProcess, user_id: str) -> str:
    """A device of the fleet: enrolled, its attributes sent with its own credential."""
    made = cloud.op("rpc_exec_create_enrollment_token", {"uses": 1})
    response = httpx.post(
        f"{cloud.url}/api/devices/enroll",
        json={"user_id": user_id, "enrollment_token": made["enrollment_token"]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    credential = str(response.json()["credential"])
    body = {"user_id": user_id, "data_qnt": 42, "sensors": ["camera"], "extra": {"site": "lab"}}
    cloud.op("rpc_exec_update_user_info", body, token=credential)
    return credential


def test_devices_list_show_clear_quarantine_and_revoke(
    agata: Callable[..., Any], cloud: CloudProcess, tmp_path: Path
) -> None:
    credential = enroll(cloud, "cli-dev-1")
    enroll(cloud, "cli-dev-2")
    files = write_bundle(tmp_path / "bundle")
    assert agata("task", "create", "cli-q", "--server-args", "1 --hold", *files).exit_code == 0
    assert agata("task", "start", "cli-q").exit_code == 0
    wait_for(lambda: task_state(cloud, "cli-q") == "running", "the task to run")
    for status in ("running", "quarantined"):
        report = {"user_id": "cli-dev-1", "task_id": "cli-q", "status": status, "reason": "boom"}
        cloud.op("rpc_exec_report_device_task", report, token=credential)

    table = agata("device", "list", "-q", "id:cli-dev")
    assert table.exit_code == 0, table.output
    assert "cli-dev-1" in table.stdout and "cli-dev-2" in table.stdout
    assert "cli-q:quarantined" in table.stdout and "online" in table.stdout

    filtered = agata("device", "list", "-q", "quarantined", "--json")
    assert [d["user_id"] for d in json.loads(filtered.stdout)["items"]] == ["cli-dev-1"]

    shown = agata("device", "show", "cli-dev-1")
    assert shown.exit_code == 0, shown.output
    assert "site=lab" in shown.stdout and "boom" in shown.stdout

    cleared = agata("device", "clear-quarantine", "cli-dev-1", "--task", "cli-q")
    assert cleared.exit_code == 0, cleared.output
    assert "cleared 1 quarantine" in cleared.stdout

    revoked = agata("device", "revoke", "cli-dev-2")
    assert revoked.exit_code == 0, revoked.output
    again = agata("device", "show", "cli-dev-2", "--json")
    assert json.loads(again.stdout)["revoked"] is True
    assert "revoked" in agata("device", "list", "-q", "revoked").stdout

    unknown = agata("device", "show", "nobody-here")
    assert unknown.exit_code == 1 and "not found" in unknown.stderr
    assert agata("task", "stop", "cli-q").exit_code == 0


def test_a_task_edited_with_its_run_rules_and_limits(
    agata: Callable[..., Any], cloud: CloudProcess
) -> None:
    limits = ("--memory-mb", "256", "--wall-seconds", "600")
    created = agata("task", "create", "cli-rules", "--min-devices", "2", *limits)
    assert created.exit_code == 0, created.output
    task = cloud.op("rpc_exec_get_task_by_id", {"task_id": "cli-rules"})
    assert (task["min_devices"], task["limits"]) == (2, {"memory_mb": 256, "wall_seconds": 600})

    edited = agata("task", "edit", "cli-rules", "--start-deadline", "30", "--cpu-cores", "0.5")
    assert edited.exit_code == 0, edited.output
    assert "changed: limits, start_deadline_s" in edited.stdout
    task = cloud.op("rpc_exec_get_task_by_id", {"task_id": "cli-rules"})
    assert (task["min_devices"], task["start_deadline_s"]) == (2, 30)
    assert task["limits"] == {"cpu_cores": 0.5}  # given limits replace the task's

    cleared = agata("task", "edit", "cli-rules", "--no-limits", "--start-deadline", "0", "--json")
    assert cleared.exit_code == 0, cleared.output
    record = json.loads(cleared.stdout)
    assert (record["limits"], record["start_deadline_s"]) == ({}, None)
    shown = agata("task", "show", "cli-rules")
    assert re.search(r"min devices\s+2", shown.stdout), shown.stdout

    nothing = agata("task", "edit", "cli-rules")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr
    both = agata("task", "edit", "cli-rules", "--no-limits", "--pids", "9")
    assert both.exit_code == 2 and "--no-limits" in both.stderr
    assert agata("task", "delete", "cli-rules", "--yes").exit_code == 0


def test_an_enrollment_token_from_the_cli_enrolls_and_decommission_removes_the_device(
    agata: Callable[..., Any], cloud: CloudProcess
) -> None:
    made = agata("device", "enrollment-token", "--uses", "1", "--hours", "1")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()  # the token alone: TOKEN=$(agata device enrollment-token)
    assert "expires" in made.stderr and "\n" not in token
    response = httpx.post(
        f"{cloud.url}/api/devices/enroll",
        json={"user_id": "cli-dev-gone", "enrollment_token": token},
        timeout=10,
    )
    assert response.status_code == 200, response.text

    refused = agata("device", "decommission", "cli-dev-gone", "--json")
    assert refused.exit_code == 2  # --json cannot confirm
    gone = agata("device", "decommission", "cli-dev-gone", "--yes")
    assert gone.exit_code == 0, gone.output
    assert "decommissioned" in gone.stdout
    unknown = agata("device", "show", "cli-dev-gone")
    assert unknown.exit_code == 1 and "not found" in unknown.stderr
    again = agata("device", "decommission", "cli-dev-gone", "--yes")
    assert again.exit_code == 1 and "not found" in again.stderr


RUN_SERVER_PY = """
import sys, time
from pathlib import Path
from agata.runtime import TaskReporter
r = TaskReporter()
rounds = int(sys.argv[2])
print("training for", rounds, "rounds", flush=True)
for n in range(1, rounds + 1):
    time.sleep(0.3)
    r.send_metrics(n, acc=0.5 + n / 10, loss=1.0 / n)
    print("round", n, "done", flush=True)
model = Path(sys.argv[1]) / "model.txt"
model.write_text("weights of " + str(rounds) + " rounds")
r.save_artifact(model)
r.finished()
"""


def run_task(cloud: CloudProcess, tmp_path: Path, task_id: str) -> None:
    folder = tmp_path / "run-bundle"
    write_bundle(folder)
    (folder / "server.py").write_text(RUN_SERVER_PY)
    runner = CliRunner()
    files = [str(folder / "server.py"), str(folder / "client.py")]
    where = ["--cloud-url", cloud.url, "--data-dir", str(cloud.data_dir)]
    created = runner.invoke(app, ["task", "create", task_id, "--server-args", "2", *files, *where])
    assert created.exit_code == 0, created.output


def test_runs_list_show_logs_and_artifacts(
    agata: Callable[..., Any], cloud: CloudProcess, tmp_path: Path
) -> None:
    run_task(cloud, tmp_path, "cli-runs")
    assert agata("run", "list", "cli-runs").stdout.strip() == "(task cli-runs has not run yet)"

    # run 1 with the stored arguments (2 rounds), followed to its end
    assert agata("task", "start", "cli-runs").exit_code == 0
    followed = agata("run", "logs", "cli-runs", "--follow")
    assert followed.exit_code == 0, followed.output
    assert "training for 2 rounds" in followed.stdout and "round 2 done" in followed.stdout
    assert "run 1 finished" in followed.stderr
    # run 2 with arguments of its own
    assert agata("task", "start", "cli-runs", "--args", "3").exit_code == 0
    wait_for(lambda: task_state(cloud, "cli-runs") == "finished", "run 2 to finish")

    table = agata("run", "list", "cli-runs")
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if re.match(r"\s*[12]\s", line)]
    assert [row.split()[0] for row in rows] == ["2", "1"]  # newest first
    assert "finished" in rows[0] and "0.8" in rows[0] and " 3 " in rows[0]
    assert "0.7" in rows[1]

    runs = json.loads(agata("run", "list", "cli-runs", "--json").stdout)
    assert [r["server_arguments"][-1] for r in runs] == ["3", "2"]

    shown = agata("run", "show", "cli-runs", "1")
    assert shown.exit_code == 0, shown.output
    assert "finished" in shown.stdout and "model.txt" in shown.stdout

    # the logs of an ended run: what there is, exit 0 at once, also with --follow
    old = agata("run", "logs", "cli-runs", "1", "--follow", "--json")
    assert old.exit_code == 0, old.output
    texts = [json.loads(line)["text"] for line in old.stdout.splitlines()]
    assert "training for 2 rounds" in texts and "training for 3 rounds" not in texts

    listed = agata("run", "artifacts", "cli-runs", "2")
    assert listed.exit_code == 0 and "model.txt" in listed.stdout
    out = tmp_path / "downloads"
    got = agata("run", "artifacts", "cli-runs", "2", "--get", "model.txt", "-o", str(out))
    assert got.exit_code == 0, got.output
    assert (out / "model.txt").read_text() == "weights of 3 rounds"
    assert [p.name for p in out.iterdir()] == ["model.txt"]  # no partial file left

    unknown = agata("run", "artifacts", "cli-runs", "2", "--get", "nope.bin", "-o", str(out))
    assert unknown.exit_code == 1 and "no artifact nope.bin" in unknown.stderr
    missing_run = agata("run", "show", "cli-runs", "7")
    assert missing_run.exit_code == 1
    assert "run 7 of task 'cli-runs' not found" in missing_run.stderr
    never = agata("run", "logs", "no-such-task")
    assert never.exit_code == 1 and "no-such-task" in never.stderr


def test_an_https_cloud_is_checked_against_the_ca_file(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    flags = ("--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key))
    with cloud_process(tmp_path, *flags) as tls_cloud:
        assert tls_cloud.url.startswith("https://")
        where = ["--cloud-url", tls_cloud.url, "--data-dir", str(tls_cloud.data_dir)]

        trusted = CliRunner().invoke(app, ["task", "list", *where, "--ca-file", str(certs.ca)])
        assert trusted.exit_code == 0, trusted.output
        assert "(no tasks)" in trusted.stdout

        untrusted = CliRunner().invoke(app, ["task", "list", *where])
        assert untrusted.exit_code == 1
        assert "cannot reach the cloud" in untrusted.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
