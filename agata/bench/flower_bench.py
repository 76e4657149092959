"""``agata bench flower``: a Flower App run managed by AGATA against the same run by hand.

Both halves run here, in one command, on the example app (``examples/tasks/digits-app``,
2 SuperNodes, ``num-server-rounds`` rounds), alternating when ``--rounds`` > 1:

- **by hand** (the limit): ``flower-superlink`` and two ``flower-supernode`` already
  started and connected, then ``flwr run . <superlink> --stream`` timed from its start
  to its exit (it exits when the run finished).
- **managed**: a cloud in this process (``memory://``, SQLite, the SuperLink as AGATA's
  user) and two idle agents in this process; ``rpc_exec_start_server_task`` timed to the
  task's end being recorded (finished). It includes what AGATA adds: the SuperLink's
  start, the devices hearing of the run, starting their SuperNodes, following the run.

Target (issue 12): managed <= 1.1 x by hand, medians of the same run.

- **dispatch**: with one idle agent, the operator's start call -> the agent's
  ``start task on device`` end (the client side spawned), for a flower-app task (the
  SuperNode; a run that waits for a second node) and a script task (``client.py``),
  alternating. Target: the flower-app p50 within 50 ms of the script task's p50.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from agata.bench.report import BenchReport
from agata.flower.flwr_cli import flower_bin, flower_environment
from agata.flower.supernode import node_config, supernode_arguments

__all__ = ["run_flower_bench"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "digits-app"
RUN_RATIO = 1.1
DISPATCH_MS = 50.0
_HOLD = "import time\nfrom agata.runtime import TaskReporter\nTaskReporter()\ntime.sleep(600)\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_port(port: int, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on port {port}")


async def _spawn(program: str, arguments: list[str], env: dict[str, str], log: Path) -> Any:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            flower_bin(program), *arguments, env=env, stdout=out, stderr=out, cwd=log.parent
        )


async def _by_hand(folder: Path, rounds: int) -> float:
    """Seconds of ``flwr run --stream`` with SuperLink and SuperNodes already up."""
    port = _free_port()
    home = folder / "home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, **flower_environment(home)}
    processes = [
        await _spawn(
            "flower-superlink",
            ["--insecure", "--database", str(folder / "state.db"), "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env,
            folder / "superlink.log",
        )
    ]  # fmt: skip
    try:
        await _wait_port(port)
        for index in range(2):
            config = node_config([f"partition-id={index}", "num-partitions=2"], f"hand{index}")
            arguments = supernode_arguments(
                f"127.0.0.1:{port}", config, port=_free_port(), tls=False
            )
            processes.append(
                await _spawn("flower-supernode", arguments, env, folder / f"node{index}.log")
            )
        await asyncio.sleep(5.0)  # both connected ("already started")
        began = time.perf_counter()
        run = await _spawn(
            "flwr",
            ["run", str(EXAMPLE), "bench", "--stream", "--run-config",
             f"num-server-rounds={rounds}"],
            env,
            folder / "run.log",
        )  # fmt: skip
        await asyncio.wait_for(run.wait(), 900)
        return time.perf_counter() - began
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


class _Fleet:
    """A cloud in this process, an operator client, enrolled idle agents."""

    def __init__(self, node: Any, http: httpx.AsyncClient, agents: list[Any]) -> None:
        self.node, self.http, self.agents = node, http, agents
        self.spawned: dict[str, list[float]] = {}

    async def op(self, name: str, body: dict[str, Any]) -> Any:
        reply = await self.http.post(f"/{name}", json=body)
        if reply.status_code != 200:
            raise RuntimeError(f"{name}: {reply.status_code} {reply.text}")
        return reply.json()

    async def create(self, task_id: str, kind: str, files: dict[str, bytes], **body: Any) -> None:
        await self.op(
            "rpc_exec_create_task",
            {"task_id": task_id, "kind": kind, "host": "127.0.0.1", "port": _free_port(),
             "username": "u", "password": "p", **body},
        )  # fmt: skip
        upload = [("files", (name, data)) for name, data in files.items()]
        reply = await self.http.post(f"/api/tasks/{task_id}/files", files=upload)
        reply.raise_for_status()

    async def until(self, task_id: str, running: bool, seconds: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            record: dict[str, Any] = await self.op("rpc_exec_get_task_by_id", {"task_id": task_id})
            if record["running"] is running:
                return record
            await asyncio.sleep(0.05)
        raise RuntimeError(f"task {task_id} still running={not running} after {seconds} s")


@asynccontextmanager
async def _fleet(folder: Path, devices: int) -> AsyncIterator[_Fleet]:
    from agata.cloud.cloud_node import CloudNode
    from agata.edge.agent import Agent
    from agata.edge.credential import enroll_device
    from agata.edge.device_info import DeviceInfo
    from agata.settings import load_settings

    settings = load_settings(
        flags={"data_dir": folder / "cloud", "gateway_port": 0, "task_user": "",
               "server_grace_seconds": 2.0},
        environ={},
    )  # fmt: skip
    node = CloudNode(settings)
    await node.start()
    token = node.ensure_operator_token()
    headers = {"Authorization": f"Bearer {token}"}
    runs: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=node.url, headers=headers, timeout=60) as http:
        fleet = _Fleet(node, http, [])
        try:
            for index in range(devices):
                user_id = f"bench{index}"
                enrollment = await fleet.op("rpc_exec_create_enrollment_token", {})
                data_dir = folder / user_id
                credential = await enroll_device(
                    node.url, user_id, enrollment["enrollment_token"], data_dir
                )

                def on_event(function: str, event: str, **fields: Any) -> None:
                    if function == "start task on device" and event == "end" and "pid" in fields:
                        fleet.spawned.setdefault(fields["task_id"], []).append(fields["time"])

                agent = Agent(
                    load_settings(
                        flags={
                            "data_dir": data_dir,
                            "cloud_url": node.url,
                            "task_user": "",
                            "request_interval": 30.0,
                        },
                        environ={},
                    ),
                    DeviceInfo(user_id, data_qnt=100, extra={"partition_id": index}),
                    credential=credential,
                    on_event=on_event,
                    grace=2.0,
                )
                fleet.agents.append(agent)
                runs.append(asyncio.create_task(agent.run()))
            deadline = time.monotonic() + 30
            while not all(a.push and a.push.connected.is_set() and a.polls for a in fleet.agents):
                if time.monotonic() > deadline:
                    raise RuntimeError("the agents did not connect")
                await asyncio.sleep(0.05)
            yield fleet
        finally:
            for agent in fleet.agents:
                agent.shutdown()
            await asyncio.gather(*runs, return_exceptions=True)
            await node.stop()


def _app_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in EXAMPLE.iterdir() if p.suffix in (".py", ".toml")}


async def _managed(folder: Path, rounds: int) -> tuple[float, str]:
    """Seconds from the start call to the recorded end, and the end's reason."""
    async with _fleet(folder, 2) as fleet:
        await fleet.create(
            "app",
            "flower-app",
            _app_files(),
            server_arguments=[f"num-server-rounds={rounds}"],
            client_arguments=["partition-id={partition_id}", "num-partitions=2"],
        )
        began = time.perf_counter()
        await fleet.op("rpc_exec_start_server_task", {"task_id": "app"})
        record = await fleet.until("app", running=False)
        elapsed = time.perf_counter() - began
        if record["state"] != "finished":
            raise RuntimeError(f"the managed run ended {record['state']}: {record['state_reason']}")
        return elapsed, str(record["state_reason"])


