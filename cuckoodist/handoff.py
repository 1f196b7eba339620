# -*- test-case-name: tests.test_handoff -*-
"""
A lock that hands itself to the next waiter without growing the stack.

L{twisted.internet.defer.DeferredLock.release} fires the next waiter's
Deferred from inside C{release}.  When that waiter finds what it came for
at once (a fresh task list, a cached Cuckoo status) it releases in turn,
still inside the first C{release}, and so on: a hundred deliveries queued
behind one Cuckoo request nest a hundred coroutine resumptions, and
check_results (prefetch 100) ran out of stack (C{RecursionError}) the
moment its first task list arrived.  L{HandoffLock} keeps the same
interface, but a C{release} made while an earlier one is still handing the
lock over is only noted; the outer C{release} then serves the next waiter
in a loop, so the stack depth stays that of one waiter whatever the queue.
"""

from collections import deque

from twisted.internet.defer import Deferred, succeed

__all__ = ["HandoffLock"]


class HandoffLock:
    """
    A FIFO lock for coroutines: C{await lock.acquire()}, then
    C{lock.release()}.  Cancelling a waiting acquire withdraws it.
    """

    def __init__(self) -> None:
        self.locked = False
        self._waiting: deque[Deferred] = deque()
        self._handing_over = False
        self._released_meanwhile = False

    def acquire(self) -> Deferred:
        """
        A Deferred that fires once the caller holds the lock: at once if it
        is free.
        """
        if not self.locked:
            self.locked = True
            return succeed(None)
        waiter: Deferred = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def release(self) -> None:
        """
        Give the lock to the next waiter, or free it.
        """
        if not self.locked:
            raise RuntimeError("release of an unlocked HandoffLock")
        if self._handing_over:
            # Called by a waiter we are resuming: the loop below goes on.
            self._released_meanwhile = True
            return
        self._handing_over = True
        try:
            again = True
            while again:
                self._released_meanwhile = False
                if not self._waiting:
                    self.locked = False
                    return
                self._waiting.popleft().callback(None)
                again = self._released_meanwhile
        finally:
            self._handing_over = False
