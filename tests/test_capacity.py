"""
feed_cuckoo's throttle: room by pending tasks and free disk, answered from
one status probe per interval, and watching for room without busy polling.
"""

import json
import os

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
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

    def test_slow_answers_skip_no_tick(self) -> None:
        """
        An answer is fresh from when it was asked for: with answers that
        take a second, a full Cuckoo is still probed on every tick of the
        loop, once per interval, not every other tick.
        """
        clock = Clock()
        source = _TimedSource(clock, [status(5)] * 4 + [status(0)], latency=1.0)
        gate = CapacityGate(source, clock, 5, None, 10)
        admitted = _ensure(gate.admit())
        clock.advance(1)
        self.assertFalse(self.successResultOf(admitted))
        d = gate.when_room()
        # Clock.advance moves time before it runs what is due: step through
        # each answer's arrival, as a reactor would.
        for tick in range(3):
            clock.advance(1)
            clock.advance(9)
        self.assertEqual(source.asked, [0, 11, 21, 31])
        clock.advance(1)
        clock.advance(9)
        clock.advance(1)
        self.successResultOf(d)

    def test_probes_bounded_by_time(self) -> None:
        """
        Driven as feed_cuckoo drives it (an admission per delivery every
        50 ms, a refusal handing back and watching for room, resuming when
        room returns) against a Cuckoo that fills and drains, the gate
        probes at most once per interval: never two probes closer than the
        interval, and no more than the elapsed time allows, whatever the
        number of uploads.
        """
        clock = Clock()
        replies = [status(pending) for pending in (0, 3, 5, 5, 1, 4, 5, 0, 2, 5, 5, 5, 3) * 4]
        source = _TimedSource(clock, replies, latency=0.2)
        interval = 2.0
        gate = CapacityGate(source, clock, 5, None, interval)
        uploads = 0
        watching: list[Deferred] = []
        for step in range(2000):  # 100 s
            if not watching:
                d = _ensure(gate.admit())
                clock.advance(0)
                if d.called:
                    if self.successResultOf(d):
                        uploads += 1
                    else:
                        watcher = gate.when_room()
                        watching.append(watcher)
                        watcher.addCallbacks(lambda _: watching.clear(), lambda f: f.trap(CancelledError))
            clock.advance(0.05)
        gate.stop()
        gaps = [b - a for a, b in zip(source.asked, source.asked[1:])]
        self.assertGreater(uploads, len(source.asked))
        self.assertGreaterEqual(min(gaps), interval - 1e-9, gaps)
        self.assertLessEqual(len(source.asked), 100 / interval + 1)

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


class _TimedSource(StatusSource):
    """
    A L{StatusSource} whose answers take C{latency} seconds, noting when
    each probe was sent.
    """

    def __init__(self, clock, replies, latency):
        super().__init__(replies)
        self.clock = clock
        self.latency = latency
        self.asked = []

    async def status(self):
        self.asked.append(self.clock.seconds())
        await deferLater(self.clock, self.latency, lambda: None)
        return await super().status()


def _ensure(coro):
    return Deferred.fromCoroutine(coro)
