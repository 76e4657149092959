"""Figures beside the limit they are compared with, printed side by side and saved as JSON.

Machines differ by several times, so a figure's verdict is on its relation to a *limit*
measured in the same run with the same settings (a bare FastAPI endpoint, a bare asyncio
or aio-pika request/reply loop, the interpreter start):

- :meth:`BenchReport.ratio`: ``value / limit`` against a target ratio (``at_least=0.5`` for a
  throughput that must reach half of the bare one);
- :meth:`BenchReport.excess`: ``value - limit`` against a target excess (``at_most=20`` for a
  latency that may exceed the interpreter start by 20 ms).

:meth:`BenchReport.add` records a figure alone; its ``at_least``/``at_most`` verdicts are for
quantities that do not scale with the machine (an error count, MB of memory, per cent of
a core).
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""
    #: The same-run limit the figure is compared with (same unit), and what it is.
    limit: float | None = None
    limit_name: str = ""
    #: ``value / limit`` (``relation == "ratio"``) or ``value - limit`` ("excess").
    relation: str = ""
    compared: float | None = None


@dataclass
class BenchReport:
    title: str
    figures: list[Figure] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> Figure:
        target, ok = "", None
        if value is not None and at_least is not None:
            target, ok = f">= {at_least:g} {unit}", value >= at_least
        elif value is not None and at_most is not None:
            target, ok = f"<= {at_most:g} {unit}", value <= at_most
        figure = Figure(name, value, unit, target, ok, note)
        self.figures.append(figure)
        return figure

    def ratio(
        self,
        name: str,
        value: float | None,
        limit: float | None,
        unit: str,
        *,
        limit_name: str,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> Figure:
        """``value`` with its same-run ``limit``; the verdict is on ``value / limit``."""
        compared = value / limit if value is not None and limit else None
        target, ok = "", None
        if at_least is not None:
            target = f">= {at_least:g}x"
            ok = None if compared is None else compared >= at_least
        elif at_most is not None:
            target = f"<= {at_most:g}x"
            ok = None if compared is None else compared <= at_most
        figure = Figure(name, value, unit, target, ok, note, limit, limit_name, "ratio", compared)
        self.figures.append(figure)
        return figure

    def excess(
        self,
        name: str,
        value: float | None,
        limit: float | None,
        unit: str,
        *,
        limit_name: str,
        at_most: float | None = None,
        note: str = "",
    ) -> Figure:
        """``value`` with its same-run ``limit``; the verdict is on ``value - limit``."""
        compared = value - limit if value is not None and limit is not None else None
        ok = None if compared is None or at_most is None else compared <= at_most
        target = "" if at_most is None else f"<= limit + {at_most:g} {unit}"
        figure = Figure(name, value, unit, target, ok, note, limit, limit_name, "excess", compared)
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "context": self.context,
            "figures": [asdict(f) for f in self.figures],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) of samples, linear interpolation."""
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    index = min(len(cuts) - 1, max(0, round(q * 10) - 1))
    return cuts[index]


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} {unit}".strip()


def _compared(figure: Figure) -> str:
    if figure.compared is None:
        return ""
    if figure.relation == "ratio":
        return f"{figure.compared:.2f}x"
    return f"{figure.compared:+,.1f} {figure.unit}"


def render(reports: list[BenchReport]) -> None:
    """Print reports as rich tables: value, same-run limit, ratio (or excess), target."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    for report in reports:
        table = Table(title=report.title, title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("limit (same run)", justify="right")
        table.add_column("vs limit", justify="right")
        table.add_column("target", justify="right")
        table.add_column("", justify="center")
        table.add_column("note")
        for f in report.figures:
            limit = ""
            if f.relation:
                limit = f"{_number(f.limit, f.unit)} {f.limit_name}".strip()
            mark = {True: "[green]ok[/]", False: "[red]MISSED[/]", None: ""}[f.ok]
            table.add_row(
                f.name, _number(f.value, f.unit), limit, _compared(f), f.target, mark, f.note
            )
        console.print(table)
