"""The agent against the real cloud (services + gateway on a loopback port, in-process)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from cloud_harness import Cloud

from agata.edge.device_info import DeviceInfo, DeviceSource
from edge.conftest import (
    Device,
    Events,
    client_code,
    create_task,
    device_states,
    eventually,
    pid_alive,
    running_agent,
    start_task,
    stop_task,
    work_folder,
)


def running_ids(device_agent: object) -> list[str]:
    return [t.task_id for t in device_agent.running_tasks()]  # type: ignore[attr-defined]


async def test_push_starts_the_client_well_under_a_second_and_stop_ends_it(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: an idle agent whose poll interval is 30 s
    await create_task(cloud, "t1", "hold", start=False, client_arguments=["--lr", "0.1"])
    async with running_agent(device.agent()) as agent:
        assert agent.running_tasks() == []

        # Execute
        began = time.monotonic()
        await start_task(cloud, "t1")
        await eventually(lambda: running_ids(agent) == ["t1"], what="client spawned")
        dispatch = time.monotonic() - began

        # Assert: spawned through push, with the task's arguments, reported to the cloud
        assert dispatch < 1.0, f"dispatch took {dispatch:.3f} s"
        pid = agent.running_tasks()[0].pid
        assert pid is not None and pid_alive(pid)
        # A spare start is a parked shell until it execs the client (a moment after the
        # agent counts it running): the client's command line is the exec'd one.
        await eventually(lambda: _cmdline(pid)[-3:] == [b"--lr", b"0.1", b""], what="client exec'd")
        cmdline = _cmdline(pid)
        work = work_folder(device.data_dir, "t1")
        assert cmdline[-4] == str(work).encode()
        version = agent.running_tasks()[0].version
        bundle = device.data_dir / "edge" / "bundles" / "task_t1" / f"v{version}"
        assert (bundle / "client.py").is_file()
        for step in ("download task", "start task on device"):
            assert device.events.find(step, "start", task_id="t1")
            assert device.events.find(step, "end", task_id="t1")
        await eventually(
            lambda: device_states(cloud, "t1"),
            what="device state on the cloud",
        )
        assert (await device_states(cloud, "t1"))["dev1"][0] == "running"
        metrics = await eventually(
            lambda: _device_metrics(cloud, "t1"), what="the client's metrics on the cloud"
        )
        assert metrics == [{"round": 1, "acc": 0.5, "loss": 0.9}]

        # Execute: the operator stops the task
        await stop_task(cloud, "t1")

        # Assert: the client side is stopped and the cloud told
        await eventually(lambda: not agent.running_tasks(), what="client stopped")
        await eventually(lambda: not pid_alive(pid), what="client process gone")
        await eventually(
            lambda: _event_with(cloud, "t1", "device dev1 stopped task t1"),
            what="stopped reported to the cloud",
        )


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


async def _device_metrics(cloud: Cloud, task_id: str) -> list[dict[str, float]]:
    response = await cloud.op("rpc_exec_get_task_metrics", {"task_id": task_id})
    return [{"round": m["round"], **m["metrics"]} for m in response.json() if m["source"] == "dev1"]


async def _event_with(cloud: Cloud, task_id: str, text: str) -> bool:
    response = await cloud.op("rpc_exec_get_task_events", {"task_id": task_id})
    return any(text in e["event"] for e in response.json())


async def _status_is(cloud: Cloud, task_id: str, status: str) -> bool:
    states = await device_states(cloud, task_id)
    return states.get("dev1", ("", ""))[0] == status


async def test_client_arguments_take_each_devices_own_values(cloud: Cloud, device: Device) -> None:
    # Prepare: arguments with placeholders; a device file that has client_index, and a
    # second task that needs a value this device lacks
    arguments = ["--client-index", "{client_index}", "--who", "{user_id}", "--at={host}:{port}"]
    await create_task(cloud, "t1", "hold", client_arguments=[*arguments, "{{literal}}"])
    await create_task(cloud, "t2", "hold", client_arguments=["--x", "{partition}"])
    info = DeviceInfo("dev1", data_qnt=100, sensors=("camera",), extra={"client_index": 3})

    async with running_agent(device.agent(info, policy="all")) as agent:
        await eventually(lambda: running_ids(agent) == ["t1"], what="t1 running")
        await eventually(lambda: agent.quarantine(), what="t2 quarantined")

        # Assert: t1 got this device's values; t2 did not run, with the reason
        cmdline = _cmdline(agent.running_tasks()[0].pid)  # type: ignore[arg-type]
        expected = ["--client-index", "3", "--who", "dev1", "--at=127.0.0.1:8080", "{literal}"]
        assert cmdline[-7:-1] == [a.encode() for a in expected]
        [entry] = agent.quarantine()
        assert entry.task_id == "t2"
        assert "{partition}" in entry.reason and "client_index" in entry.reason
        assert not device.events.find("download task", "start", task_id="t2")


async def test_failover_quarantines_the_failing_task_and_switches_at_once(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: E (errors) is offered before C (works); policy one
    await create_task(cloud, "a-error", "error")
    await create_task(cloud, "b-good", "hold")
    async with running_agent(device.agent(policy="one")) as agent:
        # Execute: the agent starts E, which fails
        await eventually(lambda: running_ids(agent) == ["b-good"], what="switched to C")

        # Assert: the failure is told once judged against the run (which goes on)
        [failed] = await eventually(
            lambda: device.events.find("task failed", "end", task_id="a-error"),
            what="E judged a failure",
        )
        assert "broken on purpose" in failed["reason"]
        [switch_start] = device.events.find("switch task", "start", task_id="a-error")
        [switch_end] = device.events.find("switch task", "end", task_id="b-good")
        assert switch_end["from_task"] == "a-error"
        switch = switch_end["time"] - switch_start["time"]
        assert switch < 0.5, f"failover took {switch:.3f} s"
        [entry] = agent.quarantine()
        assert entry.task_id == "a-error" and "broken on purpose" in entry.reason
        await eventually(
            lambda: _status_is(cloud, "a-error", "quarantined"), what="quarantine reported"
        )

        # Execute: the operator lifts the quarantine on the cloud
        response = await cloud.op(
            "rpc_exec_clear_quarantine", {"user_id": "dev1", "task_id": "a-error"}
        )
        assert response.status_code == 200

        # Assert: lifted on the device too; C keeps running (policy one)
        await eventually(lambda: not agent.quarantine(), what="quarantine lifted on the device")
        assert running_ids(agent) == ["b-good"]


async def test_exit_without_finished_fails_over_and_finished_asks_again_at_once(
    cloud: Cloud, device: Device
) -> None:
    await create_task(cloud, "a-crash", "crash")
    await create_task(cloud, "b-finish", "finish")
    async with running_agent(device.agent(policy="one")) as agent:
        [finished] = await eventually(
            lambda: device.events.find("task finished", "end", task_id="b-finish"),
            what="B finished",
        )
        # The next poll may come before this test looks, so it is found among the events
        # after B's end rather than by counting polls from now on.
        after = await eventually(
            lambda: _requests_after(device.events, finished), what="asked again"
        )
        assert after[0]["time"] - finished["time"] < 1.0, "did not ask again at once"

        [entry] = agent.quarantine()
        assert entry.task_id == "a-crash"
        assert "exited with code 3 without reporting Finished" in entry.reason
        assert agent.running_tasks() == []
        assert list(agent.state.finished) == ["b-finish"]
        assert agent.state.stats["started"] == 2  # the finished version does not run again
        await eventually(lambda: _status_is(cloud, "b-finish", "finished"), what="reported")


async def test_bad_bundles_are_quarantined_with_their_reason(cloud: Cloud, device: Device) -> None:
    # Prepare: a syntax error, a file gone from the server, a file changed on the server,
    # and a task flooding stdout with junk (which must still finish)
    await create_task(cloud, "a-syntax", "syntax")
    await create_task(cloud, "b-missing", "hold", extra_files={"helper.py": b"X = 1\n"})
    await create_task(cloud, "c-tampered", "hold", extra_files={"helper.py": b"X = 1\n"})
    await create_task(cloud, "d-flood", "flood")
    bundles = cloud.node.bundles
    (bundles.task_dir("b-missing") / "helper.py").unlink()
    (bundles.task_dir("c-tampered") / "helper.py").write_bytes(b"X = 2\n")

    # Execute
    async with running_agent(device.agent(policy="all", max_tasks=4), wait_push=False) as agent:
        await eventually(
            lambda: (
                len(agent.quarantine()) == 3
                and device.events.find("task finished", "end", task_id="d-flood")
            ),
            timeout=10,
            what="three quarantined, one finished",
        )

        # Assert
        reasons = {entry.task_id: entry.reason for entry in agent.quarantine()}
        assert "SyntaxError" in reasons["a-syntax"]
        assert "download failed" in reasons["b-missing"]
        assert "does not match the listing" in reasons["c-tampered"]
        assert not list((device.data_dir / "edge" / "bundles" / "task_c-tampered").glob("*"))
        assert agent.running_tasks() == []


async def test_a_client_that_ignores_sigterm_is_killed(cloud: Cloud, device: Device) -> None:
    await create_task(cloud, "t1", "stubborn")
    async with running_agent(device.agent(), wait_push=False) as agent:
        await eventually(lambda: running_ids(agent) == ["t1"], what="started")
        pid = agent.running_tasks()[0].pid
        assert pid is not None
        await eventually(lambda: _sigterm_ignored(pid), what="SIGTERM handler installed")

        began = time.monotonic()
        await stop_task(cloud, "t1")
        await eventually(lambda: not pid_alive(pid), timeout=5, what="killed")

        assert time.monotonic() - began >= 0.9  # it got its grace (1 s) first


def _requests_after(events: Events, marker: dict[str, Any]) -> list[dict[str, Any]]:
    """The task requests the agent began after the event ``marker``."""
    index = next(i for i, (_, _, f) in enumerate(events.items) if f is marker)
    return [f for fn, ev, f in events.items[index + 1 :] if (fn, ev) == ("request task", "start")]


def _sigterm_ignored(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


async def test_attribute_changes_are_reported_and_unchanged_ones_are_not(
    cloud: Cloud, device: Device, tmp_path: Path
) -> None:
    # Prepare: a task only for devices with a gps
    path = tmp_path / "device.toml"
    path.write_text('user_id = "dev1"\nsensors = ["camera"]\n')
    await create_task(cloud, "t1", "hold", criteria='"gps" in sensors')
    async with running_agent(device.agent(DeviceSource(path))) as agent:
        agent.poll_now()
        await eventually(lambda: agent.polls >= 3, what="polled again")
        assert agent.running_tasks() == []
        assert len(device.events.find("update device info", "end")) == 1

        # Execute: the device gains a gps
        path.write_text('user_id = "dev1"\nsensors = ["camera", "gps"]\n')
        os.utime(path, ns=(1, 1))
        agent.poll_now()

        # Assert: reported, and the task now matches
        await eventually(lambda: running_ids(agent) == ["t1"], what="task matched")
        response = await cloud.op("rpc_exec_get_user_info", {"user_id": "dev1"})
        assert response.json()["sensors"] == ["camera", "gps"]
        assert len(device.events.find("update device info", "end")) == 2


async def test_quarantine_expires_and_a_new_bundle_version_runs(
    cloud: Cloud, device: Device
) -> None:
    # Prepare: the only task fails; its quarantine is short
    await create_task(cloud, "t1", "error")
    async with running_agent(device.agent(quarantine_seconds=0.3)) as agent:
        # Execute / Assert: after the quarantine it is tried again (no poll needed)
        await eventually(lambda: agent.state.stats["started"] >= 2, timeout=5, what="tried again")
        await eventually(lambda: agent.state.stats["failed"] >= 2, what="failed again")

        # Execute: the operator uploads a fixed client (a new bundle version)
        fixed = client_code("hold").encode()
        response = await cloud.http.post(
            "/api/tasks/t1/files", files=[("files", ("client.py", fixed))], headers=cloud.auth
        )
        assert response.status_code == 200

        # Assert: the new version runs
        await eventually(lambda: running_ids(agent) == ["t1"], what="new version running")
        await asyncio.sleep(0.5)
        assert running_ids(agent) == ["t1"]
        assert agent.state.quarantined("t1", agent.running_tasks()[0].version) is None
