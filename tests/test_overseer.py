"""
The overseer against the real broker: it stops after C{max_retries}
whoever produced the failure envelope (the Go workers carry no count and
lose ours), and it publishes only to queues its configuration knows.
"""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import Delivery, Outbox, QueueConsumer
from cuckoodist.attempts import AttemptMemory, identity
from cuckoodist.dump import DumpStore
from cuckoodist.registry import STAGES
from cuckoodist.stages.overseer import retry_targets
from cuckoodist.tap import build_daemon
from tests import harness

MAX_RETRIES = 2


def go_task_struct(body: bytes) -> str:
    """
    What the Go check_results and parse_and_submit put in C{Msg}: their
    task struct marshalled again, which keeps only the fields they know.
    """
    doc = json.loads(body)
    return json.dumps({"TaskId": doc["TaskId"], "CuckooURL": doc["CuckooURL"], "CritsData": doc["CritsData"]})


def go_raw(body: bytes) -> str:
    """
    What the Go feed_cuckoo puts in C{Msg}: the body as it came.
    """
    return body.decode("utf-8")


def go_envelope(service: str, queue: str, msg: str) -> bytes:
    """
    The Go workers' C{FailedMsg}: no attempt count, no ids.
    """
    return json.dumps({"Service": service, "Queue": queue, "Error": "Go worker failed", "Desc": "boom", "Msg": msg}).encode()


class GoWorker:
    """
    Stands in for one Go worker that fails every message it consumes, and
    reports each failure to the failed queue in its own envelope shape.
    """

    def __init__(self, connection: AMQPConnectionService, queue: str, failed_queue: str, service: str, shape) -> None:
        self.received: list[bytes] = []
        self._failed_queue, self._service, self._shape, self._queue = failed_queue, service, shape, queue
        self.consumer = QueueConsumer(connection, queue, 10, self._fail, reactor, 1.0)

    async def _fail(self, delivery: Delivery, outbox: Outbox) -> None:
        self.received.append(delivery.body)
        await outbox.publish(self._failed_queue, go_envelope(self._service, self._queue, self._shape(delivery.body)))


class MixedFleetTests(TestCase):
    """
    Each Go envelope shape, replayed through a real overseer until it
    gives up.
    """

    timeout = 60

    def setUp(self) -> None:
        self.peers = harness.Peers()
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(self.peers, self.prefix, self.dump_dir, ["overseer"])
        doc["stages"][0].update(max_retries=MAX_RETRIES, retry_delay=0.05, allowed_queues=[f"{self.prefix}/{n}" for n in ("feed_cuckoo", "check_results", "parse_and_submit")])
        self.config = harness.parse_config(doc)
        self.failed_queue = self.config.stages[0].consumer_queue
        queues = [self.failed_queue] + list(self.config.stages[0].allowed_queues)
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        self.connection = AMQPConnectionService(reactor, self.config.amqp)
        self.connection.startService()
        self.addCleanup(self.connection.stopService)

    async def _replay(self, service: str, queue_name: str, first_body: bytes, shape) -> GoWorker:
        queue = f"{self.prefix}/{queue_name}"
        worker = GoWorker(self.connection, queue, self.failed_queue, service, shape)
        worker.consumer.startService()
        self.addCleanup(worker.consumer.stopService)
        await harness.publish(self.config.amqp, [(self.failed_queue, go_envelope(service, queue, shape(first_body)))])
        await harness.wait_until(lambda: len(list(DumpStore(self.dump_dir))) >= 1, 30, f"the {service} message to be dumped")
        # Nothing more may come back once it is dumped.
        await deferLater(reactor, 1.0, lambda: None)
        return worker

    def _check(self, worker: GoWorker, analysis_id: str) -> None:
        self.assertEqual(len(worker.received), MAX_RETRIES, "the overseer must retry exactly max_retries times")
        records = [record for _, record, _ in DumpStore(self.dump_dir)]
        self.assertEqual(len(records), 1)
        self.assertIn(f"gave up after {MAX_RETRIES + 1} attempt(s)", records[0].reason)
        self.assertEqual(records[0].analysis_id, analysis_id)
        analysis = self.peers.crits.state()["analyses"][analysis_id]
        self.assertEqual(analysis["status"], "error")

    def _task(self, analysis_id_body: tuple[str, bytes]) -> tuple[str, bytes]:
        analysis_id, request = analysis_id_body
        crits = json.loads(request)["crits_data"]
        task = {"TaskId": 7, "CuckooURL": self.peers.cuckoo_server.url, "CritsData": crits, "SubmittedAt": 1.0, "Retry": {"attempts": 0}}
        return analysis_id, json.dumps(task).encode()

    async def test_go_feed_raw_body(self) -> None:
        """
        The Go feed_cuckoo passes the raw body on, our C{Retry} included,
        but its envelope has no count.
        """
        analysis_id, body = harness.request(1, harness.sample(1), with_credentials=True)
        worker = await self._replay("feed_cuckoo", "feed_cuckoo", body, go_raw)
        self._check(worker, analysis_id)
        self.assertEqual(json.loads(worker.received[-1])["Retry"]["attempts"], MAX_RETRIES)

    async def test_go_check_results_remarshalled(self) -> None:
        """
        The Go check_results re-marshals its struct: our C{Retry} is lost
        every round, and the overseer still stops.
        """
        analysis_id, body = self._task(harness.request(2, harness.sample(2), with_credentials=True))
        worker = await self._replay("check_results", "check_results", body, go_task_struct)
        self._check(worker, analysis_id)

    async def test_go_parse_and_submit_remarshalled(self) -> None:
        """
        The same for the Go parse_and_submit.
        """
        analysis_id, body = self._task(harness.request(3, harness.sample(3), with_credentials=True))
        worker = await self._replay("parse_and_submit", "parse_and_submit", body, go_task_struct)
        self._check(worker, analysis_id)


