# -*- test-case-name: tests.test_handoff -*-
"""
Tests for L{cuckoodist.handoff}.
"""

import sys

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.handoff import HandoffLock


class HandoffLockTests(SynchronousTestCase):
    def test_free_lock_is_taken_at_once(self) -> None:
        lock = HandoffLock()
        self.successResultOf(lock.acquire())
        self.assertTrue(lock.locked)
        lock.release()
        self.assertFalse(lock.locked)

    def test_waiters_served_in_order_one_at_a_time(self) -> None:
        """
        Waiters get the lock in the order they asked, each only once the
        holder before it released.
        """
        lock = HandoffLock()
        self.successResultOf(lock.acquire())
        order: list[int] = []
        waiters = [lock.acquire().addCallback(lambda _, i=i: order.append(i)) for i in range(3)]
        self.assertEqual(order, [])
        lock.release()
        self.assertEqual(order, [0])
        self.assertNoResult(waiters[1])
        lock.release()
        lock.release()
        self.assertEqual(order, [0, 1, 2])
        self.assertTrue(lock.locked)
        lock.release()
        self.assertFalse(lock.locked)

    def test_deep_queue_of_synchronous_holders(self) -> None:
        """
        Many more waiters than the recursion limit, each releasing as soon
        as it holds the lock, are all served by one release without the
        stack growing with the queue.
        """
        lock = HandoffLock()
        self.successResultOf(lock.acquire())
        served: list[int] = []
        depths: list[int] = []

        async def asker(i: int) -> None:
            await lock.acquire()
            try:
                served.append(i)
                depths.append(_depth())
            finally:
                lock.release()

        count = 3 * sys.getrecursionlimit()
        done = [Deferred.fromCoroutine(asker(i)) for i in range(count)]
        lock.release()
        for d in done:
            self.successResultOf(d)
        self.assertEqual(served, list(range(count)))
        self.assertLess(max(depths) - min(depths), 5)
        self.assertFalse(lock.locked)

    def test_holder_that_reacquires_queues_behind_others(self) -> None:
        lock = HandoffLock()
        self.successResultOf(lock.acquire())
        order: list[str] = []

        def first(_: object) -> None:
            order.append("first")
            lock.release()
            lock.acquire().addCallback(lambda _: order.append("first again"))

        lock.acquire().addCallback(first)
        lock.acquire().addCallback(lambda _: order.append("second"))
        lock.release()
        self.assertEqual(order, ["first", "second"])
        lock.release()
        self.assertEqual(order, ["first", "second", "first again"])

    def test_cancelled_wait_is_withdrawn(self) -> None:
        lock = HandoffLock()
        self.successResultOf(lock.acquire())
        gone = lock.acquire()
        kept = lock.acquire()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        lock.release()
        self.successResultOf(kept)
        lock.release()
        self.assertFalse(lock.locked)

    def test_release_unlocked(self) -> None:
        self.assertRaises(RuntimeError, HandoffLock().release)


def _depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth
