# -*- test-case-name: tests.test_capacity,tests.test_feed_capacity,tests.test_request_budget -*-
"""
Deciding whether one Cuckoo has room for an upload, without holding
deliveries and without asking Cuckoo more than once per interval.

feed_cuckoo must not upload while Cuckoo has C{max_pending} tasks waiting
or too little free disk.  Nor may it hold a request while it waits for
room: an unacked delivery is invisible to the other feed_cuckoo instances,
and RabbitMQ closes the channel of a consumer that holds one longer than
C{consumer_timeout}.  So L{CapacityGate.admit} answers yes or no at once,
from a C{/cuckoo/status} answer at most C{interval} seconds old that it
counts down locally as it admits uploads, and the caller gives refused
requests back to the queue.  L{CapacityGate.when_room} then tells the
caller when a probe, one per C{interval}, finds room again.

Admissions and the probe loop share one cached answer, so a Cuckoo is
probed at most once per C{interval} by a gate however many uploads,
refusals and pause/resume cycles there are (measured end to end in
C{tests.test_request_budget}): uploads closer together than C{interval}
share a probe, and only uploads further apart each need one.
"""

from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cuckoodist.cuckoo import CuckooClient
from cuckoodist.errors import CuckoodistError
from cuckoodist.handoff import HandoffLock

__all__ = ["CapacityGate", "free_space", "room_in"]

log = Logger()


def free_space(status: Mapping[str, Any]) -> int | None:
    """
    Free bytes for new analyses: C{diskspace.analyses.free} on Cuckoo 2.0,
    the smaller of C{samples} and C{reports} on a patched 1.2, or C{None}
    when Cuckoo does not say.
    """
    disk = status.get("diskspace")
    if not isinstance(disk, dict):
        return None
    candidates = []
    for key in ("analyses", "samples", "reports"):
        entry = disk.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("free"), (int, float)):
            candidates.append(int(entry["free"]))
    return min(candidates) if candidates else None


def room_in(status: Mapping[str, Any], max_pending: int, min_free: int | None) -> tuple[int, str]:
    """
    How many more tasks Cuckoo may take now, and why not if none.

    @param min_free: required free bytes, or C{None} not to check.
    """
    tasks = status.get("tasks")
    pending = tasks.get("pending") if isinstance(tasks, dict) else None
    if not isinstance(pending, int):
        pending = 0
    if min_free is not None:
        free = free_space(status)
        if free is not None and free <= min_free:
            return 0, f"only {free} bytes free (need more than {min_free})"
    room = max_pending - pending
    if room <= 0:
        return 0, f"{pending} tasks pending (max_pending {max_pending})"
    return room, ""


