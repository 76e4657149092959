"""``agata device list|show|clear-quarantine|revoke|decommission|enrollment-token`` --
devices of a running cloud.

They join ``agata device enroll`` (run on a device, agata/cli/edge_cmd.py) in the same
group; these are the operator's and take an operator token (docs/cli.md).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agata.cli.cloud_client import (
    CloudOptions,
    cloud_options,
)
from agata.cli.operator_output import (
    YesOption,
    confirm,
    connected,
    print_json,
    print_pairs,
    print_table,
    when,
)

__all__ = ["register"]

DeviceIdArg = Annotated[str, typer.Argument(help="the device's id (user_id)")]


def _state(device: dict[str, Any]) -> str:
    if device.get("revoked"):
        return "revoked"
    return "online" if device.get("online") else "offline"


def _tasks(device: dict[str, Any]) -> str:
    parts = [f"{t.get('task_id')}:{t.get('status')}" for t in device.get("tasks") or []]
    return ", ".join(parts) or "-"


@cloud_options
def list_devices(
    query: Annotated[
        str,
        typer.Option(
            "--query",
            "-q",
            help="filter terms (online, quarantined, location=lab, ...) or criteria",
        ),
    ] = "",
    sort: Annotated[str, typer.Option(help="user_id, data_qnt, last_seen, ...")] = "user_id",
    desc: Annotated[bool, typer.Option("--desc", help="reverse the order")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="devices per page")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="skip this many")] = 0,
    *,
    options: CloudOptions,
) -> None:
    """List one page of devices, filtered and sorted by the cloud."""
    body = {
        "limit": limit,
        "offset": offset,
        "sort": sort,
        "order": "desc" if desc else "asc",
        "q": query,
    }
    with connected(options) as cloud:
        page = cloud.call("rpc_exec_query_devices", body)
    if options.json_out:
        print_json(page)
        return
    items = page.get("items") or []
    print_table(
        ["device", "state", "data_qnt", "sensors", "tasks", "last seen"],
        [
            [
                d.get("user_id"),
                _state(d),
                d.get("data_qnt"),
                d.get("sensors"),
                _tasks(d),
                when(d.get("last_seen")),
            ]
            for d in items
        ],
        empty="no devices match",
    )
    total = page.get("total", len(items))
    if items and total > len(items):
        typer.echo(f"{offset + 1}-{offset + len(items)} of {total} (--offset for more)")


@cloud_options
def show_device(
    user_id: DeviceIdArg,
    *,
    options: CloudOptions,
) -> None:
    """Show a device: attributes, state and every task it reported on."""
    with connected(options) as cloud:
        device = cloud.call("rpc_exec_get_user_info", {"user_id": user_id})
    if options.json_out:
        print_json(device)
        return
    print_pairs(
        [
            ("device", device.get("user_id")),
            ("state", _state(device)),
            ("enrolled", device.get("enrolled")),
            ("data_qnt", device.get("data_qnt")),
            ("avg_acc_contrib", device.get("avg_acc_contrib")),
            ("avg_disconnection", device.get("avg_disconnection_per_round")),
            ("sensors", device.get("sensors")),
            ("attributes", device.get("extra")),
            ("last seen", when(device.get("last_seen"))),
            ("created", when(device.get("created_at"))),
        ]
    )
    tasks = device.get("tasks") or []
    if tasks:
        typer.echo("")
        print_table(
            ["task", "status", "reason", "updated"],
            [
                [t.get("task_id"), t.get("status"), t.get("reason"), when(t.get("updated_at"))]
                for t in tasks
            ],
        )


@cloud_options
def clear_quarantine(
    user_id: DeviceIdArg,
    task: Annotated[
        str | None, typer.Option("--task", help="only this task's quarantine (default: all)")
    ] = None,
    *,
    options: CloudOptions,
) -> None:
    """Lift a device's quarantine of a task (or of every task)."""
    body: dict[str, Any] = {"user_id": user_id}
    if task:
        body["task_id"] = task
    with connected(options) as cloud:
        result = cloud.call("rpc_exec_clear_quarantine", body)
    if options.json_out:
        print_json(result)
    else:
        typer.echo(f"cleared {result.get('cleared', 0)} quarantine(s) of {user_id}")


@cloud_options
def revoke_device(
    user_id: DeviceIdArg,
    *,
    options: CloudOptions,
) -> None:
    """Revoke a device's credential (it must enroll again)."""
    with connected(options) as cloud:
        result = cloud.call("rpc_exec_revoke_device", {"user_id": user_id})
    if options.json_out:
        print_json(result)
    elif result.get("revoked"):
        typer.echo(f"device {user_id} revoked")
    else:
        typer.echo(f"device {user_id} held no credential")


@cloud_options
def decommission_device(
    user_id: DeviceIdArg,
    yes: YesOption = False,
    *,
    options: CloudOptions,
) -> None:
    """Remove a device and its credential (its runs' history stays; it may enroll anew)."""
    confirm(yes, options.json_out, "decommission", f"decommission device {user_id}?")
    with connected(options) as cloud:
        result = cloud.call("rpc_exec_delete_device", {"user_id": user_id})
    if options.json_out:
        print_json({**result, "deleted": True})
    else:
        typer.echo(f"device {user_id} decommissioned")


@cloud_options
def create_enrollment_token(
    uses: Annotated[int, typer.Option(min=1, max=100_000, help="devices it may enroll")] = 1,
    hours: Annotated[
        float, typer.Option(min=0.01, max=365 * 24, help="hours until it expires")
    ] = 24.0,
    *,
    options: CloudOptions,
) -> None:
    """Create an enrollment token: the token alone on stdout (shown once), the rest on stderr."""
    body = {"uses": uses, "ttl_seconds": hours * 3600}
    with connected(options) as cloud:
        result = cloud.call("rpc_exec_create_enrollment_token", body)
    if options.json_out:
        print_json(result)
        return
    expires = when(result.get("expires_at"))
    typer.echo(f"enrollment token for {uses} device(s), expires {expires}:", err=True)
    typer.echo(result["enrollment_token"])


def register(device_app: typer.Typer) -> None:
    """Add the operator's device commands to the ``agata device`` group."""
    device_app.command("list")(list_devices)
    device_app.command("show")(show_device)
    device_app.command("clear-quarantine")(clear_quarantine)
    device_app.command("revoke")(revoke_device)
    device_app.command("decommission")(decommission_device)
    device_app.command("enrollment-token")(create_enrollment_token)
