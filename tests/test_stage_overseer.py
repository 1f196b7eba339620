"""
The overseer in memory: retries through delay queues with backoff, tells
CRITs and dumps what is final or out of retries, and dumps whatever it
cannot handle.

Its dump writes go through the reactor's thread pool; the
L{MemoryReactor} runs them inline, so a dump file exists when the delivery
returns.
"""

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.protocol import PublishNacked
from cuckoodist.amqp.wire import UnframeableValue
from cuckoodist.dump import DumpStore
from cuckoodist.messages import FailedMessage
from cuckoodist.stages.overseer import Overseer
from tests.memory import CRITS, RecordingOutbox, World

RETRY_DELAY = 60.0


class OverseerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dump_dir = os.path.abspath(self.mktemp())
        self.world = World(self, Overseer, {"type": "overseer", "dump_dir": self.dump_dir, "max_retries": 2, "retry_delay": RETRY_DELAY,
                                            "allowed_queues": ["extra/queue"]})
        self.crits_object = "0123456789abcdef01234567"

    def task(self, **changes) -> dict:
        doc = {"TaskId": 3, "CuckooURL": "http://cuckoo.test:8090",
               "CritsData": {"analysis_id": "analysis-1", "object_type": "Sample", "object_id": self.crits_object}}
        doc.update(changes)
        return doc

    def envelope(self, queue: str = "worker/check_results", msg: str | None = None, **changes) -> bytes:
        failed = FailedMessage(service="check_results", queue=queue, error="Cuckoo answered 500", desc="transient failure",
                               msg=json.dumps(self.task()) if msg is None else msg, first_failure=1000.0, analysis_id="analysis-1", task_id=3)
        doc = json.loads(failed.encode())
        doc.update(changes)
        return json.dumps(doc).encode()

    def dumps(self) -> list:
        return [record for _, record, _ in DumpStore(self.dump_dir)]

    def test_retry_with_backoff(self) -> None:
        """
        The n-th failure is re-published to its queue after
        C{retry_delay * 2**(n-1)} seconds, with the count and the first
        failure time in the message; nothing is dumped.
        """
        w = self.world
        for attempts in (1, 2):
            self.successResultOf(w.deliver(self.envelope(Attempts=attempts)))
        first, second = w.outbox.published
        self.assertEqual([(p.queue, p.delay) for p in (first, second)], [("worker/check_results", RETRY_DELAY), ("worker/check_results", 2 * RETRY_DELAY)])
        self.assertEqual(second.json(), dict(self.task(), Retry={"attempts": 2, "first_failure": 1000.0}))
        self.assertEqual((self.dumps(), w.crits.state()["analyses"]), ([], {}))

    def test_delay_capped(self) -> None:
        """
        No wait is longer than a day, whatever the count and delay.
        """
        w = World(self, Overseer, {"type": "overseer", "dump_dir": self.dump_dir, "max_retries": 20, "retry_delay": 3600})
        self.successResultOf(w.deliver(self.envelope(Attempts=10)))
        self.assertEqual(w.outbox.published[0].delay, 86400.0)

    def test_count_from_the_message(self) -> None:
        """
        The count is the larger of the envelope's and the C{Retry} the
        message carries.
        """
        w = self.world
        self.successResultOf(w.deliver(self.envelope(msg=json.dumps(self.task(Retry={"attempts": 1})), Attempts=1)))
        self.assertEqual((w.outbox.published[0].delay, w.outbox.published[0].json()["Retry"]["attempts"]), (2 * RETRY_DELAY, 2))

    def test_final(self) -> None:
        """
        A final failure is not retried: CRITs is told the analysis ended in
        error, with the reason, and the message is dumped.
        """
        w = self.world
        self.successResultOf(w.deliver(self.envelope(Final=True, Error="Cuckoo task 3 ended as failed_analysis")))
        self.assertEqual(w.outbox.published, [])
        analysis = w.analysis()
        self.assertEqual(analysis["status"], "error")
        self.assertEqual(analysis["log"][0]["message"], "cuckoodist check_results: Cuckoo task 3 ended as failed_analysis")
        (record,) = self.dumps()
        self.assertEqual((record.queue, record.reason, record.crits_told, record.task_id, record.message),
                         ("worker/check_results", "Cuckoo task 3 ended as failed_analysis", True, 3, json.dumps(self.task())))

    def test_out_of_retries(self) -> None:
        """
        Past C{max_retries} the message is dumped, saying how often it
        failed, and CRITs is told.
        """
        w = self.world
        self.successResultOf(w.deliver(self.envelope(Attempts=3)))
        self.assertEqual(w.outbox.published, [])
        (record,) = self.dumps()
        self.assertEqual((record.reason, record.attempts), ("gave up after 3 attempt(s): Cuckoo answered 500", 3))
        self.assertEqual(w.analysis()["status"], "error")

    def test_unknown_queue(self) -> None:
        """
        Only known queues are published to: the standard ones and
        C{allowed_queues}.  Any other, or a name no broker takes, is dumped
        with the reason.
        """
        w = self.world
        self.successResultOf(w.deliver(self.envelope(queue="extra/queue")))
        self.assertEqual(w.outbox.published[0].queue, "extra/queue")
        self.successResultOf(w.deliver(self.envelope(queue="someone/else")))
        self.successResultOf(w.deliver(self.envelope(queue="amq.direct")))
        self.assertEqual(len(w.outbox.published), 1)
        reasons = {r.queue: r.reason for r in self.dumps()}
        self.assertEqual(reasons["someone/else"],
                         "Cuckoo answered 500 (not retried: its queue is not one this overseer may publish to (add it to allowed_queues))")
        self.assertEqual(reasons["amq.direct"], "Cuckoo answered 500 (not retried: queue names starting with 'amq.' are reserved by the broker)")

    def test_undecodable_envelope(self) -> None:
        """
        An envelope that does not decode is dumped as it came, from the
        overseer's own queue.
        """
        w = self.world
        self.successResultOf(w.deliver(b"\xff not json"))
        (record,) = self.dumps()
        self.assertEqual((record.stage, record.queue, record.message), ("unknown", "worker/failed", "\ufffd not json"))
        self.assertTrue(record.reason.startswith("unreadable failed message: "))

    def test_message_not_retriable(self) -> None:
        """
        An envelope whose C{Msg} is not a JSON object (a Go feed_cuckoo's
        raw body gone bad) is dumped, not retried; CRITs cannot be told.
        """
        w = self.world
        self.successResultOf(w.deliver(self.envelope(msg="garbage")))
        (record,) = self.dumps()
        self.assertIn("(not retried: ", record.reason)
        self.assertEqual((record.crits_told, w.outbox.published), (False, []))

    def test_go_envelopes_counted(self) -> None:
        """
        Go envelopes carry no count, and the Go workers drop our C{Retry}:
        the overseer counts them itself, backs off, and dumps the message
        after C{max_retries}, then forgets it.
        """
        w = self.world
        go = json.dumps({"Service": "check_results", "Queue": "worker/check_results", "Error": "Go worker failed", "Desc": "boom",
                         "Msg": json.dumps(self.task())}).encode()
        for _ in range(3):
            self.successResultOf(w.deliver(go))
        self.assertEqual([p.delay for p in w.outbox.published], [RETRY_DELAY, 2 * RETRY_DELAY])
        (record,) = self.dumps()
        self.assertEqual(record.reason, "gave up after 3 attempt(s): Go worker failed")
        self.successResultOf(w.deliver(go))
        self.assertEqual(w.outbox.published[-1].delay, RETRY_DELAY)

    def test_crits_not_told(self) -> None:
        """
        A message naming a CRITs the overseer may not post to is dumped all
        the same, noting that CRITs was not told.
        """
        w = self.world
        crits = {"analysis_id": "analysis-1", "object_type": "Sample", "object_id": "o", "crits_url": "http://evil.test"}
        self.successResultOf(w.deliver(self.envelope(msg=json.dumps(self.task(CritsData=crits)), Final=True)))
        (record,) = self.dumps()
        self.assertEqual(record.crits_told, False)
        self.assertEqual([s for s in w.agent.sent if s.url.startswith(CRITS)], [])

    def test_publish_refused_is_dumped(self) -> None:
        """
        A retry the broker cannot take (the queue cannot be framed) is
        dumped with that reason; a bug in the overseer dumps the message
        as it came, saying so.
        """
        w = self.world
        outbox = RecordingOutbox(refuse={"worker/check_results": UnframeableValue("a shortstr is at most 255 bytes")})
        self.successResultOf(w.deliver(self.envelope(), outbox))
        outbox = RecordingOutbox(refuse={"worker/check_results": KeyError("bug")})
        self.successResultOf(w.deliver(self.envelope(), outbox))
        self.flushLoggedErrors(KeyError)
        reasons = sorted(r.reason for r in self.dumps())
        self.assertEqual(reasons, ["a shortstr is at most 255 bytes", "internal error in overseer: KeyError: 'bug'"])

    def test_broker_trouble_stays_unacked(self) -> None:
        """
        When the broker refuses the retry, or the dump cannot be written,
        the delivery fails: it stays unacked for the broker to give back.
        """
        w = self.world
        outbox = RecordingOutbox(refuse={"worker/check_results": PublishNacked("nack")})
        self.failureResultOf(w.deliver(self.envelope(), outbox), PublishNacked)
        with open(self.dump_dir, "w"):
            pass  # a file where the directory should be
        self.failureResultOf(w.deliver(b"not json"), OSError)
        self.flushLoggedErrors(OSError)
