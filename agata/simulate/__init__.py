"""Simulated fleets: many lightweight devices in one asyncio process (``agata simulate``).

No federated learning and no task process: each simulated device talks to the cloud
as the edge agent does (enroll, report attributes, poll for tasks, download bundles,
report progress) and counts what happened. See :mod:`agata.simulate.simulator`.
"""

from agata.simulate.cloud_process import CloudProcess
from agata.simulate.simulator import (
    SimulationOptions,
    SimulationResult,
    run_fleet,
    simulate_against,
    simulate_embedded,
)

__all__ = [
    "CloudProcess",
    "SimulationOptions",
    "SimulationResult",
    "run_fleet",
    "simulate_against",
    "simulate_embedded",
]
