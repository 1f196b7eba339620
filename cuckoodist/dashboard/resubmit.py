# -*- test-case-name: tests.test_dashboard -*-
"""
The dashboard's resubmit button: dumped messages back on their queues,
on the daemon's own connection.

It decides as C{cuckoodist resubmit -c} does
(L{cuckoodist.commands.resubmit.plan_resubmit}): each file on its own,
only to queues a stage of this daemon consumes, the retry count cleared;
and it publishes as that command does
(L{cuckoodist.publish.publish_confirmed}), deleting each file only once
the broker confirmed its message.  A file is named by the request, and
looked up in the directory's listing, never joined to a path.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.threads import deferToThreadPool

from cuckoodist.commands.resubmit import plan_resubmit
from cuckoodist.dashboard.dumps import DumpListing, read_dump
from cuckoodist.publish import publish_confirmed

__all__ = ["Busy", "BrokerUnavailable", "Resubmitter"]

#: Seconds a resubmission may wait for the broker's confirms.
TIMEOUT = 30.0


class Busy(Exception):
    """
    Another resubmission is under way.
    """


class BrokerUnavailable(Exception):
    """
    The daemon has no broker connection now.
    """


class Resubmitter:
    """
    Puts dump files back on their queues.

    @param reactor: bounds the wait for confirms, and reads the dump
        files in its thread pool.
    @param connection: the daemon's L{AMQPConnectionService}.
    @param listing: the daemon's dump files.
    @param allowed_queues: the consumer queues of the daemon's stages.
    @param max_priorities: queue -> C{max_priority}, to create a missing
        queue as its consumer would.
    """

    def __init__(
        self,
        reactor: Any,
        connection: Any,
        listing: DumpListing,
        allowed_queues: frozenset[str],
        max_priorities: Mapping[str, int],
        timeout: float = TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._connection = connection
        self._listing = listing
        self._allowed = allowed_queues
        self._max_priorities = dict(max_priorities)
        self._timeout = timeout
        self._busy = False

    async def resubmit(self, names: Iterable[str] | None) -> tuple[bool, dict[str, Any]]:
        """
        Resubmit the named dump files, or all of them.

        @param names: file names as the state document lists them, or
            C{None} for every file.
        @return: whether every chosen file went back in time, and
            C{{"resubmitted": [names], "skipped": [{"file", "reason"}]}}.
        @raise Busy: another resubmission is under way.
        @raise BrokerUnavailable: there is no broker connection now.
        """
        if self._busy:
            raise Busy()
        if getattr(self._connection, "connected_to", None) is None:
            raise BrokerUnavailable()
        self._busy = True
        try:
            return await self._resubmit(names)
        finally:
            self._busy = False

    async def _resubmit(self, names: Iterable[str] | None) -> tuple[bool, dict[str, Any]]:
        paths, unknown = self._listing.paths(names)
        skipped = [{"file": name, "reason": "no such dump file"} for name in unknown]
        # Reading the files (whole messages) is for a worker thread, not
        # the reactor's.
        plan = await deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), lambda: plan_resubmit(((path, *read_dump(path)) for path in paths), None, self._allowed)
        )
        for path, reason in plan.skipped:
            skipped.append({"file": os.path.basename(path), "reason": reason.replace(" (see --any-queue)", "")})
        resubmitted: list[str] = []

        def confirmed(index: int) -> None:
            path = plan.chosen[index][0]
            try:
                os.unlink(path)
            except FileNotFoundError:
                # Resubmitted meanwhile by the command: gone is what we want.
                pass
            resubmitted.append(os.path.basename(path))

        complete = True
        if plan.chosen:
            publishing = Deferred.fromCoroutine(
                publish_confirmed(
                    self._connection,
                    [(queue, body) for _, queue, body in plan.chosen],
                    confirmed,
                    max_priorities=self._max_priorities,
                )
            )
            try:
                await publishing.addTimeout(self._timeout, self._reactor)
            except DeferredTimeout:
                complete = False
                done = set(resubmitted)
                for path, _, _ in plan.chosen:
                    if os.path.basename(path) not in done:
                        skipped.append({
                            "file": os.path.basename(path),
                            "reason": f"the broker did not confirm it within {self._timeout:g} s; the file is kept",
                        })
        return complete, {"resubmitted": resubmitted, "skipped": skipped}
