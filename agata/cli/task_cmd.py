"""``agata task create|edit|upload|start|stop|list|show|delete`` -- tasks of a running cloud.

Each command is one gateway call (docs/http-api.md) with an operator token; see
docs/cli.md for the options they share and the exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agata.cli.cloud_client import (
    CloudOptions,
    cloud_options,
)
from agata.cli.operator_output import (
    EXIT_USAGE,
    YesOption,
    confirm,
    connected,
    fail,
    print_json,
    print_pairs,
    print_table,
    when,
)

task_app = typer.Typer(help="Tasks of a running cloud (create, upload, start, stop, ...).")

TaskIdArg = Annotated[str, typer.Argument(help="the task's id")]

# Options that create and edit share (None: not given; edit then keeps the stored value).
CriteriaOpt = Annotated[
    str | None, typer.Option("--criteria", help="selection criteria expression")
]
ServerArgsOpt = Annotated[
    str | None, typer.Option("--server-args", help="server side's arguments (shell-like)")
]
ClientArgsOpt = Annotated[
    str | None, typer.Option("--client-args", help="client side's arguments (shell-like)")
]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)")]
MinDevicesOpt = Annotated[
    int | None,
    typer.Option("--min-devices", min=0, help="a run waits until this many devices joined"),
]
StartDeadlineOpt = Annotated[
    float | None,
    typer.Option(
        "--start-deadline", min=0, help="seconds a waiting run may wait for them (edit: 0 clears)"
    ),
]
MemoryOpt = Annotated[
    int | None, typer.Option("--memory-mb", min=1, help="limit: memory of each side (MB)")
]
CpuOpt = Annotated[
    float | None, typer.Option("--cpu-cores", min=0.01, help="limit: CPU cores of each side")
]
WallOpt = Annotated[
    float | None, typer.Option("--wall-seconds", min=0.1, help="limit: wall time of each side")
]
OpenFilesOpt = Annotated[
    int | None, typer.Option("--open-files", min=16, help="limit: open files of each side")
]
PidsOpt = Annotated[int | None, typer.Option("--pids", min=1, help="limit: processes of each side")]


def _limits(**given: float | None) -> dict[str, float] | None:
    """The ``limits`` object of the given limit options (None when none was given)."""
    limits = {name: value for name, value in given.items() if value is not None}
    return limits or None


def _optional_fields(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``body`` with every field of ``fields`` that was given (not None)."""
    body.update({name: value for name, value in fields.items() if value is not None})
    return body


def _task_summary(task: dict[str, Any]) -> list[Any]:
    return [
        task.get("task_id"),
        task.get("state"),
        task.get("run"),
        len(task.get("devices_running") or []),
        task.get("last_round"),
        task.get("last_acc"),
        when(task.get("last_mod_date")),
    ]


