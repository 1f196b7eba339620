# -*- test-case-name: tests.test_task_board,tests.test_stage_check_results -*-
"""
Which tasks of one Cuckoo node are reported, from one task list per
interval instead of one task view per task and interval.

check_results used to ask C{GET /tasks/view/<id>} for every task message
every C{wait_between_requests}: with 1,000 tasks in flight and 5 s, 200
requests a second to one node, whose API is a single Flask process.  Cuckoo
2.0 can answer for all of them at once: C{GET /tasks/list?status=reported
&completed_after=T} lists every reported task whose analysis completed
after T.  A L{TaskBoard} makes that request at most once per interval and
answers every task message of its node in this daemon from it:

  - a task on the list is reported;
  - a task not on it is not reported yet, I{if} the list covers it: its
    analysis cannot have completed at or before T.  The task message says
    when the task was last known unfinished (its submission, or the last
    view that found it pending or running: its I{floor}); the board covers
    the task when C{floor - slack >= T}.  C{slack} (300 s) absorbs the
    skew between our clock and Cuckoo's, which turns T into its local time
    with C{fromtimestamp} and compares it with C{completed_on}.
  - anything else (Cuckoo 1.2, an unknown version, a failed list, a task
    older than the board looks back) is L{UNKNOWN}: the caller views the
    task, which also gives it a recent floor.

T is the smallest floor among the tasks the board was asked about lately,
less C{slack}, rounded down to a multiple of C{slack} (so that tasks
arriving oldest-last after a restart refetch at most once per step), and
never earlier than C{max_lookback} (an hour) ago: the list then holds the
reported tasks of that window still on Cuckoo, a handful when
parse_and_submit deletes what it collected, and never a node's history.

A list never shows failed tasks (nor C{recovered} ones, whose
C{completed_on} stays empty); the caller finds those with occasional views
of tasks long past their expected end.

One fetch runs at a time (a L{HandoffLock}, as in
L{cuckoodist.stages.capacity.CapacityGate}): askers queued behind it find
a fresh list and make no request.  The version of the node
(C{/cuckoo/status}) is asked once and cached for C{version_ttl}.
"""

import enum
import math
from typing import Any

from twisted.logger import Logger

from cuckoodist.cuckoo import CuckooClient
from cuckoodist.errors import CuckoodistError
from cuckoodist.handoff import HandoffLock

__all__ = ["TaskBoard", "Answer", "REPORTED", "NOT_REPORTED", "UNCOVERED", "UNKNOWN", "lists_tasks"]


class Answer(enum.Enum):
    """
    What a board knows of one task.

    @cvar REPORTED: on a list: pass it on.
    @cvar NOT_REPORTED: absent from a fresh list that covers it.
    @cvar UNCOVERED: the board works, but cannot vouch for this task (no
        floor, or one older than the board looks back): view it once.
    @cvar UNKNOWN: no board for this node now (not Cuckoo 2.0, or its list
        failed this round): view tasks one by one.
    """

    REPORTED = "reported"
    NOT_REPORTED = "not reported"
    UNCOVERED = "uncovered"
    UNKNOWN = "unknown"


REPORTED = Answer.REPORTED
NOT_REPORTED = Answer.NOT_REPORTED
UNCOVERED = Answer.UNCOVERED
UNKNOWN = Answer.UNKNOWN


def lists_tasks(version: object) -> bool:
    """
    Whether a node of this C{/cuckoo/status} version has the task list
    with C{status} and C{completed_after} filters that the board relies
    on: 2.0.x.  1.2 has a list too, but nothing here was checked against
    its database layer, so it keeps the per-task views it always had.
    """
    return isinstance(version, str) and (version == "2.0" or version.startswith(("2.0.", "2.0-")))