class CapacityGate:
    """
    Admits uploads to one Cuckoo while it has room.

    Room is the last status probe's answer less the uploads admitted since.
    Uploads still on the wire during a probe are not in Cuckoo's count yet,
    so Cuckoo may end up with up to C{prefetch_count} more than
    C{max_pending}: a soft limit, as it always was.

    @param clock: times the cached status and schedules the probe loop.
    @param min_free: required free bytes, or C{None} not to check.
    @param interval: seconds a status answer is trusted, and between probes
        while Cuckoo is full.
    @param on_status: told of every probe: C{(answer, "")}, or C{(None,
        reason)} when Cuckoo could not be asked; the dashboard's node board
        shows the last one (and asks for one through L{refresh}).
    """

    def __init__(
        self,
        cuckoo: CuckooClient,
        clock: Any,
        max_pending: int,
        min_free: int | None,
        interval: float,
        on_status: Callable[[Mapping[str, Any] | None, str], object] | None = None,
    ) -> None:
        self._cuckoo = cuckoo
        self._on_status = on_status
        self._clock = clock
        self._max_pending = max_pending
        self._min_free = min_free
        self._interval = interval
        self._room = 0
        self._fresh_until = float("-inf")
        # One probe at a time: callers queued behind it find a fresh answer.
        self._probing = HandoffLock()
        self._watchers: list[Deferred] = []
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._watch()))
        self._loop.clock = clock
        self._warned_no_disk = False
        self._last_reason = ""

    async def admit(self) -> bool:
        """
        Take one upload slot if Cuckoo has room now.

        It asks Cuckoo only when the last answer is older than C{interval};
        an unreachable Cuckoo counts as full until the next probe.
        """
        await self._probing.acquire()
        try:
            await self._refresh()
            if self._room <= 0:
                return False
            self._room -= 1
            return True
        finally:
            self._probing.release()

    async def refresh(self) -> None:
        """
        Ask Cuckoo for its status unless the last answer is still fresh,
        taking no upload slot: how the dashboard keeps a node's figures
        current while no upload asks.  It shares the one cached answer, so
        the node is still asked at most once per C{interval}.
        """
        await self._probing.acquire()
        try:
            await self._refresh()
        finally:
            self._probing.release()

    def when_room(self) -> Deferred:
        """
        A Deferred that fires once a probe finds room again.  Until then
        Cuckoo is asked every C{interval} seconds; cancelling the Deferred
        withdraws the wish.
        """
        watcher = Deferred(lambda d: self._watchers.remove(d) if d in self._watchers else None)
        self._watchers.append(watcher)
        if not self._loop.running:
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: log.failure("Cuckoo capacity loop failed", f)
            )
        return watcher

    async def _refresh(self) -> None:
        """
        Ask Cuckoo unless the last answer is still fresh.  Callers hold
        C{_probing}.
        """
        asked = self._clock.seconds()
        if asked < self._fresh_until:
            return
        # Fresh from when the probe was sent, whatever comes of it: probes
        # start at least an interval apart, and a slow answer does not make
        # the probe loop, ticking once per interval, skip a tick.
        self._fresh_until = asked + self._interval
        self._room = 0
        self._room = await self._ask()

    async def _ask(self) -> int:
        try:
            status = await self._cuckoo.status()
        except CuckoodistError as e:
            if self._on_status is not None:
                self._on_status(None, e.reason)
            self._note(f"status unavailable: {e.reason}")
            return 0
        if self._on_status is not None:
            self._on_status(status, "")
        if self._min_free is not None and free_space(status) is None and not self._warned_no_disk:
            self._warned_no_disk = True
            log.warn(
                "check_free_space is on but {url} reports no disk space (Cuckoo 1.2 needs the patched status API); not checking it",
                url=self._cuckoo.url,
            )
        room, why = room_in(status, self._max_pending, self._min_free)
        if room <= 0:
            self._note(why)
        elif self._last_reason:
            log.info("Cuckoo {url} has room again ({n} tasks)", url=self._cuckoo.url, n=room)
            self._last_reason = ""
        return room

    @property
    def full_reason(self) -> str:
        """
        Why the last probe found no room (C{"12 tasks pending, max_pending
        is 12"}, C{"status unavailable: ..."}), or C{""} while there is
        room: what C{/readyz} says of a paused feed.
        """
        return self._last_reason

    def _note(self, reason: str) -> None:
        if reason != self._last_reason:
            log.info("Cuckoo {url} is full, handing requests back: {why}", url=self._cuckoo.url, why=reason)
            self._last_reason = reason

    async def _watch(self) -> None:
        if self._watchers:
            await self._probing.acquire()
            try:
                await self._refresh()
                full = self._room <= 0
            finally:
                self._probing.release()
            if full:
                return
        watchers, self._watchers = self._watchers, []
        if self._loop.running:
            self._loop.stop()
        for watcher in watchers:
            watcher.callback(None)

    def stop(self) -> None:
        """
        Stop probing; pending L{when_room} Deferreds are cancelled.
        """
        if self._loop.running:
            self._loop.stop()
        for watcher in list(self._watchers):
            watcher.cancel()
