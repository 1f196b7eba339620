"""
feed_cuckoo's throttle: room by pending tasks and free disk, and waiting
without blocking or busy polling.
"""

import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import TransientError
from cuckoodist.stages.capacity import CapacityGate, free_space, room_in

DATA = os.path.join(os.path.dirname(__file__), "data")


class StatusSource:
    """
    Answers C{status()} from a list of replies, like a Cuckoo whose load
    changes between probes.
    """

    url = "http://cuckoo.test"

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    async def status(self):
        self.calls += 1
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


def status(pending, free=None):
    doc = {"tasks": {"pending": pending}}
    if free is not None:
        doc["diskspace"] = {"analyses": {"free": free}, "binaries": {"free": free * 10}}
    return doc


class RoomTests(SynchronousTestCase):
    def test_real_status_replies(self) -> None:
        """
        On real Cuckoo 2.0 replies (630 pending), there is room only when
        max_pending is above the pending count.
        """
        with open(os.path.join(DATA, "status-2.0-samples.json")) as fp:
            reply = json.load(fp)[0]
        self.assertEqual(free_space(reply), 547157393408)
        self.assertEqual(room_in(reply, 10, None)[0], 0)
        self.assertIn("630 tasks pending", room_in(reply, 10, None)[1])
        self.assertEqual(room_in(reply, 640, None), (10, ""))

    def test_disk(self) -> None:
        """
        Free space is checked on 2.0's analyses, or the smaller of a patched
        1.2's samples/reports; a Cuckoo that does not say is not blocked.
        """
        self.assertEqual(room_in(status(0, free=100), 5, 100)[0], 0)
        self.assertEqual(room_in(status(0, free=101), 5, 100)[0], 5)
        patched = {"tasks": {"pending": 0}, "diskspace": {"samples": {"free": 50}, "reports": {"free": 500}}}
        self.assertEqual(free_space(patched), 50)
        self.assertIsNone(free_space({"tasks": {"pending": 0}}))
        self.assertEqual(room_in({"tasks": {"pending": 0}}, 5, 100)[0], 5)


class GateTests(SynchronousTestCase):
    def test_room_now(self) -> None:
        """
        With room, an upload goes at once and nothing is scheduled.
        """
        clock = Clock()
        gate = CapacityGate(StatusSource([status(0)]), clock, 5, None, 10)
        self.successResultOf(_ensure(gate.wait_for_room()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_waits_until_room(self) -> None:
        """
        While Cuckoo is full the upload waits; the status is probed once per
        interval, not more, and the loop stops once the waiter is released.
        """
        clock = Clock()
        source = StatusSource([status(5), status(5), TransientError("down"), status(4)])
        gate = CapacityGate(source, clock, 5, None, 10)
        d = _ensure(gate.wait_for_room())
        self.assertNoResult(d)
        clock.advance(10)
        self.assertNoResult(d)
        clock.advance(10)
        self.assertNoResult(d)
        self.assertEqual(source.calls, 3)
        clock.advance(10)
        self.successResultOf(d)
        self.assertEqual(source.calls, 4)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_cancels_waiters(self) -> None:
        """
        Stopping the gate cancels waiting uploads (their deliveries stay
        unacked) and the probe loop.
        """
        clock = Clock()
        gate = CapacityGate(StatusSource([status(9)]), clock, 5, None, 10)
        d = _ensure(gate.wait_for_room())
        gate.stop()
        self.failureResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])


def _ensure(coro):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)
