# -*- test-case-name: tests.test_dashboard -*-
"""
What each Cuckoo node said of itself when it was last asked: the
dashboard's node table.

The dashboard must not ask Cuckoo anything of its own (a node's API is a
single process, and the capacity gates already ask it once per
C{status_interval}).  So the L{NodeBoard} is told: every feed_cuckoo
stage's L{cuckoodist.stages.capacity.CapacityGate} reports each
C{/cuckoo/status} answer (or its failure) here, and the board keeps the
last one per configured node.  A node no feed stage of this daemon probes
shows as never probed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import attrs

from cuckoodist.stages.capacity import free_space

__all__ = ["NodeBoard", "NodeStatus", "node_board"]



@attrs.frozen
class NodeStatus:
    """
    One node's last probe.

    @ivar probed_at: when, by the daemon's clock.
    @ivar pending: tasks waiting for a machine, C{None} when the answer did
        not say (or the probe failed).
    @ivar running: tasks running now, likewise.
    @ivar free_disk: free bytes for analyses, C{None} when Cuckoo does not
        report them (Cuckoo 1.2 without the patch).
    @ivar error: why the probe failed, C{""} when it answered.
    """

    probed_at: float
    pending: int | None = None
    running: int | None = None
    free_disk: int | None = None
    error: str = ""


def _count(tasks: Any, key: str) -> int | None:
    value = tasks.get(key) if isinstance(tasks, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class NodeBoard:
    """
    The last status of each Cuckoo node probed by this daemon.

    @param clock: stamps each report; the reactor or a test's L{Clock}.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._last: dict[str, NodeStatus] = {}

    def answered(self, name: str, status: Mapping[str, Any]) -> None:
        """
        Record a C{/cuckoo/status} answer of the node configured as C{name}.
        """
        tasks = status.get("tasks")
        self._last[name] = NodeStatus(
            probed_at=self._clock.seconds(),
            pending=_count(tasks, "pending"),
            running=_count(tasks, "running"),
            free_disk=free_space(status),
        )

    def failed(self, name: str, reason: str) -> None:
        """
        Record that the node configured as C{name} could not be asked.
        """
        self._last[name] = NodeStatus(probed_at=self._clock.seconds(), error=reason)

    def reporter(self, name: str) -> Callable[[Mapping[str, Any] | None, str], None]:
        """
        What a capacity gate of the node configured as C{name} calls with
        each probe's answer, or C{None} and why there is none.
        """

        def report(status: Mapping[str, Any] | None, reason: str) -> None:
            if status is None:
                self.failed(name, reason)
            else:
                self.answered(name, status)

        return report

    def get(self, name: str) -> NodeStatus | None:
        """
        The node's last probe, C{None} if it was never probed.
        """
        return self._last.get(name)

    def rows(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """
        The dashboard's rows, one per configured node in C{names}.
        """
        rows = []
        for name in names:
            last = self._last.get(name)
            rows.append({
                "name": name,
                "pending": last.pending if last else None,
                "running": last.running if last else None,
                "free_disk": last.free_disk if last else None,
                "probed_at": last.probed_at if last else None,
                "error": last.error if last else "",
            })
        return rows


def node_board(context: Any) -> NodeBoard:
    """
    The one L{NodeBoard} of the daemon C{context} (a
    L{cuckoodist.stages.base.StageContext}) belongs to.
    """
    return context.share("node-board", lambda: NodeBoard(context.reactor))
