# -*- test-case-name: tests.test_stage_check_results -*-
"""
check_results in memory: the first check near the expected end, a Cuckoo
2.0 node answered from one task list per interval, failed tasks still
found by a task view, Cuckoo 1.2 checked task by task with back-off, and
the deadline.

L{Broker} plays the delay queues: it hands each re-published message back
to the stage when its delay is over, on the L{MemoryReactor}'s clock, so a
whole life of many tasks runs in one test without real time.
"""

import heapq
import json

import attrs

from treq.testing import StringStubbingResource
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.cuckoo import CuckooClient
from cuckoodist.messages import RetryInfo
from cuckoodist.stages.check_results import FALLBACK_AFTER, CheckResults, delay_step
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from tests.memory import CUCKOO, World

FAIL_MARKER = b"CUCKOODIST-FAIL-ANALYSIS"
WAIT = 5.0
STAGE = {"type": "check_results", "wait_between_requests": WAIT, "analysis_deadline": 3600}


class Broker:
    """
    The delay queues and the consumer, in memory: every message the stage
    re-publishes to its own queue comes back when its delay is over.

    @ivar forwarded: task id -> when it was passed on.
    @ivar failed: task id -> the failed envelope.
    @ivar checks: task id -> the times the stage handled its message.
    """

    def __init__(self, testcase: SynchronousTestCase, world: World) -> None:
        self.testcase = testcase
        self.world = world
        self._due: list[tuple[float, int, bytes]] = []
        self._order = 0
        self.forwarded: dict[int, float] = {}
        self.failed: dict[int, dict] = {}
        self.checks: dict[int, list[float]] = {}

    def publish(self, body: bytes, at: float | None = None) -> None:
        self._order += 1
        heapq.heappush(self._due, (self.world.clock.seconds() if at is None else at, self._order, body))

    def run(self, until: float) -> None:
        w = self.world
        while self._due and self._due[0][0] <= until:
            at, _, body = heapq.heappop(self._due)
            w.clock.advance(max(0.0, at - w.clock.seconds()))
            task_id = json.loads(body)["TaskId"]
            self.checks.setdefault(task_id, []).append(w.clock.seconds())
            before = len(w.outbox.published)
            self.testcase.successResultOf(w.deliver(body))
            for out in w.outbox.published[before:]:
                if out.queue == "worker/check_results":
                    self.publish(out.body, w.clock.seconds() + out.delay)
                elif out.queue == "worker/parse_and_submit":
                    self.forwarded[task_id] = w.clock.seconds()
                else:
                    self.failed[task_id] = out.json()
        w.clock.advance(max(0.0, until - w.clock.seconds()))


class CheckResultsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 10})

    def requests(self) -> dict[str, int]:
        return dict(self.world.cuckoo.requests.counts)

    def failure(self) -> dict:
        (failed,) = self.world.outbox.published
        self.assertEqual((failed.queue, failed.delay), ("worker/failed", None))
        return failed.json()

    def test_reported_passed_on(self) -> None:
        """
        A reported task goes to the producer queue, once, without this
        stage's retry count and timing hints and with its deadline, found
        on the node's task list: no view of the task.
        """
        w = self.world
        task_id = w.submit()
        w.clock.advance(10)
        task = w.task_message(task_id, submitted_at=w.clock.seconds() - 10, expected_end=w.clock.seconds() - 1, last_view=5.0, retry=RetryInfo(2, 1.0))
        self.assertIsNone(self.successResultOf(w.deliver(task.encode())))
        (out,) = w.outbox.published
        self.assertEqual((out.queue, out.delay), ("worker/parse_and_submit", None))
        doc = out.json()
        for key in ("Retry", "ExpectedEnd", "LastView", "PendingSince"):
            self.assertNotIn(key, doc)
        self.assertEqual((doc["TaskId"], doc["CuckooURL"], doc["Deadline"]), (task_id, CUCKOO, w.clock.seconds() - 10 + 3600))
        self.assertEqual(w.agent.paths(), ["/cuckoo/status", "/tasks/list"])
        self.assertEqual(w.agent.sent[-1].url.split("?", 1)[1], f"status=reported&completed_after={int(w.clock.seconds() - 10 - 300) // 300 * 300}")

    def test_early_message_waits_without_requests(self) -> None:
        """
        Before its expected end a message only travels through delay
        queues, in hops of the delay ladder, and is first checked less
        than one interval before that end; no request is made until then.
        """
        w = self.world
        broker = Broker(self, w)
        task_id = w.submit()
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=start + 100).encode())
        broker.run(start + 94.9)
        self.assertEqual(w.agent.sent, [])
        delays = sorted({p.delay for p in w.outbox.published})
        self.assertEqual(delays, [20.0, 80.0])
        broker.run(start + 100)
        first = broker.checks[task_id][2]
        self.assertTrue(start + 100 - WAIT < first <= start + 100, first - start)
        self.assertEqual(broker.forwarded, {task_id: first})

    def test_default_timeout(self) -> None:
        """
        Without C{ExpectedEnd} (a Go feed_cuckoo's or an older cuckoodist's
        message), the first check comes C{default_timeout} (120 s) after
        C{SubmittedAt}.
        """
        w = self.world
        broker = Broker(self, w)
        task_id = w.submit()
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id).encode())
        broker.run(start + 200)
        self.assertEqual(w.outbox.published[0].delay, 80.0)
        self.assertTrue(start + 120 - WAIT < broker.forwarded[task_id] <= start + 120)

    def test_many_tasks_one_list_per_interval(self) -> None:
        """
        200 tasks in flight on one Cuckoo 2.0, submitted over 100 s: one
        task list per interval answers for all of them, no task is viewed,
        and each is passed on within two intervals of being reported.
        """
        w = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 60, "machines": 200})
        broker = Broker(self, w)
        start = w.clock.seconds()
        submitted = {}
        for i in range(200):
            broker.run(w.clock.seconds() + 0.5)
            task_id = w.submit(b"MZ sample %d" % i)
            submitted[task_id] = w.clock.seconds()
            broker.publish(w.task_message(task_id, expected_end=w.clock.seconds() + 60).encode())
        broker.run(start + 400)
        self.assertEqual(sorted(broker.forwarded), sorted(submitted))
        counts = dict(w.cuckoo.requests.counts)
        self.assertNotIn("tasks/view", counts)
        self.assertEqual(counts["cuckoo/status"], 1)
        # One list per interval in which tasks were checked (their messages
        # hopped through delay queues until less than an interval before
        # their expected end).
        checked = [at for task_id, times in broker.checks.items() for at in times if at > submitted[task_id] + 60 - WAIT]
        span = max(checked) - min(checked)
        self.assertGreater(span, 100)
        self.assertLessEqual(counts["tasks/list"], span / WAIT + 2)
        # A list is made by the first check after the last one aged, and
        # checks here come every half second.
        self.assertGreaterEqual(counts["tasks/list"], span / (WAIT + 0.5) - 1)
        self.assertGreater(len(checked), 2 * counts["tasks/list"])
        state = w.cuckoo.state()["tasks"]
        self.assertEqual({s["status"] for s in state.values()}, {"reported"})
        for task_id, at in broker.forwarded.items():
            reported = submitted[task_id] + 60
            self.assertTrue(reported <= at <= reported + 2 * WAIT, (task_id, at - reported))

    def test_failed_found_by_view(self) -> None:
        """
        A failed task never shows on a list of reported tasks: it is viewed
        once it is L{FALLBACK_AFTER} intervals past its expected end, and
        failed as final with Cuckoo's errors; until then only lists are
        asked.
        """
        w = self.world
        broker = Broker(self, w)
        task_id = w.submit(b"MZ" + FAIL_MARKER)
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=start + 10).encode())
        broker.run(start + 10 + FALLBACK_AFTER * WAIT - 0.1)
        self.assertEqual((broker.failed, self.requests().get("tasks/view")), ({}, None))
        broker.run(start + 10 + (FALLBACK_AFTER + 1) * WAIT)
        doc = broker.failed[task_id]
        self.assertEqual((doc["Final"], doc["Desc"], doc["TaskId"], doc["Service"]), (True, "permanent failure", task_id, "check_results"))
        self.assertIn(f"Cuckoo task {task_id} ended as failed_analysis: Analysis failed: simulated failure marker", doc["Error"])
        self.assertEqual(self.requests()["tasks/view"], 1)
        self.assertEqual(broker.forwarded, {})

    def test_fallback_views_back_off(self) -> None:
        """
        A task stuck in Cuckoo's queue long past its expected end is viewed
        ever more rarely (each view when it is half as overdue again), not
        every interval.
        """
        w = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 10000, "machines": 1})
        broker = Broker(self, w)
        w.submit(b"MZ blocker")
        task_id = w.submit(b"MZ queued")
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=start + 10).encode())
        broker.run(start + 3000)
        self.assertEqual(w.cuckoo.state()["tasks"][str(task_id)]["status"], "pending")
        viewed = [json.loads(p.body)["LastView"] - (start + 10) for p in w.outbox.published if "LastView" in json.loads(p.body)]
        overdue = sorted(set(viewed))
        # The first at FALLBACK_AFTER intervals, each next one when half as
        # overdue again but at least that long after the last (checks come
        # each interval, so up to one late).
        grace = FALLBACK_AFTER * WAIT
        self.assertTrue(grace <= overdue[0] < grace + WAIT, overdue)
        for before, after in zip(overdue, overdue[1:]):
            due = max(1.5 * before, before + grace)
            self.assertTrue(due <= after < due + WAIT, (before, after))
        self.assertEqual(w.cuckoo.requests.counts["tasks/view"], len(overdue))
        self.assertLess(len(overdue), 12)
        self.assertGreater(len(broker.checks[task_id]), 500)
        self.assertEqual(broker.failed, {})

    def test_failed_without_errors(self) -> None:
        """
        A failed state without errors from Cuckoo says that none was given.
        A node whose version is unknown is checked with views.
        """
        w = self.world
        answer = json.dumps({"task": {"id": 7, "status": "recovered", "errors": []}}).encode()
        w.agent.serve(CUCKOO, StringStubbingResource(lambda *request: (200, {b"content-type": b"application/json"}, answer)))
        self.successResultOf(w.deliver(w.task_message(7, expected_end=w.clock.seconds()).encode()))
        self.assertEqual(self.failure()["Error"], "Cuckoo task 7 ended as recovered: no error given")
        self.assertEqual(w.agent.paths(), ["/cuckoo/status", "/tasks/view/7"])

    def test_not_reported_comes_back_after_one_interval(self) -> None:
        """
        A task not on the list yet is re-published to this stage's own queue
        through the delay of C{wait_between_requests}, with its deadline,
        its retry count and its expected end, and the delivery acks.
        """
        w = self.world
        task_id = w.submit()
        submitted = w.clock.seconds()
        task = w.task_message(task_id, expected_end=submitted, retry=RetryInfo(1, 5.0))
        self.successResultOf(w.deliver(task.encode()))
        (later,) = w.outbox.published
        self.assertEqual((later.queue, later.delay), ("worker/check_results", WAIT))
        doc = later.json()
        self.assertEqual((doc["Deadline"], doc["Retry"]["attempts"], doc["ExpectedEnd"]), (submitted + 3600, 1, submitted))
        self.assertNotIn("tasks/view", self.requests())

    def test_legacy_node_uses_views(self) -> None:
        """
        On Cuckoo 1.2 every check is a task view, and the waits between
        them grow by half each time from one interval up to four.
        """
        w = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 200, "report_format": "1.2"})
        broker = Broker(self, w)
        task_id = w.submit()
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=start + 10).encode())
        broker.run(start + 300)
        counts = dict(w.cuckoo.requests.counts)
        self.assertNotIn("tasks/list", counts)
        self.assertEqual(counts["cuckoo/status"], 1)
        self.assertEqual(counts["tasks/view"], len(broker.checks[task_id]) - 1)
        delays = [p.delay for p in w.outbox.published if p.queue == "worker/check_results"][1:]
        self.assertEqual((delays[0], max(delays)), (WAIT, 4 * WAIT))
        for before, after in zip(delays, delays[1:]):
            self.assertTrue(before <= after <= 1.5 * before, delays)
        self.assertLessEqual(broker.forwarded[task_id] - (start + 200), 4 * WAIT)

    def test_no_submission_time(self) -> None:
        """
        A message without SubmittedAt (a Go feed_cuckoo's) is viewed at
        once, gets its deadline from the time of this first check, and
        from then on a list covers it: the view found it running.
        """
        w = self.world
        task_id = w.submit()
        self.successResultOf(w.deliver(w.task_message(task_id, submitted_at=None).encode()))
        doc = w.outbox.published[0].json()
        self.assertEqual((doc["Deadline"], doc["PendingSince"], doc["LastView"]), (w.clock.seconds() + 3600,) + (w.clock.seconds(),) * 2)
        self.assertEqual(w.outbox.published[0].delay, WAIT)
        w.clock.advance(WAIT)
        self.successResultOf(w.deliver(w.outbox.published[0].body))
        self.assertEqual(w.agent.paths(), ["/cuckoo/status", f"/tasks/view/{task_id}", "/tasks/list"])

    def test_deadline(self) -> None:
        """
        A task still unfinished past its deadline is viewed once more and
        failed as final, and not checked again; one just at it is checked
        again.
        """
        w = self.world
        task_id = w.submit()
        self.successResultOf(w.deliver(w.task_message(task_id, deadline=w.clock.seconds()).encode()))
        self.assertEqual(w.outbox.published[-1].queue, "worker/check_results")
        w.outbox.published.clear()
        self.successResultOf(w.deliver(w.task_message(task_id, submitted_at=w.clock.seconds() - 3601).encode()))
        doc = self.failure()
        self.assertEqual(doc["Final"], True)
        self.assertIn(f"Cuckoo task {task_id} still running at its deadline (3600 s after submission)", doc["Error"])

    def test_forged_expected_end(self) -> None:
        """
        An C{ExpectedEnd} past the deadline cannot park a task: it is
        checked at its deadline.
        """
        w = self.world
        task_id = w.submit()
        broker = Broker(self, w)
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=9e10, deadline=start + 1000).encode())
        broker.run(start + 1010)
        self.assertLessEqual(min(broker.checks[task_id][1:]), start + 1000)
        self.assertEqual(broker.forwarded, {task_id: broker.checks[task_id][-1]})

    def test_board_shared_by_stages(self) -> None:
        """
        Two check_results stages of one daemon (same context, same
        interval) answer their tasks from one list.
        """
        w = self.world
        other = CheckResults(w.context, attrs.evolve(w.config.stages[0], consumer_queue="worker/check_results_b"))
        first, second = w.submit(b"MZ a"), w.submit(b"MZ b")
        now = w.clock.seconds()
        self.successResultOf(w.deliver(w.task_message(first, expected_end=now).encode()))
        self.successResultOf(w.deliver(w.task_message(second, expected_end=now).encode(), handler=other._on_delivery))
        self.assertEqual([p.delay for p in w.outbox.published], [WAIT, WAIT])
        self.assertEqual(w.agent.paths(), ["/cuckoo/status", "/tasks/list"])

    def test_future_hints_cannot_hide_a_task(self) -> None:
        """
        C{PendingSince} and C{LastView} from the future (forged, or from a
        skewed clock) neither make a list vouch for a task forever nor
        suppress the view that finds it failed.
        """
        w = self.world
        broker = Broker(self, w)
        task_id = w.submit(b"MZ" + FAIL_MARKER)
        start = w.clock.seconds()
        broker.publish(w.task_message(task_id, expected_end=start + 10, pending_since=9e10, last_view=9e10).encode())
        broker.run(start + 10 + (FALLBACK_AFTER + 1) * WAIT)
        self.assertIn("ended as failed_analysis", broker.failed[task_id]["Error"])

    def test_unlisted_cuckoo(self) -> None:
        """
        A task naming a Cuckoo this configuration does not list is invalid,
        and no request is made.
        """
        w = self.world
        self.successResultOf(w.deliver(w.task_message(1, cuckoo_url="http://elsewhere.test:8090").encode()))
        self.assertEqual((self.failure()["Desc"], w.agent.sent), ("invalid message", []))

    def test_task_gone(self) -> None:
        """
        A task Cuckoo does not know is failed as final when viewed.
        """
        w = self.world
        self.successResultOf(w.deliver(w.task_message(42, submitted_at=None).encode()))
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Error"]), (True, f"Cuckoo {CUCKOO} has no task 42"))

    def test_list_failure_falls_back_to_views(self) -> None:
        """
        When the task list fails, the tasks of that round are viewed
        instead, and a later round lists again.
        """
        w = self.world
        task_id = w.submit()
        w.agent.refuse = lambda sent: sent.path == "/tasks/list"
        self.successResultOf(w.deliver(w.task_message(task_id, expected_end=w.clock.seconds()).encode()))
        self.assertEqual(w.agent.paths(), ["/cuckoo/status", "/tasks/list", f"/tasks/view/{task_id}"])
        w.agent.refuse = lambda sent: False
        w.clock.advance(10)
        self.successResultOf(w.deliver(w.outbox.published[0].body))
        self.assertEqual(w.agent.paths()[3:], ["/tasks/list"])
        self.assertEqual(w.outbox.published[-1].queue, "worker/parse_and_submit")

    def test_unreachable_cuckoo_retried(self) -> None:
        """
        A view that cannot reach Cuckoo is tried again after 1 s and 2 s,
        inside the stage, and succeeds when Cuckoo is back.
        """
        w = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 10, "report_format": "1.2"})
        task_id = w.submit()
        w.agent.refuse = lambda sent: sent.path.startswith("/tasks/view") and len(w.agent.sent) <= 3
        d = w.deliver(w.task_message(task_id, submitted_at=None).encode())
        w.clock.advance(1)
        self.assertNoResult(d)
        w.clock.advance(2)
        self.successResultOf(d)
        self.assertEqual(w.agent.paths(), ["/cuckoo/status"] + [f"/tasks/view/{task_id}"] * 3)
        self.assertEqual(w.outbox.published[0].queue, "worker/check_results")

    def test_unreachable_cuckoo_transient(self) -> None:
        """
        When every try fails, the task is failed as transient (the overseer
        retries it later), after 4 tries 1, 2 and 4 s apart.
        """
        w = self.world
        task_id = w.submit()
        w.agent.refuse = lambda sent: True
        d = w.deliver(w.task_message(task_id, submitted_at=None).encode())
        for wait in (1, 2, 3):
            w.clock.advance(wait)
            self.assertNoResult(d)
        w.clock.advance(1)
        self.successResultOf(d)
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Desc"], w.agent.paths().count(f"/tasks/view/{task_id}")), (False, "transient failure", 4))
        self.assertIn("unreachable", doc["Error"])