@task_app.command("create")
@cloud_options
def create_task(
    task_id: TaskIdArg,
    host: Annotated[str, typer.Option(help="address the server side listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="its port")] = 8080,
    username: Annotated[str, typer.Option(help="bundle download user (original agents)")] = "",
    password: Annotated[str, typer.Option(help="bundle download password")] = "",
    criteria: CriteriaOpt = None,
    server_args: ServerArgsOpt = None,
    client_args: ClientArgsOpt = None,
    tag: TagOpt = None,
    kind: Annotated[str, typer.Option(help="script or flower-app")] = "script",
    min_devices: MinDevicesOpt = None,
    start_deadline: StartDeadlineOpt = None,
    memory_mb: MemoryOpt = None,
    cpu_cores: CpuOpt = None,
    wall_seconds: WallOpt = None,
    open_files: OpenFilesOpt = None,
    pids: PidsOpt = None,
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="bundle files to upload right away", exists=True, dir_okay=False),
    ] = None,
    *,
    options: CloudOptions,
) -> None:
    """Create a task (and upload its bundle files, if given)."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "host": host,
        "port": port,
        "username": username,
        "password": password,
        "files_paths": [],
        "kind": kind,
    }
    _optional_fields(
        body,
        selection_criteria=criteria,
        server_arguments=server_args,
        client_arguments=client_args,
        tags=tag,
        min_devices=min_devices,
        start_deadline_s=start_deadline or None,
        limits=_limits(
            memory_mb=memory_mb,
            cpu_cores=cpu_cores,
            wall_seconds=wall_seconds,
            open_files=open_files,
            pids=pids,
        ),
    )
    with connected(options) as cloud:
        cloud.call("rpc_exec_create_task", body)
        listing = cloud.upload(task_id, list(files)) if files else []
        if options.json_out:
            print_json({"task_id": task_id, "files": listing})
            return
        typer.echo(f"task {task_id} created")
        if listing:
            _print_files(listing)


@task_app.command("edit")
@cloud_options
def edit_task(
    task_id: TaskIdArg,
    host: Annotated[str | None, typer.Option(help="address the server side listens on")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="its port")] = None,
    username: Annotated[str | None, typer.Option(help="bundle download user")] = None,
    password: Annotated[str | None, typer.Option(help="bundle download password")] = None,
    criteria: CriteriaOpt = None,
    server_args: ServerArgsOpt = None,
    client_args: ClientArgsOpt = None,
    tag: TagOpt = None,
    kind: Annotated[str | None, typer.Option(help="script or flower-app")] = None,
    min_devices: MinDevicesOpt = None,
    start_deadline: StartDeadlineOpt = None,
    memory_mb: MemoryOpt = None,
    cpu_cores: CpuOpt = None,
    wall_seconds: WallOpt = None,
    open_files: OpenFilesOpt = None,
    pids: PidsOpt = None,
    no_limits: Annotated[
        bool, typer.Option("--no-limits", help="clear every limit (the configured defaults)")
    ] = False,
    *,
    options: CloudOptions,
) -> None:
    """Change a task: only the options given (limits given replace the task's limits)."""
    limits = _limits(
        memory_mb=memory_mb,
        cpu_cores=cpu_cores,
        wall_seconds=wall_seconds,
        open_files=open_files,
        pids=pids,
    )
    if no_limits and limits:
        fail("--no-limits clears the limits: give it alone, without limit options", EXIT_USAGE)
    body = _optional_fields(
        {"task_id": task_id},
        host=host,
        port=port,
        username=username,
        password=password,
        selection_criteria=criteria,
        server_arguments=server_args,
        client_arguments=client_args,
        tags=tag,
        kind=kind,
        min_devices=min_devices,
        start_deadline_s=start_deadline,
        limits={} if no_limits else limits,
    )
    if len(body) == 1:
        fail("nothing to change: give at least one option (see --help)", EXIT_USAGE)
    with connected(options) as cloud:
        cloud.call("rpc_exec_update_task", body)
        if options.json_out:
            print_json(cloud.call("rpc_exec_get_task_by_id", {"task_id": task_id}))
            return
    typer.echo(f"task {task_id} changed: {', '.join(sorted(set(body) - {'task_id'}))}")


def _print_files(listing: list[dict[str, Any]]) -> None:
    print_table(
        ["file", "size", "sha256"],
        [[f.get("name"), f.get("size"), f.get("sha256")] for f in listing],
        empty="no files",
    )


@task_app.command("upload")
@cloud_options
def upload_files(
    task_id: TaskIdArg,
    files: Annotated[
        list[Path],
        typer.Argument(help="files (a bundle.zip is unpacked)", exists=True, dir_okay=False),
    ],
    *,
    options: CloudOptions,
) -> None:
    """Upload files into a task's bundle; prints the whole bundle after it."""
    with connected(options) as cloud:
        listing = cloud.upload(task_id, list(files))
    if options.json_out:
        print_json(listing)
    else:
        _print_files(listing)


@task_app.command("start")
@cloud_options
def start_task(
    task_id: TaskIdArg,
    arguments: Annotated[
        str | None,
        typer.Option("--args", help="server arguments for this run only (shell-like)"),
    ] = None,
    *,
    options: CloudOptions,
) -> None:
    """Start a task: a new run (queued past the cloud's cap of running runs)."""
    body: dict[str, Any] = {"task_id": task_id}
    if arguments is not None:
        body["arguments"] = arguments
    with connected(options) as cloud:
        cloud.call("rpc_exec_start_server_task", body)
        task = cloud.call("rpc_exec_get_task_by_id", {"task_id": task_id})
    if options.json_out:
        print_json(task)
        return
    run = task.get("run")
    typer.echo(f"task {task_id} {task.get('state')}" + (f" (run {run})" if run else ""))


@task_app.command("stop")
@cloud_options
def stop_task(
    task_id: TaskIdArg,
    *,
    options: CloudOptions,
) -> None:
    """Stop a task's current run (its devices end their part as ended with the run)."""
    with connected(options) as cloud:
        cloud.call("rpc_exec_stop_server_task", {"task_id": task_id})
        task = cloud.call("rpc_exec_get_task_by_id", {"task_id": task_id})
    if options.json_out:
        print_json(task)
    else:
        typer.echo(f"task {task_id} {task.get('state')}")


@task_app.command("list")
@cloud_options
def list_tasks(
    running: Annotated[bool, typer.Option("--running", help="only running tasks")] = False,
    *,
    options: CloudOptions,
) -> None:
    """List tasks: state, current run, devices running it, last round and accuracy."""
    body = {"running": True} if running else {}
    with connected(options) as cloud:
        tasks = cloud.call("rpc_exec_list_tasks", body)
    if options.json_out:
        print_json(tasks)
        return
    print_table(
        ["task", "state", "run", "devices", "round", "acc", "changed"],
        [_task_summary(t) for t in tasks],
        empty="no tasks",
    )


@task_app.command("show")
@cloud_options
def show_task(
    task_id: TaskIdArg,
    *,
    options: CloudOptions,
) -> None:
    """Show a task's record and its bundle."""
    with connected(options) as cloud:
        task = cloud.call("rpc_exec_get_task_by_id", {"task_id": task_id})
    if options.json_out:
        print_json(task)
        return
    state = task.get("state")
    if task.get("state_reason"):
        state = f"{state} ({task['state_reason']})"
    print_pairs(
        [
            ("task", task.get("task_id")),
            ("kind", task.get("kind")),
            ("state", state),
            ("run", task.get("run")),
            ("server", f"{task.get('host')}:{task.get('port')}"),
            ("criteria", task.get("selection_criteria") or "(every device)"),
            ("server args", task.get("server_arguments") or "-"),
            ("client args", task.get("client_arguments") or "-"),
            ("min devices", task.get("min_devices") or 0),
            ("start deadline", task.get("start_deadline_s") or "-"),
            ("limits", task.get("limits") or "(the configured defaults)"),
            ("tags", task.get("tags")),
            ("bundle version", task.get("version")),
            ("last round", task.get("last_round")),
            ("last acc", task.get("last_acc")),
            ("devices running", task.get("devices_running")),
            ("created", when(task.get("creation_date"))),
            ("changed", when(task.get("last_mod_date"))),
        ]
    )
    files = task.get("files") or []
    if files:
        typer.echo("")
        _print_files(files)


@task_app.command("delete")
@cloud_options
def delete_task(
    task_id: TaskIdArg,
    yes: YesOption = False,
    *,
    options: CloudOptions,
) -> None:
    """Delete a task, its bundle and its history (refused while it runs)."""
    confirm(yes, options.json_out, "delete", f"delete task {task_id} and its runs?")
    with connected(options) as cloud:
        cloud.call("rpc_exec_delete_task", {"task_id": task_id})
    if options.json_out:
        print_json({"task_id": task_id, "deleted": True})
    else:
        typer.echo(f"task {task_id} deleted")
