# -*- test-case-name: tests.test_task_board -*-
"""
Tests for L{cuckoodist.task_board}: one task list per node and interval,
what it can vouch for, the version check, failures, memory bounds, and
concurrent askers sharing one request (over loopback).
"""

import math

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.cuckoo import CuckooClient
from cuckoodist.http import HTTPClient
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer
from cuckoodist.stages.check_results import CheckResults
from cuckoodist.task_board import NOT_REPORTED, REPORTED, UNCOVERED, UNKNOWN, TaskBoard, lists_tasks
from tests.memory import CUCKOO, World

WAIT = 5.0


class BoardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.make()

    def make(self, **cuckoo: object) -> None:
        options = {"analysis_seconds": 10, "machines": 100}
        options.update(cuckoo)
        self.world = World(self, CheckResults, {"type": "check_results"}, cuckoo=options)
        self.events: list[dict] = []
        self.board = TaskBoard(CuckooClient(self.world.http, CUCKOO), self.world.clock, WAIT, log=Logger(observer=self.events.append))

    def lookup(self, task_id: int, floor: float | None) -> object:
        return self.successResultOf(Deferred.fromCoroutine(self.board.lookup(task_id, floor)))

    def count(self, route: str) -> int:
        return self.world.cuckoo.requests.counts.get(route, 0)

    def test_reported_and_not(self) -> None:
        """
        A reported task is L{REPORTED}; a running one submitted after the
        list's reach is L{NOT_REPORTED}; both from one list, after one
        status request.
        """
        w = self.world
        start = w.clock.seconds()
        done = w.submit(b"MZ one")
        w.clock.advance(5)
        running = w.submit(b"MZ two")
        w.clock.advance(6)
        self.assertEqual((self.lookup(done, start), self.lookup(running, start + 5)), (REPORTED, NOT_REPORTED))
        self.assertEqual((self.count("cuckoo/status"), self.count("tasks/list"), self.count("tasks/view")), (1, 1, 0))

    def test_one_list_per_interval(self) -> None:
        """
        Any number of lookups within an interval share one list; the first
        lookup after it fetches a new one, which shows tasks reported
        since.
        """
        w = self.world
        start = w.clock.seconds()
        tasks = [w.submit(b"MZ %d" % i) for i in range(50)]
        self.assertEqual({self.lookup(t, start) for t in tasks}, {NOT_REPORTED})
        w.clock.advance(WAIT - 0.01)
        self.assertEqual({self.lookup(t, start) for t in tasks}, {NOT_REPORTED})
        self.assertEqual(self.count("tasks/list"), 1)
        w.clock.advance(10)
        self.assertEqual({self.lookup(t, start) for t in tasks}, {REPORTED})
        self.assertEqual(self.count("tasks/list"), 2)

    def test_reach(self) -> None:
        """
        The list reaches back to the oldest floor asked about, less the
        slack, on a grid of the slack; a task older than that reach is
        L{UNCOVERED} until a list reaching it is made, and a second one in
        the same step needs no new list.
        """
        w = self.world
        now = w.clock.seconds()
        task = w.submit()
        self.lookup(task, now)
        self.assertIn(f"completed_after={math.floor((now - 300) / 300) * 300:.0f}", w.agent.sent[-1].url)
        self.assertEqual(self.lookup(task, now - 1000), NOT_REPORTED)
        self.assertIn(f"completed_after={math.floor((now - 1300) / 300) * 300:.0f}", w.agent.sent[-1].url)
        self.assertEqual(self.lookup(task, now - 1001), NOT_REPORTED)
        self.assertEqual(self.count("tasks/list"), 2)

    def test_too_old_or_unknown_floor(self) -> None:
        """
        A task with no floor, or one older than an hour, is L{UNCOVERED}
        and makes no list on its own account nor holds the reach back; the
        list never reaches back more than an hour, even where the grid
        would.
        """
        w = self.world
        now = w.clock.seconds()
        task = w.submit()
        self.assertEqual((self.lookup(task, None), self.lookup(task, now - 4000)), (UNCOVERED, UNCOVERED))
        self.assertEqual(self.count("tasks/list"), 0)
        self.assertEqual(self.lookup(task + 1, now - 3000), NOT_REPORTED)
        self.assertIn(f"completed_after={math.floor((now - 3300) / 300) * 300:.0f}", w.agent.sent[-1].url)
        w.clock.advance(WAIT)
        now = w.clock.seconds()
        edge = now - 3299.5
        self.assertLess(math.floor((edge - 300) / 300) * 300, now - 3600)
        self.assertEqual(self.lookup(task + 2, edge), NOT_REPORTED)
        self.assertIn(f"completed_after={math.ceil(now - 3600):.0f}", w.agent.sent[-1].url)

    def test_legacy_and_unknown_versions(self) -> None:
        """
        Cuckoo 1.2 gets no list: every task is L{UNKNOWN}, and its version
        is asked once, not per lookup.
        """
        self.make(report_format="1.2")
        w = self.world
        task = w.submit()
        self.assertEqual({self.lookup(task, w.clock.seconds()) for _ in range(5)}, {UNKNOWN})
        self.assertEqual((self.count("cuckoo/status"), self.count("tasks/list")), (1, 0))
        self.assertEqual(
            [lists_tasks(v) for v in ("2.0.7", "2.0.0", "2.0", "2.0-rc2", "1.2", "2.1", "20.0", None, 2.0)],
            [True, True, True, True, False, False, False, False, False],
        )

    def test_version_rechecked(self) -> None:
        """
        A node upgraded under the daemon is noticed within the version's
        time to live.
        """
        self.make(report_format="1.2")
        w = self.world
        task = w.submit()
        self.assertEqual(self.lookup(task, w.clock.seconds()), UNKNOWN)
        w.cuckoo.report_format = "2.0"
        w.clock.advance(3599)
        self.assertEqual(self.lookup(task, w.clock.seconds()), UNKNOWN)
        w.clock.advance(1)
        self.assertEqual(self.lookup(task, w.clock.seconds() - 1), NOT_REPORTED)
        self.assertEqual(self.count("cuckoo/status"), 2)

    def test_status_failure(self) -> None:
        """
        When the version cannot be asked, tasks are L{UNKNOWN}, the status
        is asked again only after an interval, and one warning says so.
        """
        w = self.world
        task = w.submit()
        w.agent.refuse = lambda sent: sent.path == "/cuckoo/status"
        for _ in range(3):
            self.assertEqual(self.lookup(task, w.clock.seconds()), UNKNOWN)
        w.clock.advance(WAIT)
        self.assertEqual(self.lookup(task, w.clock.seconds()), UNKNOWN)
        self.assertEqual(w.agent.paths(), ["/cuckoo/status"] * 2)
        self.assertEqual(len([e for e in self.events if "Cannot tell the version" in e["log_format"]]), 1)
        w.agent.refuse = lambda sent: False
        w.clock.advance(WAIT)
        self.assertEqual((self.lookup(task, w.clock.seconds() - 20), self.lookup(999, w.clock.seconds())), (REPORTED, NOT_REPORTED))

    def test_list_failure(self) -> None:
        """
        A failed list makes the board L{UNKNOWN} for that interval, with no
        further list; the warning is not repeated each interval, and its
        recovery is logged once.
        """
        w = self.world
        task = w.submit()
        w.agent.refuse = lambda sent: sent.path == "/tasks/list"
        for _ in range(4):
            self.assertEqual({self.lookup(task, w.clock.seconds()) for _ in range(3)}, {UNKNOWN})
            w.clock.advance(WAIT)
        self.assertEqual(self.count("tasks/list"), 0)
        self.assertEqual(w.agent.paths().count("/tasks/list"), 4)
        self.assertEqual(len([e for e in self.events if "Cannot list" in e["log_format"]]), 1)
        w.agent.refuse = lambda sent: False
        self.assertEqual((self.lookup(task, w.clock.seconds() - 20), self.lookup(999, w.clock.seconds())), (REPORTED, NOT_REPORTED))
        self.assertEqual(len([e for e in self.events if e["log_format"].startswith("Listing")]), 1)

    def test_list_refused_by_server(self) -> None:
        """
        A server error on the list is a failure like a refused connection.
        """
        w = self.world
        w.cuckoo.faults.fail_rate = 1.0
        task = 1
        self.assertEqual(self.lookup(task, w.clock.seconds()), UNKNOWN)

    def test_floors_bounded(self) -> None:
        """
        The floors remembered are bounded in number and age: tasks not
        asked about lately stop holding the list's reach back.
        """
        w = self.world
        self.board = TaskBoard(CuckooClient(w.http, CUCKOO), w.clock, WAIT, max_tracked=10)
        now = w.clock.seconds()
        self.lookup(1, now - 2000)
        for task in range(2, 40):
            self.lookup(task, now)
        w.clock.advance(WAIT)
        self.lookup(99, w.clock.seconds())
        self.assertLessEqual(len(self.board._floors), 11)
        self.assertIn(f"completed_after={math.floor((now - 300) / 300) * 300:.0f}", w.agent.sent[-1].url)
        w.clock.advance(1000)
        self.lookup(100, w.clock.seconds())
        self.assertEqual(list(self.board._floors), [100])

    def test_forget(self) -> None:
        """
        A task found reported stops counting towards the reach.
        """
        w = self.world
        now = w.clock.seconds()
        old = w.submit()
        w.clock.advance(20)
        self.assertEqual(self.lookup(old, now - 1000), REPORTED)
        w.clock.advance(WAIT)
        self.lookup(old + 1, w.clock.seconds())
        self.assertIn(f"completed_after={math.floor((w.clock.seconds() - 300) / 300) * 300:.0f}", w.agent.sent[-1].url)


class SharedFetchTests(TestCase):
    """
    Over loopback, with the real reactor: concurrent askers wait for the
    one list in flight instead of making their own, and as many of them as
    a high prefetch brings are all answered when it arrives (they used to
    resume one inside the other and overflow the stack).
    """

    async def test_concurrent_lookups_share_one_list(self) -> None:
        sim = CuckooSimulator(reactor, analysis_seconds=0)
        server = SimulatorServer(reactor, sim.resource)
        server.start_listening()
        self.addCleanup(server.close)
        http = HTTPClient(reactor, 10)
        self.addCleanup(http.close)
        cuckoo = CuckooClient(http, server.url)
        task = await Deferred.fromCoroutine(cuckoo.submit("a.exe", b"MZ x", {}))
        board = TaskBoard(cuckoo, reactor, 60.0)
        now = reactor.seconds()
        answers = await gatherResults([Deferred.fromCoroutine(board.lookup(task if i == 0 else 1000 + i, now - 1)) for i in range(2000)])
        self.assertEqual((answers[0], set(answers[1:])), (REPORTED, {NOT_REPORTED}))
        self.assertEqual(sim.requests.counts, {"tasks/create/file": 1, "cuckoo/status": 1, "tasks/list": 1})
