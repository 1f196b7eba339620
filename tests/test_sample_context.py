"""
The current sample (L{cuckoodist.sample_context}): bound for a block and
what it awaits, filled in by L{identify}, copied into log events, and never
seen by another delivery's coroutine.
"""

import gc
import sys

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.sample_context import Sample, bound, current, identify, with_sample_fields


class BoundTests(SynchronousTestCase):
    def test_none_outside_a_delivery(self) -> None:
        """
        No sample is current outside a delivery, and L{identify} then does
        nothing (and does not fail).
        """
        self.assertIsNone(current())
        identify(analysis_id="a", task_id=1)
        self.assertIsNone(current())

    def test_bound_and_restored(self) -> None:
        """
        L{bound} makes a sample current for its block, nests, and restores
        the previous one on the way out, even when the block raises.
        """
        outer, inner = Sample("feed_cuckoo", "q1"), Sample("overseer", "q2")
        with bound(outer):
            self.assertIs(current(), outer)
            with self.assertRaises(ZeroDivisionError):
                with bound(inner):
                    self.assertIs(current(), inner)
                    1 / 0
            self.assertIs(current(), outer)
        self.assertIsNone(current())

    def test_identify_fills_in(self) -> None:
        """
        L{identify} sets what it is given and leaves C{None} arguments as
        they were.
        """
        sample = Sample("feed_cuckoo", "worker/feed_cuckoo")
        with bound(sample):
            identify(analysis_id="A1", sample_name="x.exe", cuckoo="sim")
            identify(task_id=7)
            identify(analysis_id=None, task_id=None)
        self.assertEqual(
            (sample.analysis_id, sample.task_id, sample.sample_name, sample.cuckoo), ("A1", 7, "x.exe", "sim")
        )
        self.assertEqual(
            sample.fields(), {"stage": "feed_cuckoo", "queue": "worker/feed_cuckoo", "analysis_id": "A1", "task_id": 7}
        )


    def test_collected_unfinished(self) -> None:
        """
        A delivery's coroutine that never finishes and is collected (its
        close runs outside its own context) leaves no error behind.
        """
        unraisable: list = []
        self.patch(sys, "unraisablehook", unraisable.append)

        async def stuck() -> None:
            with bound(Sample("feed_cuckoo", "q")):
                await Deferred()

        Deferred.fromCoroutine(stuck())
        gc.collect()
        self.assertEqual(unraisable, [])
        self.assertIsNone(current())


class WithSampleFieldsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        self.log = Logger(namespace="test", observer=with_sample_fields(self.events.append))

    def test_fields_copied(self) -> None:
        """
        An event emitted while a sample is current carries its fields; one
        emitted outside carries none.
        """
        with bound(Sample("check_results", "q", analysis_id="A", task_id=3)):
            self.log.info("inside")
        self.log.info("outside")
        inside, outside = self.events
        self.assertEqual(
            {k: inside[k] for k in ("stage", "queue", "analysis_id", "task_id")},
            {"stage": "check_results", "queue": "q", "analysis_id": "A", "task_id": 3},
        )
        self.assertNotIn("analysis_id", outside)

    def test_event_values_win(self) -> None:
        """
        A field the event sets itself is kept; one it sets to C{None} is
        filled in.
        """
        with bound(Sample("overseer", "q", analysis_id="A", task_id=3)):
            self.log.info("x", queue="elsewhere", task_id=None)
        (event,) = self.events
        self.assertEqual((event["queue"], event["task_id"]), ("elsewhere", 3))


class ConcurrencyTests(SynchronousTestCase):
    def test_concurrent_deliveries_apart(self) -> None:
        """
        Two deliveries handled at once, each in its coroutine, interleaving
        their waits: each sees only its own sample, its log events carry
        only its ids, and a helper coroutine one of them awaits sees its
        sample (and fills it in).
        """
        clock = Clock()
        events: list[dict] = []
        log = Logger(namespace="test", observer=with_sample_fields(events.append))
        seen: dict[str, list] = {"A": [], "B": []}

        async def helper(name: str) -> None:
            await deferLater(clock, 0.5, lambda: None)
            identify(task_id=100 if name == "A" else 200)
            log.info("helper of {name}", name=name)

        async def delivery(name: str, delay: float) -> None:
            with bound(Sample("parse_and_submit", "q")):
                identify(analysis_id=name)
                for _ in range(3):
                    await deferLater(clock, delay, lambda: None)
                    seen[name].append(current().analysis_id)
                    log.info("working on {name}", name=name)
                await Deferred.fromCoroutine(helper(name))
                seen[name].append((current().analysis_id, current().task_id))

        both = gatherResults([Deferred.fromCoroutine(delivery("A", 1.0)), Deferred.fromCoroutine(delivery("B", 0.7))])
        self.assertIsNone(current())
        for _ in range(20):
            clock.advance(0.25)
        self.successResultOf(both)
        self.assertEqual(seen, {"A": ["A", "A", "A", ("A", 100)], "B": ["B", "B", "B", ("B", 200)]})
        for event in events:
            self.assertEqual(event["analysis_id"], event["name"])
            if event["log_format"].startswith("helper"):
                self.assertEqual(event["task_id"], 100 if event["name"] == "A" else 200)
        self.assertEqual(len(events), 8)
        self.assertIsNone(current())
