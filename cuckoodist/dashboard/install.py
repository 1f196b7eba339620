# -*- test-case-name: tests.test_dashboard -*-
"""
Putting the dashboard together for one daemon: its parts from the
daemon's L{StageContext} and stages, its pages under the operations
listener's root, and the service that keeps its history.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.application.service import Service
from twisted.web.resource import Resource

from cuckoodist.dashboard.dumps import DumpListing
from cuckoodist.dashboard.history import History
from cuckoodist.dashboard.nodes import NodeProbes
from cuckoodist.node_status import node_board
from cuckoodist.dashboard.queues import QueueSampler
from cuckoodist.dashboard.resources import DashboardPage, root_redirect
from cuckoodist.dashboard.resubmit import Resubmitter
from cuckoodist.dashboard.state import DashboardState, secrets_of
from cuckoodist.stages.keys import max_priorities

__all__ = ["DashboardService", "install_dashboard"]


class DashboardService(Service):
    """
    Keeps the dashboard's history (and its queue depths) and the Cuckoo
    nodes' figures current while the daemon runs.

    @ivar history: the L{History}.
    @ivar state: the L{DashboardState}.
    @ivar probes: the L{NodeProbes}.
    """

    def __init__(self, history: History, state: DashboardState, probes: NodeProbes) -> None:
        self.history = history
        self.state = state
        self.probes = probes

    def startService(self) -> None:
        super().startService()
        self.history.start()
        self.probes.start()

    def stopService(self) -> None:
        super().stopService()
        self.history.stop()
        self.probes.stop()


def install_dashboard(root: Resource, context: Any, stages: Sequence[Any]) -> DashboardService:
    """
    Serve the dashboard of a daemon under C{root}: C{/dashboard/}, and
    C{/} redirecting there.

    @param root: the operations listener's root resource.
    @param context: the daemon's L{cuckoodist.stages.base.StageContext}.
    @param stages: the daemon's stages, in configuration order.
    @return: the service to start and stop with the daemon (named
        C{dashboard}).
    """
    config = context.config
    queues = [stage.stage_config.consumer_queue for stage in stages]
    sampler = QueueSampler(context.reactor, context.connection, queues)
    history = History(context.reactor, context.metrics, queues, sampler)
    listing = DumpListing([stage.stage_config.dump_dir for stage in stages if hasattr(stage.stage_config, "dump_dir")])
    token = config.dashboard.token
    resubmitter = Resubmitter(context.reactor, context.connection, listing, frozenset(queues), max_priorities(config))
    state = DashboardState(
        context, stages, history, sampler, node_board(context), listing, bool(token), secrets_of(config, token)
    )
    root.putChild(b"dashboard", DashboardPage(state.current, history.document, resubmitter, token))
    root.putChild(b"", root_redirect())
    gates = [stage.gate for stage in stages if getattr(stage, "gate", None) is not None]
    service = DashboardService(history, state, NodeProbes(context.reactor, gates, history.interval))
    service.setName("dashboard")
    return service
