"""When a flower-app run ends failed because of its nodes, instead of Flower's long wait.

Open-source Flower waits for nodes up to the strategy's timeout (an hour by default)
when too few connect or one drops. AGATA reads the run's SuperNodes every few seconds
and applies :class:`~agata.flower.app_bundle.RunOptions`:

- **join**: from the submission, ``join_seconds`` for ``min_nodes`` nodes to be online
  at once. Past it with fewer, the run fails: "only 1 of the 2 nodes needed joined
  within 60 s; not connected: device-b".
- **loss**: a node that was online and has not been for ``lost_seconds`` is lost (one
  back online is not). More lost nodes than ``lost_nodes`` (the tolerance) fail the
  run, naming them: "lost 1 node(s) mid-run, more than the 0 tolerated: device-a".

A node is named by the device whose key registered it, else by Flower's node id.
:meth:`NodeWatch.check` is a pure function of what it was shown, so the rules are tested
without processes; :mod:`agata.flower.app_run` feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agata.flower.app_bundle import RunOptions
from agata.flower.flwr_cli import NodeStatus

__all__ = ["NodeWatch"]


@dataclass
class NodeWatch:
    """The fail-fast rules of one run (see the module docstring).

    Args:
        options: the run's rules.
        started: when the run was submitted (a monotonic clock's seconds).
        names: device id by Flower node id, for the nodes AGATA registered.
    """

    options: RunOptions
    started: float
    names: Mapping[str, str] = field(default_factory=dict)
    joined: bool = False  # min_nodes were online at once
    _seen: set[str] = field(default_factory=set)  # were online once
    _away_since: dict[str, float] = field(default_factory=dict)

    def name(self, node_id: str) -> str:
        device = self.names.get(node_id)
        return f"device {device}" if device else f"node {node_id}"

    def check(self, nodes: Iterable[NodeStatus], now: float) -> str | None:
        """The reason to end the run as failed now, or None to go on."""
        listed = list(nodes)
        online = {n.node_id for n in listed if n.online}
        self._seen |= online
        if len(online) >= self.options.min_nodes:
            self.joined = True
        if not self.joined:
            waited = now - self.started
            if waited <= self.options.join_seconds:
                return None
            expected = set(self.names) | {n.node_id for n in listed}
            missing = sorted(self.name(node) for node in expected - online)
            named = "; not connected: " + ", ".join(missing) if missing else ""
            return (
                f"only {len(online)} of the {self.options.min_nodes} nodes needed joined "
                f"within {self.options.join_seconds:.0f} s{named}"
            )
        for node in self._seen:
            if node in online:
                self._away_since.pop(node, None)
            else:
                self._away_since.setdefault(node, now)
        lost = sorted(
            self.name(node)
            for node, since in self._away_since.items()
            if now - since >= self.options.lost_seconds
        )
        if len(lost) > self.options.lost_nodes:
            return (
                f"lost {len(lost)} node(s) mid-run, more than the {self.options.lost_nodes} "
                f"tolerated (away over {self.options.lost_seconds:.0f} s): {', '.join(lost)}"
            )
        return None
