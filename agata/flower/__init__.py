"""Flower Apps as AGATA tasks, on Flower's own Deployment Runtime (SuperLink/SuperNode).

A task of kind ``flower-app`` is a Flower App project (``pyproject.toml`` with
``[tool.flwr.app]``, or one ``.fab`` file). For each run the cloud starts a SuperLink,
submits the app with ``flwr run`` and follows it; every matching device starts a
SuperNode for it. See ``docs/flower-apps.md``.

``import agata.flower`` stays light (standard library only): a ServerApp imports
:func:`report_round` from here to report its metrics per round. Everything else is in
the submodules, imported by the cloud and the agent:

- :mod:`agata.flower.app_bundle` — what a flower-app bundle must hold, the FAB hash check;
- :mod:`agata.flower.flwr_cli` — Flower's CLI with ``--format json`` and a private FLWR_HOME;
- :mod:`agata.flower.superlink` — the SuperLink process of a run (ports, TLS, state);
- :mod:`agata.flower.app_run` — one run on the cloud: start, follow, log, stop;
- :mod:`agata.flower.fail_fast` — when too few nodes are connected, end the run;
- :mod:`agata.flower.node_keys` — SuperNode keys: made on the device, registered per run;
- :mod:`agata.flower.supernode` — the SuperNode process a device starts for a run.
"""

from __future__ import annotations

from typing import Any

from agata.runtime.reporter import TaskReporter

__all__ = ["report_round"]

_reporter: TaskReporter | None = None


def report_round(server_round: int, **metrics: Any) -> None:
    """Report the metrics of one round (``acc``, ``loss``, ... numbers) to AGATA.

    Writes one TaskReporter ``model`` line to stdout; the ServerApp's log reaches AGATA
    through ``flwr log``, which records it as the run's server metrics of that round.
    Printing ``{"type": "model", "round": N, "acc": A}`` yourself does the same, so a
    ServerApp need not import AGATA at all.
    """
    global _reporter
    if _reporter is None:
        _reporter = TaskReporter(announce=False)
    _reporter.send_metrics(server_round, **metrics)
