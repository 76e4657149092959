"""The edge agent (the original "client task manager") and the edge gateway.

One concern per module:

==================  ============================================================
``agent``           the asyncio loop: poll, policy, download, start, supervise,
                    failover, push wake-ups, clean shutdown
``device_info``     identity and attributes from a device file and flags
``cloud_client``    the HTTP API of the cloud gateway (retries, error mapping)
``bundle_cache``    verified, atomic bundle downloads per task and version
``local_state``     what survives a restart (running groups, quarantine, counters)
``policy``          ``one`` / ``all``: which compatible tasks run
``push``            the device's server-sent-event stream
``reports``         status and metric reports, sent in order in the background
``task_runs``       one client side; cleanup after a killed agent
``credential``      enrollment and the stored device credential
``edge_gateway``    the original deployment's bus -> HTTP gateway
==================  ============================================================
"""

from agata.edge.agent import Agent, EventCallback, RunningTask
from agata.edge.cloud_client import CloudClient
from agata.edge.device_info import DeviceInfo, DeviceSource
from agata.edge.local_state import QuarantineEntry
from agata.protocol.offers import TaskOffer

__all__ = [
    "Agent",
    "CloudClient",
    "DeviceInfo",
    "DeviceSource",
    "EventCallback",
    "QuarantineEntry",
    "RunningTask",
    "TaskOffer",
]
