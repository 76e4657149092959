"""``agata demo --task digits-app``: experiment 1 with the digits Flower App.

The same run as :func:`~agata.demo.experiment.run_exp1`, on Flower's Deployment Runtime:
the cloud starts the run's SuperLink and submits the app (``examples/tasks/digits-app``);
the edge agent gets the task by itself and starts its SuperNode (partition 0); a second
SuperNode is started by hand (partition 1), as the original started its second client;
the rounds run; the run finishes on the cloud and the agent stops its SuperNode (the run's
end, not a failure). The timed steps are experiment 1's where they apply.

Flower's processes run as the demo's own user: a SuperLink starts Flower's other
programs by name, and on one person's machine AGATA's interpreter is often closed to
the task user (``docs/flower-apps.md``, "Task user").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time

from agata.demo.experiment import ExperimentOptions, RunResult, _suppress, _wait_task_ended
from agata.demo.harness import Lab, Progress
from agata.demo.processes import free_port
from agata.demo.timings import exp1_durations, merge_events
from agata.errors import AgataError
from agata.flower.flwr_cli import flower_bin, flower_environment
from agata.flower.supernode import node_config, supernode_arguments
from agata.resources import example_path

__all__ = ["run_exp1_app"]


async def run_exp1_app(options: ExperimentOptions, progress: Progress | None = None) -> RunResult:
    """One run of experiment 1 with the digits Flower App."""
    say = progress or (lambda message: None)
    bundle = options.task_dir or example_path("tasks", "digits-app")
    task_id = f"digits-app-{secrets.token_hex(2)}"
    user_id = f"device-{secrets.token_hex(2)}"
    started = time.monotonic()
    deadline = started + options.timeout
    result = RunResult("exp1", {"task": task_id}, [], {}, False, 0.0)
    second: asyncio.subprocess.Process | None = None
    async with Lab(options.lab(), say) as lab:
        lab.task_user = ""  # see the module docstring
        try:
            node = await lab.start_cloud()
            port = free_port()
            result.ports = {"gateway": node.port or 0, "superlink": port}
            say(f"cloud up at {lab.url}; the run's SuperLink will listen on {port}")
            await lab.register_task(
                task_id,
                bundle,
                kind="flower-app",
                host="127.0.0.1",
                port=port,
                server_arguments=[f"num-server-rounds={options.rounds}"],
                client_arguments=["partition-id=0", "num-partitions=2"],
                tags=["digits", "flower-app", "demo"],
            )
            say(f"task {task_id} registered (kind flower-app), app uploaded")
            await lab.start_task(task_id)
            say(f"task {task_id} started: SuperLink spawned ({options.rounds} rounds)")
            await lab.start_agent(user_id)
            say(f"edge agent up as {user_id}")
            assert lab.data_dir is not None
            home = lab.data_dir / "second-supernode"
            home.mkdir(parents=True, exist_ok=True)
            arguments = supernode_arguments(
                f"127.0.0.1:{port}",
                node_config(["partition-id=1", "num-partitions=2"], "by-hand"),
                port=free_port(),
                tls=False,
            )
            with (home / "supernode.log").open("wb") as log:
                second = await asyncio.create_subprocess_exec(
                    flower_bin("flower-supernode"),
                    *arguments,
                    env={**os.environ, **flower_environment(home)},
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            say("second SuperNode started by hand")
            task = await _wait_task_ended(lab, task_id, deadline, say)
            result.cloud_state = {task_id: task["state"]}
            result.device_state = {task_id: "stopped (the run ended)"}
            result.accuracy = task.get("last_acc")
            result.rounds = task.get("last_round")
            say(f"task {task_id} {task['state']} on the cloud: {task.get('state_reason')}")
            result.ok = task["state"] == "finished"
            if not result.ok:
                result.error = f"task ended {task['state']}: {task.get('state_reason')}"
        except AgataError as exc:
            result.error = exc.message
        finally:
            if second is not None and second.returncode is None:
                second.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(second.wait(), 10)
                if second.returncode is None:
                    second.kill()
                    await second.wait()
            with _suppress():
                cloud = await lab.cloud_events([task_id])
                result.events = merge_events(cloud, lab.events)
        result.durations = exp1_durations(result.events, task_id)
        result.wall_seconds = time.monotonic() - started
    return result
