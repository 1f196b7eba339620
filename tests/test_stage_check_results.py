"""
check_results in memory: a finished task is passed on, a failed one is
failed as final, an unfinished one comes back through a delay queue until
its deadline.
"""

import json

from treq.testing import StringStubbingResource
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.messages import RetryInfo
from cuckoodist.stages.check_results import CheckResults
from tests.memory import CUCKOO, World

FAIL_MARKER = b"CUCKOODIST-FAIL-ANALYSIS"
STAGE = {"type": "check_results", "wait_between_requests": 5, "analysis_deadline": 600}


class CheckResultsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 10})

    def failure(self) -> dict:
        (failed,) = self.world.outbox.published
        self.assertEqual((failed.queue, failed.delay), ("worker/failed", None))
        return failed.json()

    def test_reported_passed_on(self) -> None:
        """
        A reported task goes to the producer queue, once, without the
        retry count of this stage and with its deadline; the delivery acks.
        """
        w = self.world
        task_id = w.submit()
        w.clock.advance(10)
        task = w.task_message(task_id, submitted_at=w.clock.seconds() - 10, retry=RetryInfo(2, 1.0))
        self.assertIsNone(self.successResultOf(w.deliver(task.encode())))
        (out,) = w.outbox.published
        self.assertEqual((out.queue, out.delay), ("worker/parse_and_submit", None))
        doc = out.json()
        self.assertNotIn("Retry", doc)
        self.assertEqual((doc["TaskId"], doc["CuckooURL"], doc["Deadline"]), (task_id, CUCKOO, w.clock.seconds() - 10 + 600))
        self.assertEqual(w.agent.paths(), [f"/tasks/view/{task_id}"])

    def test_failed_analysis_is_final(self) -> None:
        """
        A task Cuckoo ended as failed_analysis is failed as final with
        Cuckoo's errors, and nothing goes on.
        """
        w = self.world
        task_id = w.submit(b"MZ" + FAIL_MARKER)
        w.clock.advance(10)
        self.successResultOf(w.deliver(w.task_message(task_id).encode()))
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Desc"], doc["TaskId"], doc["Service"]), (True, "permanent failure", task_id, "check_results"))
        self.assertIn(f"Cuckoo task {task_id} ended as failed_analysis: Analysis failed: simulated failure marker", doc["Error"])

    def test_failed_without_errors(self) -> None:
        """
        A failed state without errors from Cuckoo says that none was given.
        """
        w = self.world
        answer = json.dumps({"task": {"id": 7, "status": "recovered", "errors": []}}).encode()
        w.agent.serve(CUCKOO, StringStubbingResource(lambda *request: (200, {b"content-type": b"application/json"}, answer)))
        self.successResultOf(w.deliver(w.task_message(7).encode()))
        self.assertEqual(self.failure()["Error"], "Cuckoo task 7 ended as recovered: no error given")

    def test_running_comes_back_later(self) -> None:
        """
        A task still running is re-published to this stage's own queue
        through the delay of C{wait_between_requests}, with its deadline and
        its retry count, and the delivery acks; the deadline it carries is
        kept on the next poll.
        """
        w = self.world
        task_id = w.submit()
        submitted = w.clock.seconds()
        task = w.task_message(task_id, retry=RetryInfo(1, 5.0))
        self.successResultOf(w.deliver(task.encode()))
        (later,) = w.outbox.published
        self.assertEqual((later.queue, later.delay), ("worker/check_results", 5.0))
        doc = later.json()
        self.assertEqual((doc["Deadline"], doc["Retry"]["attempts"]), (submitted + 600, 1))
        w.clock.advance(5)
        again = dict(doc, SubmittedAt=w.clock.seconds())
        self.successResultOf(w.deliver(json.dumps(again).encode()))
        self.assertEqual(w.outbox.published[-1].json()["Deadline"], submitted + 600)

    def test_no_submission_time(self) -> None:
        """
        A message without SubmittedAt (a Go feed_cuckoo's) gets its deadline
        from the time of this first poll.
        """
        w = self.world
        task_id = w.submit()
        self.successResultOf(w.deliver(w.task_message(task_id, submitted_at=None).encode()))
        self.assertEqual(w.outbox.published[0].json()["Deadline"], w.clock.seconds() + 600)

    def test_deadline(self) -> None:
        """
        A task still unfinished past its deadline is failed as final, and
        not polled again; one just at it is polled again.
        """
        w = self.world
        task_id = w.submit()
        self.successResultOf(w.deliver(w.task_message(task_id, deadline=w.clock.seconds()).encode()))
        self.assertEqual(w.outbox.published[-1].queue, "worker/check_results")
        w.outbox.published.clear()
        self.successResultOf(w.deliver(w.task_message(task_id, submitted_at=w.clock.seconds() - 601).encode()))
        doc = self.failure()
        self.assertEqual(doc["Final"], True)
        self.assertIn(f"Cuckoo task {task_id} still running at its deadline (600 s after submission)", doc["Error"])

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
        A task Cuckoo does not know is failed as final.
        """
        w = self.world
        self.successResultOf(w.deliver(w.task_message(42).encode()))
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Error"]), (True, f"Cuckoo {CUCKOO} has no task 42"))

    def test_unreachable_cuckoo_retried(self) -> None:
        """
        A poll that cannot reach Cuckoo is tried again after 1 s and 2 s,
        inside the stage, and succeeds when Cuckoo is back.
        """
        w = self.world
        task_id = w.submit()
        w.agent.refuse = lambda sent: len(w.agent.sent) <= 2
        d = w.deliver(w.task_message(task_id).encode())
        w.clock.advance(1)
        self.assertNoResult(d)
        w.clock.advance(2)
        self.successResultOf(d)
        self.assertEqual(len(w.agent.sent), 3)
        self.assertEqual(w.outbox.published[0].queue, "worker/check_results")

    def test_unreachable_cuckoo_transient(self) -> None:
        """
        When every try fails, the task is failed as transient (the overseer
        retries it later), after 4 tries 1, 2 and 4 s apart.
        """
        w = self.world
        task_id = w.submit()
        w.agent.refuse = lambda sent: True
        d = w.deliver(w.task_message(task_id).encode())
        for wait in (1, 2, 3):
            w.clock.advance(wait)
            self.assertNoResult(d)
        w.clock.advance(1)
        self.successResultOf(d)
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Desc"], len(w.agent.sent)), (False, "transient failure", 4))
        self.assertIn("unreachable", doc["Error"])
