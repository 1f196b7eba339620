# -*- test-case-name: tests.test_dashboard,tests.test_dashboard_history -*-
"""
The depth and consumer count of this daemon's queues, asked now and then
on the daemon's own connection.

The dashboard shows them in its stages table and charts them; asking the
broker on every page poll would put the cost of looking on the broker.
So a L{QueueSampler} asks when told to (once per history interval),
remembers the last answer, and asks nothing while the daemon has no
connection: the daemon's consumers are then reconnecting, and a depth
from before the loss is no longer worth showing.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cuckoodist.amqp.queue_depth import QueueDepth, queue_depths

__all__ = ["QueueSampler"]

log = Logger()


class QueueSampler:
    """
    The last known L{QueueDepth} of each of a daemon's queues.

    @param clock: bounds each question with C{timeout}.
    @param connection: the daemon's L{AMQPConnectionService}.
    @param names: the queues to ask about, in display order.
    @param timeout: seconds one round of questions may take.

    @ivar latest: queue -> its last L{QueueDepth}, or C{None} when the
        queue does not exist or its depth is unknown (no connection, or the
        question failed).
    """

    def __init__(self, clock: Any, connection: Any, names: Sequence[str], timeout: float = 10.0) -> None:
        self._clock = clock
        self._connection = connection
        self.names = tuple(dict.fromkeys(names))
        self._timeout = timeout
        self._asking: Deferred | None = None
        self._failing = False
        self.latest: dict[str, QueueDepth | None] = {name: None for name in self.names}

    def refresh(self, then: Callable[[Mapping[str, QueueDepth | None]], object] | None = None) -> Deferred | None:
        """
        Ask the broker again, unless a question is already out or there is
        no connection (the depths are then unknown).

        @param then: called with the new depths once they came (not when
            a question was already out).
        @return: a Deferred that fires when the round (this one, or the
            one already out) is over, never with an error; or C{None} when
            nothing is asked.
        """
        if self._asking is not None:
            return self._asking
        if not self.names:
            return None
        if getattr(self._connection, "connected_to", None) is None:
            self.latest = {name: None for name in self.names}
            return None

        async def ask() -> None:
            client = await self._connection.whenConnected()
            depths = await queue_depths(client, self.names)
            self.latest = dict(depths)
            if self._failing:
                log.info("Queue depths for the dashboard are available again")
                self._failing = False
            if then is not None:
                then(self.latest)

        def failed(reason: Any) -> None:
            self.latest = {name: None for name in self.names}
            if not self._failing:
                self._failing = True
                log.info("Could not read queue depths for the dashboard: {why}", why=reason.getErrorMessage() or reason.type.__name__)

        def done(_: object) -> None:
            self._asking = None

        self._asking = asking = Deferred.fromCoroutine(ask()).addTimeout(self._timeout, self._clock)
        asking.addErrback(failed)
        asking.addBoth(done)
        return asking

    def stop(self) -> None:
        """
        Stop waiting for a question still out.
        """
        if self._asking is not None:
            self._asking.cancel()