class TaskBoard:
    """
    The reported tasks of one Cuckoo node, fetched at most once per
    C{interval}.

    @param cuckoo: the node's client (with the node's request cap).
    @param clock: the time source.
    @param interval: seconds a list is fresh; check_results' C{wait_between
        _requests}, so that a task done just after one list is on the list
        its next message finds: done to forwarded within two intervals.
    @param slack: seconds of clock skew tolerated between this host and the
        node.
    @param max_lookback: how far back, in seconds, a list ever reaches.
    @param version_ttl: seconds a known node version is trusted (a node can
        be upgraded under a running daemon).
    @param max_tracked: the most tasks whose floors are remembered; past it
        the longest unasked are forgotten.
    """

    def __init__(
        self,
        cuckoo: CuckooClient,
        clock: Any,
        interval: float,
        *,
        slack: float = 300.0,
        max_lookback: float = 3600.0,
        version_ttl: float = 3600.0,
        max_tracked: int = 100_000,
        log: Logger | None = None,
    ) -> None:
        self._cuckoo = cuckoo
        self._clock = clock
        self._interval = interval
        self._slack = slack
        self._max_lookback = max_lookback
        self._version_ttl = version_ttl
        self._max_tracked = max_tracked
        self._log = log or Logger()
        self._lock = HandoffLock()
        self._lists: bool | None = None
        self._version_until = -math.inf
        self._reported: frozenset[int] = frozenset()
        self._fetched_at = -math.inf
        self._failed = False
        self._covered_from = math.inf
        # task id -> (floor, when last asked about)
        self._floors: dict[int, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"<TaskBoard {self._cuckoo.url} reported={len(self._reported)} tracked={len(self._floors)}>"

    @property
    def url(self) -> str:
        return self._cuckoo.url

    async def lookup(self, task_id: int, floor: float | None) -> Answer:
        """
        What the board knows of task C{task_id}, fetching a new list when
        the last is older than C{interval} or does not reach back to
        C{floor}.

        @param floor: epoch seconds at which the task was last known not to
            have completed (submission, or a view that found it pending or
            running); C{None} if unknown.
        """
        now = self._clock.seconds()
        if floor is not None and self._coverable(floor, now):
            # Only floors a list may reach count towards its reach: a task
            # older than that is viewed, and comes back with a new floor.
            self._floors[task_id] = (floor, now)
        await self._lock.acquire()
        try:
            if not await self._knows_lists():
                return UNKNOWN
            if task_id in self._reported:
                return self._seen(task_id)
            now = self._clock.seconds()
            fresh = now - self._fetched_at < self._interval
            if fresh and self._failed:
                return UNKNOWN
            coverable = floor is not None and self._coverable(floor, now)
            if fresh and (not coverable or self._covers(floor)):
                return NOT_REPORTED if coverable else UNCOVERED
            if not coverable:
                # A list could not vouch for it: make none on its account.
                return UNCOVERED
            if not await self._fetch(now):
                return UNKNOWN
            if task_id in self._reported:
                return self._seen(task_id)
            return NOT_REPORTED if self._covers(floor) else UNCOVERED
        finally:
            self._lock.release()

    def forget(self, task_id: int) -> None:
        """
        Stop counting C{task_id}'s floor (it is reported, failed or gone),
        so that it no longer holds the lists' reach back.
        """
        self._floors.pop(task_id, None)

    def _seen(self, task_id: int) -> Answer:
        self.forget(task_id)
        return REPORTED

    def _coverable(self, floor: float, now: float) -> bool:
        return floor - self._slack >= now - self._max_lookback

    def _covers(self, floor: float | None) -> bool:
        return floor is not None and floor - self._slack >= self._covered_from

    async def _knows_lists(self) -> bool:
        now = self._clock.seconds()
        if now < self._version_until:
            return bool(self._lists)
        try:
            status = await self._cuckoo.status()
        except CuckoodistError as e:
            # Unknown for one interval: per-task views meanwhile, and no
            # status request per message.
            self._version_until = now + self._interval
            if self._lists is not False:
                self._log.warn("Cannot tell the version of Cuckoo {url} ({why}); checking its tasks one by one", url=self.url, why=e.reason)
            self._lists = False
            return False
        version = status.get("version")
        lists = lists_tasks(version)
        if lists != self._lists:
            self._log.info(
                "Cuckoo {url} is version {version}: {how}",
                url=self.url,
                version=str(version)[:40],
                how="one task list per interval answers for its tasks" if lists else "checking its tasks one by one",
            )
        self._lists = lists
        self._version_until = now + self._version_ttl
        if not lists:
            self._reported, self._fetched_at, self._covered_from = frozenset(), -math.inf, math.inf
        return lists

    def _reach(self, now: float) -> float:
        """
        The C{completed_after} of the next list: the smallest floor of the
        tasks asked about lately, less the slack, on a grid of C{slack},
        and no earlier than C{max_lookback} ago.
        """
        stale = now - max(20 * self._interval, 2 * self._slack)
        for task_id in [t for t, (_, asked) in self._floors.items() if asked < stale]:
            del self._floors[task_id]
        if len(self._floors) > self._max_tracked:
            by_age = sorted(self._floors, key=lambda t: self._floors[t][1])
            for task_id in by_age[: len(self._floors) - self._max_tracked]:
                del self._floors[task_id]
        lowest = min((floor for floor, _ in self._floors.values()), default=now)
        reach = math.floor((lowest - self._slack) / self._slack) * self._slack
        return max(reach, math.ceil(now - self._max_lookback))

    async def _fetch(self, now: float) -> bool:
        """
        Replace the list.  A failure makes the board answer L{UNKNOWN} for
        the rest of this interval (the callers view their tasks) and is
        logged once, not every interval, until a list works again.
        """
        reach = self._reach(now)
        try:
            reported = await self._cuckoo.reported_since(int(reach))
        except CuckoodistError as e:
            self._fetched_at = self._clock.seconds()
            if not self._failed:
                self._log.warn(
                    "Cannot list the reported tasks of Cuckoo {url} ({why}); checking tasks one by one until it works again",
                    url=self.url,
                    why=e.reason,
                )
            self._failed = True
            return False
        if self._failed:
            self._log.info("Listing the reported tasks of Cuckoo {url} works again", url=self.url)
        self._failed = False
        self._reported = reported
        # Fresh from when it was asked for: a task reported while the
        # answer was on its way may be missing from it.
        self._fetched_at = now
        self._covered_from = reach
        return True
