# -*- test-case-name: tests.test_capacity -*-
"""
Waiting for room on a Cuckoo without blocking and without busy polling.

feed_cuckoo must not upload while Cuckoo has C{max_pending} tasks waiting
or too little free disk.  L{CapacityGate.wait_for_room} answers at once when
there is room.  When there is not, the caller waits on a Deferred while a
L{LoopingCall} asks C{/cuckoo/status} every C{interval} seconds, and the loop
releases as many waiters as there are free slots.  The loop runs only while
someone waits.
"""

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cuckoodist.cuckoo import CuckooClient
from cuckoodist.errors import CuckoodistError

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

    @param clock: schedules the status loop.
    @param min_free: required free bytes, or C{None} not to check.
    """

    def __init__(self, cuckoo: CuckooClient, clock: Any, max_pending: int, min_free: int | None, interval: float) -> None:
        self._cuckoo = cuckoo
        self._max_pending = max_pending
        self._min_free = min_free
        self._waiters: list[Deferred] = []
        self._loop = LoopingCall(self._probe)
        self._loop.clock = clock
        self._interval = interval
        self._warned_no_disk = False
        self._last_reason = ""

    async def wait_for_room(self) -> None:
        """
        Return when Cuckoo can take one more task.
        """
        if not self._waiters:
            room = await self._room()
            if room > 0:
                return
        waiter = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        if not self._loop.running:
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: log.failure("Cuckoo capacity loop failed", f)
            )
        await waiter

    async def _room(self) -> int:
        try:
            status = await self._cuckoo.status()
        except CuckoodistError as e:
            self._note(f"status unavailable: {e.reason}")
            return 0
        if self._min_free is not None and free_space(status) is None and not self._warned_no_disk:
            self._warned_no_disk = True
            log.warn(
                "check_free_space is on but {url} reports no disk space (Cuckoo 1.2 needs the patched status API); not checking it",
                url=self._cuckoo.url,
            )
        room, why = room_in(status, self._max_pending, self._min_free)
        if room <= 0:
            self._note(why)
        else:
            self._last_reason = ""
        return room

    def _note(self, reason: str) -> None:
        if reason != self._last_reason:
            log.info("Cuckoo {url} is full, holding uploads: {why}", url=self._cuckoo.url, why=reason)
            self._last_reason = reason

    async def _probe(self) -> None:
        if not self._waiters:
            self._loop.stop()
            return
        room = await self._room()
        while room > 0 and self._waiters:
            self._waiters.pop(0).callback(None)
            room -= 1
        if not self._waiters and self._loop.running:
            self._loop.stop()

    def stop(self) -> None:
        """
        Stop probing; waiting uploads are cancelled (their deliveries stay
        unacked and are redelivered).
        """
        if self._loop.running:
            self._loop.stop()
        for waiter in list(self._waiters):
            waiter.cancel()
