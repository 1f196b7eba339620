# -*- test-case-name: tests.test_dashboard -*-
"""
Keeping the dashboard's node table current while no upload asks: the
capacity gates ask a Cuckoo only for an upload, so with no work coming
in, the last answer (L{cuckoodist.node_status}) would freeze.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


__all__ = ["NodeProbes"]

log = Logger()


class NodeProbes:
    """
    Asks capacity gates to refresh stale status answers, one question per
    gate at a time.

    @param clock: schedules the loop.
    @param gates: the L{cuckoodist.stages.capacity.CapacityGate}s of the
        daemon's feed_cuckoo stages.
    @param interval: seconds between two rounds.
    """

    def __init__(self, clock: Any, gates: Iterable[Any], interval: float) -> None:
        self._gates = list(gates)
        self._interval = interval
        self._asking: dict[int, Deferred] = {}
        self._loop = LoopingCall(self.probe)
        self._loop.clock = clock

    def start(self) -> None:
        if self._gates and not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        for asking in list(self._asking.values()):
            asking.cancel()

    def probe(self) -> None:
        """
        One round: each gate whose last question is answered refreshes.
        """
        for index, gate in enumerate(self._gates):
            if index in self._asking:
                continue
            asking = Deferred.fromCoroutine(gate.refresh())
            if asking.called:
                asking.addErrback(self._failed)
                continue
            self._asking[index] = asking
            asking.addErrback(self._failed)
            asking.addBoth(lambda _, index=index: self._asking.pop(index, None))

    @staticmethod
    def _failed(reason: Any) -> None:
        if not reason.check(CancelledError):
            log.failure("Refreshing a Cuckoo status for the dashboard failed", reason)
