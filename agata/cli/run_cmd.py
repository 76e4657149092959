"""``agata run list|show|logs|artifacts`` -- the runs of a task (each start is one).

``logs --follow`` polls the run's log every second and ends, exit 0, when the run has
ended (an ended run: what there is, at once). Artifacts download to a temporary name in
the output folder and are renamed when complete, so an interrupted download leaves
nothing half-written under the artifact's name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from agata.cli.cloud_client import (
    CloudClient,
    CloudOptions,
    OperationFailed,
    cloud_options,
)
from agata.cli.operator_output import (
    connected,
    duration,
    fail,
    print_json,
    print_pairs,
    print_table,
    when,
)

run_app = typer.Typer(help="Runs of a task: history, outcome, logs, artifacts.")

#: Seconds between two polls of ``logs --follow``.
FOLLOW_POLL_S = 1.0
#: Log lines asked for per poll (the gateway's maximum).
LOG_PAGE = 5000
ACTIVE_STATES = frozenset({"queued", "waiting", "running"})
TaskIdArg = Annotated[str, typer.Argument(help="the task's id")]
RunArg = Annotated[int, typer.Argument(min=1, help="the run's number (1, 2, ...)")]


def _args(values: list[str] | None) -> str:
    return " ".join(values or []) or "-"


def _outcome(run: dict[str, Any]) -> str:
    state = str(run.get("state"))
    reason = run.get("reason") or ""
    return f"{state}: {reason}" if reason else state


@run_app.command("list")
@cloud_options
def list_runs(
    task_id: TaskIdArg,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="runs to show")] = 50,
    before: Annotated[
        int | None, typer.Option(min=1, help="only runs numbered below this (the next page)")
    ] = None,
    *,
    options: CloudOptions,
) -> None:
    """A task's runs, newest first: started, duration, arguments, outcome, accuracy."""
    with connected(options) as cloud:
        body: dict[str, Any] = {"task_id": task_id, "limit": limit}
        if before is not None:
            body["before"] = before
        runs = cloud.call("rpc_exec_list_runs", body)
    if options.json_out:
        print_json(runs)
        return
    print_table(
        ["run", "started", "duration", "arguments", "outcome", "round", "acc", "devices"],
        [
            [
                r.get("run"),
                when(r.get("started_at")),
                duration(r.get("started_at"), r.get("ended_at")),
                _args(r.get("server_arguments")),
                _outcome(r),
                r.get("last_round"),
                r.get("last_acc"),
                r.get("devices_joined"),
            ]
            for r in runs
        ],
        empty=f"task {task_id} has not run yet",
    )


@run_app.command("show")
@cloud_options
def show_run(
    task_id: TaskIdArg,
    run: RunArg,
    *,
    options: CloudOptions,
) -> None:
    """One run: arguments, bundle, outcome, each device's part, artifacts."""
    with connected(options) as cloud:
        record = cloud.call("rpc_exec_get_run", {"task_id": task_id, "run": run})
    if options.json_out:
        print_json(record)
        return
    print_pairs(
        [
            ("task", record.get("task_id")),
            ("run", record.get("run")),
            ("outcome", _outcome(record)),
            ("asked at", when(record.get("created_at"))),
            ("started", when(record.get("started_at"))),
            ("ended", when(record.get("ended_at"))),
            ("duration", duration(record.get("started_at"), record.get("ended_at"))),
            ("server args", _args(record.get("server_arguments"))),
            ("client args", _args(record.get("client_arguments"))),
            ("bundle version", record.get("bundle_version")),
            ("min devices", record.get("min_devices")),
            ("last round", record.get("last_round")),
            ("last metrics", record.get("last_metrics")),
            ("devices joined", record.get("devices_joined")),
        ]
    )
    devices = record.get("devices") or []
    typer.echo("")
    print_table(
        ["device", "status", "reason", "last round", "joined"],
        [
            [
                d.get("user_id"),
                d.get("status"),
                d.get("reason") or "-",
                d.get("last_round"),
                when(d.get("joined_at")),
            ]
            for d in devices
        ],
        empty="no device joined",
    )
    _print_artifacts(record.get("artifacts") or [])


