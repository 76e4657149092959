"""Figures with their targets, printed side by side and saved as JSON."""

from __future__ import annotations

import json
import statistics
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


@dataclass
class Report:
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


def render(reports: list[Report]) -> None:
    """Print reports as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for report in reports:
        table = Table(title=report.title, title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("target", justify="right")
        table.add_column("", justify="center")
        table.add_column("note")
        for f in report.figures:
            value = "n/a" if f.value is None else f"{f.value:,.3f} {f.unit}".replace(".000 ", " ")
            mark = {True: "[green]ok[/]", False: "[red]MISSED[/]", None: ""}[f.ok]
            table.add_row(f.name, value, f.target, mark, f.note)
        console.print(table)
