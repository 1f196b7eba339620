"""
Priorities in the stages, in memory: every request or task a stage
publishes carries its priority as the AMQP C{priority} property (none when
the message has none), failures keep it on their envelope, the overseer's
retry puts it back, and C{max_priority} is read and checked once, in
C{stages/keys.py}, for the stages that consume requests or tasks.
"""

import base64
import json
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.consumer import Delivery
from cuckoodist.config import parse_config
from cuckoodist.errors import ConfigError
from cuckoodist.messages import FailedMessage
from cuckoodist.stages.check_results import CheckResults
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from cuckoodist.stages.keys import max_priorities
from cuckoodist.stages.overseer import Overseer
from cuckoodist.stages.parse_and_submit import ParseAndSubmit
from tests.memory import World


def deliver(world: World, body: bytes, priority: int | None) -> Deferred:
    """
    Hand C{body} to the stage as the consumer would, with the AMQP
    C{priority} property it arrived with.
    """
    queue = world.stage.stage_config.consumer_queue
    delivery = Delivery(body=body, routing_key=queue, delivery_tag=1, redelivered=False, priority=priority)
    return Deferred.fromCoroutine(world.stage._on_delivery(delivery, world.outbox))


class StagePublishTests(SynchronousTestCase):
    def test_feed_publishes_task_with_request_priority(self) -> None:
        """
        feed_cuckoo publishes the task of a request with C{priority} 3 with
        the AMQP priority 3; one without, with none.
        """
        for priority in (3, None):
            w = World(self, FeedCuckoo, {"type": "feed_cuckoo", "cuckoo": "sim"})
            doc = {
                "payload": {"package": "exe"},
                "file": {"name": "sample.exe", "data": base64.b64encode(b"MZ sample").decode()},
                "crits_data": {"analysis_id": "analysis-1", "object_type": "Sample", "object_id": "o1"},
            }
            if priority is not None:
                doc["priority"] = priority
            self.successResultOf(deliver(w, json.dumps(doc).encode(), priority))
            (out,) = w.outbox.published
            self.assertEqual((out.queue, out.priority), ("worker/check_results", priority))
            w.stage.stopService()

    def test_check_results_keeps_priority(self) -> None:
        """
        check_results publishes a reported task on, and an unfinished one
        back through its delay, with the task's priority.
        """
        w = World(self, CheckResults, {"type": "check_results"}, cuckoo={"analysis_seconds": 10})
        task_id = w.submit()
        # Due now: check_results asks Cuckoo only from its expected end.
        body = w.task_message(task_id, priority=2, expected_end=w.clock.seconds()).encode()
        self.successResultOf(deliver(w, body, 2))
        w.clock.advance(10)
        self.successResultOf(deliver(w, body, 2))
        later, now = w.outbox.published
        self.assertEqual((later.queue, later.delay is not None, later.priority), ("worker/check_results", True, 2))
        self.assertEqual((now.queue, now.delay, now.priority), ("worker/parse_and_submit", None, 2))
        self.assertEqual(now.json()["Priority"], 2)

    def test_parse_and_submit_forwards_priority(self) -> None:
        """
        A parse_and_submit in a chain forwards the task with its priority.
        """
        w = World(self, ParseAndSubmit, {"type": "parse_and_submit", "producer_queue": "worker/next",
                                         "enabled_parsers": ["info"], "cuckoo_cleanup": False})
        task_id = w.submit()
        w.clock.advance(400)
        self.successResultOf(deliver(w, w.task_message(task_id, priority=1).encode(), 1))
        (out,) = w.outbox.to("worker/next")
        self.assertEqual(out.priority, 1)

    def test_failure_keeps_priority_for_the_retry(self) -> None:
        """
        A failed message's envelope carries the priority of the delivery,
        and the overseer's retry of it is published with that priority; a
        Go envelope, which has none, is retried with the priority its
        message names, or none.
        """
        w = World(self, CheckResults, {"type": "check_results"})
        self.successResultOf(deliver(w, b"not json", 3))
        (failed,) = w.outbox.published
        self.assertEqual((failed.queue, failed.priority), ("worker/failed", 3))

        dump_dir = os.path.abspath(self.mktemp())
        overseer = World(self, Overseer, {"type": "overseer", "dump_dir": dump_dir})
        task = {"TaskId": 3, "CuckooURL": "http://cuckoo.test:8090", "Priority": 3,
                "CritsData": {"analysis_id": "a", "object_type": "Sample", "object_id": "o"}}
        envelope = FailedMessage(service="check_results", queue="worker/check_results", error="500",
                                 desc="transient failure", msg=json.dumps(task)).encode()
        del task["Priority"]
        plain = FailedMessage(service="check_results", queue="worker/check_results", error="500",
                              desc="transient failure", msg=json.dumps(task)).encode()
        self.successResultOf(deliver(overseer, envelope, 3))
        self.successResultOf(deliver(overseer, envelope, None))
        self.successResultOf(deliver(overseer, plain, None))
        retried, go, go_plain = overseer.outbox.published
        self.assertEqual((retried.queue, retried.priority), ("worker/check_results", 3))
        self.assertEqual(go.priority, 3)
        self.assertIsNone(go_plain.priority)


class MaxPriorityKeyTests(SynchronousTestCase):
    def doc(self, **keys) -> dict:
        stages = [
            {"type": "feed_cuckoo", "cuckoo": "main"},
            {"type": "check_results"},
            {"type": "parse_and_submit"},
            {"type": "overseer", "dump_dir": "/var/lib/cuckoodist/dump"},
        ]
        for index, value in keys.items():
            stages[int(index[1:])]["max_priority"] = value
        return {"cuckoo": {"main": {"url": "http://cuckoo:8090"}}, "stages": stages}

    def test_default_and_range(self) -> None:
        """
        C{max_priority} defaults to 0 for the three stages that consume
        requests or tasks, takes 0 to 255, and every queue a stage
        consumes maps to its value.
        """
        config = parse_config(self.doc(s0=10, s2=255))
        self.assertEqual([getattr(s, "max_priority", None) for s in config.stages], [10, 0, 255, None])
        self.assertEqual(max_priorities(config), {"worker/feed_cuckoo": 10, "worker/check_results": 0,
                                                  "worker/parse_and_submit": 255, "worker/failed": 0})

    def test_refused(self) -> None:
        """
        Out of range, not an integer, or on the overseer, the key is
        refused with its path.
        """
        for keys, expected in [
            ({"s1": 256}, "stages.1.max_priority': must be at most 255, got 256"),
            ({"s0": -1}, "stages.0.max_priority': must be at least 0, got -1"),
            ({"s2": "3"}, "stages.2.max_priority': expected an integer, got a string"),
            ({"s3": 3}, "stages.3.max_priority': unknown key"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse_config(self.doc(**keys))
            self.assertIn(expected, str(caught.exception))
