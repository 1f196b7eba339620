"""
feed_cuckoo's throttle: room by pending tasks and free disk, answered from
one status probe per interval, and watching for room without busy polling.
"""

import json
import os

from twisted.internet.defer import CancelledError, Deferred
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
        if isinstance(reply, Deferred):
            return await reply
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
        With room, an upload is admitted at once and nothing is scheduled.
        """
        clock = Clock()
        gate = CapacityGate(StatusSource([status(0)]), clock, 5, None, 10)
        self.assertTrue(self.successResultOf(_ensure(gate.admit())))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_probe_per_interval(self) -> None:
        """
        One status answer admits as many uploads as it leaves room for,
        counted down locally; the next upload is refused without asking
        again, and Cuckoo is asked again only once the answer is
        C{interval} old.
        """
        clock = Clock()
        source = StatusSource([status(2)])
        gate = CapacityGate(source, clock, 5, None, 10)
        answers = [self.successResultOf(_ensure(gate.admit())) for _ in range(4)]
        self.assertEqual(answers, [True, True, True, False])
        self.assertEqual(source.calls, 1)
        clock.advance(9.9)
        self.assertFalse(self.successResultOf(_ensure(gate.admit())))
        self.assertEqual(source.calls, 1)
        clock.advance(0.1)
        self.assertTrue(self.successResultOf(_ensure(gate.admit())))
        self.assertEqual(source.calls, 2)

    def test_concurrent_admissions_share_a_probe(self) -> None:
        """
        Uploads that arrive while a probe is under way wait for its answer
        instead of asking again, and share the room it reports.
        """
        clock = Clock()
        reply = Deferred()
        source = StatusSource([reply])
        gate = CapacityGate(source, clock, 5, None, 10)
        admissions = [_ensure(gate.admit()) for _ in range(3)]
        for d in admissions:
            self.assertNoResult(d)
        reply.callback(status(3))
        self.assertEqual([self.successResultOf(d) for d in admissions], [True, True, False])
        self.assertEqual(source.calls, 1)

    def test_unreachable_counts_as_full(self) -> None:
        """
        A Cuckoo whose status cannot be read takes no uploads, and is not
        asked again before the interval is up.
        """
        clock = Clock()
        source = StatusSource([TransientError("down"), status(0)])
        gate = CapacityGate(source, clock, 5, None, 10)
        self.assertFalse(self.successResultOf(_ensure(gate.admit())))
        self.assertFalse(self.successResultOf(_ensure(gate.admit())))
        self.assertEqual(source.calls, 1)
        clock.advance(10)
        self.assertTrue(self.successResultOf(_ensure(gate.admit())))

    def test_when_room(self) -> None:
        """
        While Cuckoo is full, its status is probed once per interval, not
        more; the watcher fires on the first probe that finds room, and the
        loop then stops.
        """
        clock = Clock()
        source = StatusSource([status(5), status(5), status(5), TransientError("down"), status(4)])
        gate = CapacityGate(source, clock, 5, None, 10)
        self.assertFalse(self.successResultOf(_ensure(gate.admit())))
        d = gate.when_room()
        self.assertNoResult(d)
        for calls in (2, 3, 4):
            clock.advance(10)
            self.assertNoResult(d)
            self.assertEqual(source.calls, calls)
        clock.advance(10)
        self.successResultOf(d)
        self.assertEqual(source.calls, 5)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(self.successResultOf(_ensure(gate.admit())))
        self.assertEqual(source.calls, 5)

    def test_stop_cancels_watchers(self) -> None:
        """
        Stopping the gate cancels what waits for room, and the probe loop.
        """
        clock = Clock()
        gate = CapacityGate(StatusSource([status(9)]), clock, 5, None, 10)
        d = gate.when_room()
        gate.stop()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])


def _ensure(coro):
    return Deferred.fromCoroutine(coro)