async def _dispatch(folder: Path, samples: int) -> dict[str, list[float]]:
    """ms from the start call to the client side spawned, per kind."""
    results: dict[str, list[float]] = {"flower-app": [], "script": []}
    async with _fleet(folder, 1) as fleet:
        await fleet.create(
            "app",
            "flower-app",
            _app_files(),
            server_arguments=["agata.min-nodes=2", "agata.join-seconds=600"],
            client_arguments=["partition-id=0", "num-partitions=2"],
        )
        await fleet.create(
            "script", "script", {"server.py": _HOLD.encode(), "client.py": _HOLD.encode()}
        )
        for _ in range(samples):
            for task_id, kind in (("script", "script"), ("app", "flower-app")):
                seen = len(fleet.spawned.get(task_id, []))
                began = time.time()
                await fleet.op("rpc_exec_start_server_task", {"task_id": task_id})
                deadline = time.monotonic() + 60
                while len(fleet.spawned.get(task_id, [])) <= seen:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{kind}: the client side never spawned")
                    await asyncio.sleep(0.005)
                results[kind].append((fleet.spawned[task_id][-1] - began) * 1000)
                await fleet.op("rpc_exec_stop_server_task", {"task_id": task_id})
                await fleet.until(task_id, running=False)
                deadline = time.monotonic() + 30
                while any(t.task_id == task_id for t in fleet.agents[0].running_tasks()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{kind}: the client side was not stopped")
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the ended SuperLink's port is free again
    return results


async def _measure(rounds: int, runs: int, samples: int) -> BenchReport:
    report = BenchReport("flower: a Flower App run managed by AGATA and by hand")
    report.context["app"] = f"{EXAMPLE.name}, 2 SuperNodes, {rounds} rounds"
    hand: list[float] = []
    managed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="agata-bench-flower-") as temp:
        root = Path(temp)
        for index in range(runs):  # alternating: load drifts hit both alike
            hand.append(await _by_hand(root / f"hand{index}", rounds))
            seconds, reason = await _managed(root / f"managed{index}", rounds)
            managed.append(seconds)
            report.context[f"managed run {index + 1}"] = reason
        dispatch = await _dispatch(root / "dispatch", samples)
        shutil.rmtree(root, ignore_errors=True)
    if runs:
        hand_s = round(statistics.median(hand), 2)
        report.add("by hand: flwr run --stream (median)", hand_s, "s")
        report.ratio(
            "managed: start -> finished (median)",
            round(statistics.median(managed), 2),
            hand_s,
            "s",
            limit_name="by hand",
            at_most=RUN_RATIO,
            note=f"{runs} run(s) each, alternating; same run",
        )
    script = statistics.median(dispatch["script"])
    report.add("dispatch of a script task: start -> client spawned (p50)", round(script, 1), "ms")
    report.excess(
        "dispatch of a flower-app task: start -> SuperNode spawned (p50)",
        round(statistics.median(dispatch["flower-app"]), 1),
        round(script, 1),
        "ms",
        limit_name="script task p50",
        at_most=DISPATCH_MS,
        note=f"{samples} samples each, alternating, one idle agent; same run",
    )
    report.context["python"] = sys.version.split()[0]
    return report


def run_flower_bench(rounds: int = 3, runs: int = 1, samples: int = 5) -> BenchReport:
    return asyncio.run(_measure(rounds, runs, samples))