class ExpectedEndTests(SynchronousTestCase):
    """
    C{ExpectedEnd}: set by feed_cuckoo from the request's C{timeout},
    honoured by check_results, and decoded as hostile input.
    """

    def feed(self, **payload: str) -> dict:
        from tests.test_stage_feed_cuckoo import request, stage

        w = World(self, FeedCuckoo, stage())
        self.successResultOf(w.deliver(request(**payload)))
        (out,) = w.outbox.published
        self.assertEqual((out.queue, out.delay), ("worker/check_results", None))
        return out.json()

    def test_feed_sets_expected_end(self) -> None:
        """
        feed_cuckoo publishes at once (a Go check_results on the queue sees
        the task as before), with C{ExpectedEnd} the submission time plus
        the request's timeout; without a usable timeout there is none, and
        check_results counts C{default_timeout}.
        """
        doc = self.feed(timeout="300")
        self.assertEqual(doc["ExpectedEnd"], doc["SubmittedAt"] + 300)
        for timeout in ("", "0", "-5"):
            self.assertNotIn("ExpectedEnd", self.feed(timeout=timeout), timeout)
        self.assertNotIn("ExpectedEnd", self.feed())
        self.assertEqual(
            [CuckooClient.timeout_of({"timeout": t}) for t in (" 60 ", "+7", "9" * 400, "1_000", "\u0666", "60.5", "abc", "1e3")],
            [60, 7, None, None, None, None, None, None],
        )

    def test_hostile_values_refused(self) -> None:
        """
        A timing key that is not a plausible time is an invalid message,
        and no request is made.
        """
        for key in ("ExpectedEnd", "PendingSince", "LastView"):
            for value in ("soon", True, -1, 10**400, [1], {"a": 1}):
                w = World(self, CheckResults, STAGE)
                doc = json.loads(w.task_message(1).encode())
                doc[key] = value
                self.successResultOf(w.deliver(json.dumps(doc).encode()))
                (failed,) = w.outbox.published
                self.assertEqual((failed.queue, failed.json()["Desc"], w.agent.sent), ("worker/failed", "invalid message", []), (key, value))

    def test_round_trip_and_unknown_keys(self) -> None:
        """
        The timing keys survive a re-publish; unknown keys (a newer
        version's) are harmless.
        """
        w = World(self, CheckResults, STAGE)
        now = w.clock.seconds()
        doc = json.loads(w.task_message(1, expected_end=now + 50, pending_since=now - 3, last_view=now - 2).encode())
        doc["SomethingNew"] = {"x": 1}
        self.successResultOf(w.deliver(json.dumps(doc).encode()))
        (later,) = w.outbox.published
        self.assertEqual(
            {k: later.json()[k] for k in ("ExpectedEnd", "PendingSince", "LastView")},
            {"ExpectedEnd": now + 50, "PendingSince": now - 3, "LastView": now - 2},
        )
        self.assertEqual(later.delay, 40.0)


class DelayStepTests(SynchronousTestCase):
    def test_ladder(self) -> None:
        """
        Delays are the longest ladder step not past the wanted wait, at
        least one interval: few distinct delays, so few delay queues.
        """
        self.assertEqual([delay_step(x, 5.0) for x in (0, 4, 5, 7, 8, 12, 19, 21, 79, 1e9)], [5, 5, 5, 5, 7.5, 11.25, 16.875, 20, 40, 5 * 4096])
        steps = {delay_step(x / 4, 5.0) for x in range(0, 4 * 25000)}
        self.assertEqual(len(steps), 16)
