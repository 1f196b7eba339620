"""
feed_cuckoo in memory: admission by Cuckoo's room, one upload per
delivery, and which upload failures are repeated in the stage.
"""

import base64
import json

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.consumer import Delivery
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from tests.memory import CUCKOO, World


def request(data: bytes = b"MZ feed sample", crits_url: str = "", **payload: str) -> bytes:
    """
    An analysis request as the CRITs-side service publishes it.
    """
    return json.dumps({
        "payload": {"package": "exe", **payload},
        "file": {"name": "sample.exe", "data": base64.b64encode(data).decode()},
        "crits_data": {"analysis_id": "analysis-1", "object_type": "Sample", "object_id": "o1", "crits_url": crits_url},
    }).encode()


def stage(**changes) -> dict:
    return {"type": "feed_cuckoo", "cuckoo": "sim", "max_pending": 2, "status_interval": 10, **changes}


class AdmissionTests(SynchronousTestCase):
    def admit(self, world: World) -> bool:
        return self.successResultOf(world.stage._admit(Delivery(b"{}", "worker/feed_cuckoo", 1, False)))

    def test_room(self) -> None:
        """
        With room in Cuckoo, requests are admitted, counted down locally
        from one status answer until it is C{status_interval} old.
        """
        w = World(self, FeedCuckoo, stage(), cuckoo={"machines": 1})
        self.assertEqual([self.admit(w), self.admit(w), self.admit(w)], [True, True, False])
        self.assertEqual(w.cuckoo.requests.counts["cuckoo/status"], 1)
        w.stage.stopService()

    def test_full_then_room(self) -> None:
        """
        A full Cuckoo refuses: one probe per C{status_interval} watches for
        room, however many requests were refused, and once there is room
        the watch ends, the consumer resumes, and the next request is
        admitted on that answer.
        """
        w = World(self, FeedCuckoo, stage(), cuckoo={"machines": 1, "analysis_seconds": 15})
        for i in range(3):
            w.submit(b"MZ %d" % i)  # one running, two pending
        self.assertFalse(self.admit(w))
        w.stage.consumer.pause()  # as the consumer does on a refusal
        watch = w.stage._room_watch
        self.assertIsNotNone(watch)
        self.assertFalse(self.admit(w))
        self.assertIs(w.stage._room_watch, watch)
        w.clock.advance(10)  # still two pending: the probe finds no room
        self.assertEqual((w.cuckoo.requests.counts["cuckoo/status"], w.stage._room_watch), (2, watch))
        w.clock.advance(10)  # the first task is done at 15: one pending
        self.assertIsNone(w.stage._room_watch)
        self.assertFalse(w.stage.consumer._paused)
        self.assertEqual(w.clock.getDelayedCalls(), [])
        self.assertTrue(self.admit(w))
        self.assertEqual(w.cuckoo.requests.counts["cuckoo/status"], 3)

    def test_no_free_space(self) -> None:
        """
        With C{check_free_space}, too little free disk is no room.
        """
        w = World(self, FeedCuckoo, stage(check_free_space=True, min_free_space=2000), cuckoo={"free_space": 1000})
        self.assertFalse(self.admit(w))
        w.stage.stopService()

    def test_stop_ends_the_watch(self) -> None:
        """
        Stopping the stage while it waits for room stops the probes.
        """
        w = World(self, FeedCuckoo, stage(max_pending=1), cuckoo={"machines": 1})
        w.submit(b"MZ 1")
        w.submit(b"MZ 2")
        self.assertFalse(self.admit(w))
        self.assertNotEqual(w.clock.getDelayedCalls(), [])
        w.stage.stopService()
        self.assertEqual(w.clock.getDelayedCalls(), [])


class UploadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self, FeedCuckoo, stage())

    def failure(self) -> dict:
        (failed,) = self.world.outbox.published
        self.assertEqual(failed.queue, "worker/failed")
        return failed.json()

    def uploads(self) -> int:
        return self.world.agent.paths("POST").count("/tasks/create/file")

    def test_upload(self) -> None:
        """
        A request is uploaded once, with its options, and the task message
        goes to the producer queue naming the configured Cuckoo and the
        submission time.
        """
        w = self.world
        self.successResultOf(w.deliver(request(options="procmemdump=yes", ignored="x")))
        (out,) = w.outbox.published
        doc = out.json()
        self.assertEqual((out.queue, out.delay), ("worker/check_results", None))
        self.assertEqual((doc["TaskId"], doc["CuckooURL"], doc["SubmittedAt"], doc["CritsData"]["analysis_id"]),
                         (1, CUCKOO, w.clock.seconds(), "analysis-1"))
        (task,) = w.cuckoo.state()["tasks"].values()
        self.assertEqual((task["filename"], task["package"], task["options"]), ("sample.exe", "exe", {"procmemdump": "yes"}))
        self.assertEqual(self.uploads(), 1)

    def test_error_after_sending_not_repeated(self) -> None:
        """
        An upload Cuckoo answered with a 5xx may have created a task: it is
        not repeated in the stage, but failed as transient for the
        overseer's later retry.
        """
        w = self.world
        self.successResultOf(w.deliver(request(memory="maybe")))  # Cuckoo 2.0.7 answers 500
        doc = self.failure()
        self.assertEqual((doc["Final"], doc["Desc"], self.uploads()), (False, "transient failure", 1))
        self.assertIn("answered 500 on /tasks/create/file", doc["Error"])

    def test_not_sent_repeated(self) -> None:
        """
        An upload that never left (connection refused) is repeated after
        1 s, and the sample is uploaded once.
        """
        w = self.world
        w.agent.refuse = lambda sent: sent.path == "/tasks/create/file" and self.uploads() == 1
        d = w.deliver(request())
        self.assertNoResult(d)
        w.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual((self.uploads(), len(w.cuckoo.state()["tasks"])), (2, 1))
        self.assertEqual(w.outbox.published[0].queue, "worker/check_results")

    def test_refused_upload_is_permanent(self) -> None:
        """
        A sample Cuckoo refuses (4xx) is failed as final.
        """
        w = self.world
        self.successResultOf(w.deliver(request(unique="yes")))
        w.outbox.published.clear()
        self.successResultOf(w.deliver(request(unique="yes")))
        doc = self.failure()
        self.assertEqual((doc["Final"], self.uploads()), (True, 2))
        self.assertIn("refused the sample (400): This file has already been submitted", doc["Error"])

    def test_invalid_request(self) -> None:
        """
        A request that does not decode is failed as invalid, with no request
        to Cuckoo.
        """
        w = self.world
        self.successResultOf(w.deliver(b'{"file": {}}'))
        self.assertEqual((self.failure()["Desc"], w.agent.sent), ("invalid message", []))

    def test_undeliverable_results_not_uploaded(self) -> None:
        """
        A request naming a CRITs its results could not go to is refused
        before any sandbox time is used.
        """
        w = self.world
        self.successResultOf(w.deliver(request(crits_url="http://unknown-crits.test")))
        doc = self.failure()
        self.assertEqual((doc["Desc"], self.uploads()), ("invalid message", 0))
        self.assertIn("crits_url", doc["Error"])