class QueueAllowListTests(TestCase):
    """
    A failed envelope's C{Queue} is data: the overseer publishes only to
    queues its configuration knows, and dumps the rest with the reason.
    """

    timeout = 60

    async def test_unknown_queues_dumped(self) -> None:
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        prefix = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        config = harness.config(peers, prefix, dump_dir)
        failed_queue = config.stages[3].consumer_queue
        queues = [s.consumer_queue for s in config.stages]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(config.amqp, queues)))
        daemon = build_daemon(config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        hostile = {
            "long": "q" * 300,
            "long-utf8": "é" * 130,
            "reserved": "amq.direct",
            "delay": "cuckoodist.delay.1000ms",
            "itself": failed_queue,
            "unknown": f"{prefix}/somewhere-else",
            "nul": "worker/\x00feed",
        }
        _, request = harness.request(1, harness.sample(1))
        messages = [
            (failed_queue, json.dumps({"Service": name, "Queue": queue, "Error": "e", "Desc": "d", "Msg": request.decode(), "Attempts": 1}).encode())
            for name, queue in hostile.items()
        ]
        await harness.publish(config.amqp, messages)
        await harness.wait_until(lambda: len(list(DumpStore(dump_dir))) == len(hostile), 30, "every hostile envelope to be dumped")
        records = {record.stage: record for _, record, _ in DumpStore(dump_dir)}
        self.assertEqual(set(records), set(hostile))
        for name, record in records.items():
            self.assertIn("not retried", record.reason, name)
        self.assertIn("not one this overseer may publish to", records["unknown"].reason)
        self.assertIn("at most 255 bytes", records["long-utf8"].reason)
        # The daemon is still healthy: a good sample goes all the way.
        analysis_id, body = harness.request(2, harness.sample(2))
        await harness.publish(config.amqp, [(config.stages[0].consumer_queue, body)])
        await harness.wait_until(
            lambda: peers.crits.state()["analyses"].get(analysis_id, {}).get("status") == "completed", 30, "a good sample to finish"
        )


class RetryTargetTests(SynchronousTestCase):
    def test_targets(self) -> None:
        """
        The overseer may publish to the configured stages' queues, the
        standard ones, and its allow-list; never to its own queue.
        """
        doc = {
            "cuckoo": {"c": {"url": "http://c:8090"}},
            "stages": [
                {"type": "feed_cuckoo", "cuckoo": "c", "consumer_queue": "a/feed", "producer_queue": "a/check"},
                {"type": "overseer", "dump_dir": "/tmp/x", "allowed_queues": ["extra/q"]},
            ],
        }
        config = harness.parse_config(doc)
        self.assertEqual(
            retry_targets(config, config.stages[1], STAGES),
            {"a/feed", "a/check", "extra/q", "worker/feed_cuckoo", "worker/check_results", "worker/parse_and_submit"},
        )


class AttemptMemoryTests(SynchronousTestCase):
    def test_counts_and_forgets(self) -> None:
        """
        The larger of the carried and remembered counts wins; a dumped
        message starts afresh; old entries expire; the size is bounded.
        """
        clock = Clock()
        memory = AttemptMemory(clock, max_entries=2, max_age=100)
        self.assertEqual([memory.failed("a", 1) for _ in range(3)], [1, 2, 3])
        self.assertEqual(memory.failed("a", 7), 7)
        memory.forget("a")
        self.assertEqual(memory.failed("a", 1), 1)
        clock.advance(101)
        self.assertEqual(memory.failed("a", 1), 1)
        memory.failed("b", 1)
        memory.failed("c", 1)
        self.assertEqual(len(memory), 2)

    def test_identity_survives_go_remarshalling(self) -> None:
        """
        Dropping the fields our stages add does not change a message's
        identity; another queue or analysis does.
        """
        crits = {"analysis_id": "a1", "object_type": "Sample", "object_id": "o"}
        ours = {"TaskId": 3, "CuckooURL": "http://c", "CritsData": crits, "Retry": {"attempts": 2}, "Deadline": 5.0}
        go = {"TaskId": 3, "CuckooURL": "http://c", "CritsData": crits}
        self.assertEqual(identity("q", ours, ""), identity("q", go, ""))
        self.assertNotEqual(identity("q", go, ""), identity("r", go, ""))
        self.assertNotEqual(identity("q", go, ""), identity("q", dict(go, TaskId=4), ""))
        self.assertNotEqual(identity("q", None, "x"), identity("q", None, "y"))
        identity("q", {"x": "\ud800"}, "")
