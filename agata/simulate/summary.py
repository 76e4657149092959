"""The summary of a simulation as rich tables (``agata simulate`` without ``--json``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from agata.simulate.simulator import SimulationResult

__all__ = ["render_summary"]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _latency_row(table: Table, name: str, data: dict[str, Any], errors: int) -> None:
    table.add_row(
        name,
        f"{data['count']:,}",
        f"[red]{errors:,}[/]" if errors else "0",
        _ms(data["p50_ms"]),
        _ms(data["p95_ms"]),
        _ms(data["p99_ms"]),
        _ms(data["max_ms"]),
    )


def _hints(errors_by_kind: dict[str, int], legacy: bool) -> list[str]:
    """What the most common failures usually mean."""
    kinds = set(errors_by_kind)
    hints = []
    if "enroll:http_401" in kinds:
        hints.append(
            "enroll 401: the enrollment token is unknown, expired or used up "
            "(it must allow --devices enrollments)"
        )
    if legacy and any(k.endswith(":http_401") for k in kinds):
        hints.append("401 in legacy mode: start the cloud with --legacy-devices")
    if any(k.endswith((":timeout", ":connect")) for k in kinds):
        hints.append("timeouts or refused connections: the cloud is saturated or went away")
    return hints


def render_summary(result: SimulationResult, console: Console | None = None) -> None:
    console = console or Console()
    o, s, f, sim = result.options, result.stats, result.fleet, result.simulator
    steady = result.steady
    title = (
        f"{o.devices:,} simulated devices, {s['elapsed_s']:.0f} s, poll every "
        f"{o.poll_interval:g} s ± {o.jitter:.0%}, against {result.target.get('url')}"
        f" ({result.target.get('mode', 'external')})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("requests")
    for name in ("count", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(name, justify="right")
    for op, data in s["operations"].items():
        if data["count"] or data["errors"]:
            _latency_row(table, op, data, data["errors"])
    _latency_row(table, "[bold]all[/]", s["all"], s["errors"])
    if steady is not None:
        _latency_row(
            table, f"[bold]steady[/] (after {steady['from_s']:.0f} s)", steady, steady["errors"]
        )
    console.print(table)

    steady_rate = steady["requests_per_s"] if steady is not None else "-"
    lines = [
        f"requests/s: {s['requests_per_s']} overall, {steady_rate} steady; "
        f"peak in flight {s['peak_in_flight']}, peak connections {sim['peak_connections']}",
        f"devices: {f['started']:,} started, {f['enrolled']:,} enrolled, "
        f"{f['polled']:,} polled ({f['polls']:,} polls), {f['on_board']:,} on board, "
        f"{f['tasks_completed']:,} task runs completed",
        f"simulator: {sim['cpu_percent']}% of a core ({sim['event_loop']}), event-loop lag "
        f"p99 {_ms(sim['loop_lag_p99_ms'])} ms, max {_ms(sim['loop_lag_max_ms'])} ms",
    ]
    if result.target.get("mode") == "embedded":
        lines.append(
            "note: the cloud ran in this process, on the simulator's event loop: the CPU and "
            "the latencies are both's together (for the cloud's own, run it apart and use "
            "--cloud-url, or `agata bench load`)"
        )
    if steady is None:
        lines.append("note: no steady window (the run ended within the warm-up; see --warmup)")
    if s.get("retries_by_kind"):
        kinds = ", ".join(f"{k} {n}" for k, n in s["retries_by_kind"].items())
        lines.append(
            f"[yellow]retries[/] (failed attempts sent again, as an agent does; a report "
            f"still failing at its last attempt is an error): {kinds}"
        )
    if s["errors_by_kind"]:
        kinds = ", ".join(f"{k} {n}" for k, n in s["errors_by_kind"].items())
        lines.append(f"[red]errors[/]: {kinds}")
        lines += [f"hint: {hint}" for hint in _hints(s["errors_by_kind"], o.legacy)]
    if f["tasks"] is None:
        lines.append(
            "tasks: not set up here (no --operator-token), so whether every device ran "
            "every task it matches is not checked"
        )
    else:
        per_task = ", ".join(f"{t['task_id']} {t['completed']}/{t['matching']}" for t in f["tasks"])
        lines.append(f"tasks (completed/matching devices): {per_task}")
        if f["devices_missing_tasks"]:
            lines.append(
                f"[red]{f['devices_missing_tasks']} devices missed tasks[/], e.g. "
                + "; ".join(f["missing_examples"][:3])
            )
    for line in lines:
        console.print(line, highlight=False)
    verdict = "[green]ok[/]" if result.ok else "[red]NOT ok[/]"
    console.print(f"result: {verdict}")