def _print_artifacts(files: list[dict[str, Any]]) -> None:
    typer.echo("")
    print_table(
        ["artifact", "size", "sha256", "saved"],
        [[a.get("name"), a.get("size"), a.get("sha256"), when(a.get("saved_at"))] for a in files],
        empty="no artifacts",
    )


def _print_line(line: dict[str, Any], json_out: bool) -> None:
    if json_out:
        import json

        typer.echo(json.dumps(line, sort_keys=True, ensure_ascii=False))
        return
    where = f"{line.get('source')}/{line.get('stream')}"
    typer.echo(f"{when(line.get('time'))} {where}: {line.get('text')}")


def _current_run(cloud: CloudClient, task_id: str) -> int:
    task = cloud.call("rpc_exec_get_task_by_id", {"task_id": task_id})
    number = task.get("run")
    if not number:
        raise OperationFailed(f"task {task_id} has not run yet")
    return int(number)


@run_app.command("logs")
@cloud_options
def run_logs(
    task_id: TaskIdArg,
    run: Annotated[
        int | None, typer.Argument(min=1, help="the run (default: the current or last)")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the run ends")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=LOG_PAGE, help="last lines to print")] = 200,
    *,
    options: CloudOptions,
) -> None:
    """A run's server log (with --json: one JSON object a line)."""
    with connected(options) as cloud:
        number = run if run is not None else _current_run(cloud, task_id)
        body = {"task_id": task_id, "run": number, "limit": limit}
        last_seq = -1
        for line in cloud.call("rpc_exec_get_task_logs", body):
            _print_line(line, options.json_out)
            last_seq = max(last_seq, int(line.get("seq", -1)))
        if not follow:
            return
        body["limit"] = LOG_PAGE
        while True:
            record = cloud.call("rpc_exec_get_run", {"task_id": task_id, "run": number})
            ended = record.get("state") not in ACTIVE_STATES
            # Read after the state: a line written before the run ended is in this read.
            for line in cloud.call("rpc_exec_get_task_logs", body):
                seq = int(line.get("seq", -1))
                if seq > last_seq:
                    _print_line(line, options.json_out)
                    last_seq = seq
            if ended:
                if not options.json_out:
                    typer.echo(f"-- run {number} {_outcome(record)}", err=True)
                return
            time.sleep(FOLLOW_POLL_S)


@run_app.command("artifacts")
@cloud_options
def run_artifacts(
    task_id: TaskIdArg,
    run: RunArg,
    get: Annotated[
        list[str] | None, typer.Option("--get", help="download this artifact (repeatable)")
    ] = None,
    all_files: Annotated[bool, typer.Option("--all", help="download every artifact")] = False,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="folder to download into", file_okay=False)
    ] = Path("."),
    *,
    options: CloudOptions,
) -> None:
    """List a run's artifacts; --get NAME / --all downloads them into --output."""
    with connected(options) as cloud:
        record = cloud.call("rpc_exec_get_run", {"task_id": task_id, "run": run})
        artifacts = record.get("artifacts") or []
        names = {a.get("name") for a in artifacts}
        wanted = [a["name"] for a in artifacts] if all_files else list(get or [])
        unknown = [n for n in wanted if n not in names]
        if unknown:
            fail(f"run {run} of task {task_id} has no artifact {', '.join(unknown)}")
        saved = [_download(cloud, task_id, run, name, output) for name in wanted]
    if options.json_out:
        print_json({"artifacts": artifacts, "downloaded": [str(p) for p in saved]})
        return
    if not saved:
        _print_artifacts(artifacts)
    for path in saved:
        typer.echo(f"saved {path}")


def _download(cloud: CloudClient, task_id: str, run: int, name: str, folder: Path) -> Path:
    """One artifact into ``folder/name`` through a temporary name (nothing half-written)."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise OperationFailed(f"the cloud listed an artifact that is not a file name: {name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{name}.part-{os.getpid()}"
    try:
        with cloud.download(f"/api/tasks/{task_id}/runs/{run}/artifacts/{name}") as response:
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        partial.replace(target)
    except OSError as exc:
        raise OperationFailed(f"cannot write {target}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
