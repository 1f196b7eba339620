"""
The dashboard's hour of history (L{cuckoodist.dashboard.history}) on a
L{Clock}, and its queue depths (L{cuckoodist.dashboard.queues}) from the
real RabbitMQ.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import parse_amqp_url
from cuckoodist.dashboard.history import INTERVAL, RATE_WINDOW, SIZE, History
from cuckoodist.dashboard.queues import QueueSampler
from cuckoodist.metrics import Metrics
from cuckoodist.publish import publish_confirmed
from tests import harness

QUEUES = ("q/feed", "q/parse")


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        self.metrics = Metrics()
        # A sampler without a connection: depths are unknown, nothing is asked.
        self.sampler = QueueSampler(self.clock, None, QUEUES)
        self.history = History(self.clock, self.metrics, QUEUES, self.sampler)
        self.addCleanup(self.history.stop)

    def test_points(self) -> None:
        """
        A point at start and one per interval: throughput is the messages
        every stage acked per second since the last point, latency the
        mean end-to-end time of the analyses finished meanwhile (C{None}
        when none did, and both C{None} for the first point).
        """
        self.history.start()
        self.metrics.succeeded.labels("feed_cuckoo", "q/feed").inc(20)
        self.metrics.succeeded.labels("parse_and_submit", "q/parse").inc(10)
        self.metrics.end_to_end_seconds.observe(30)
        self.metrics.end_to_end_seconds.observe(50)
        self.clock.advance(INTERVAL)
        self.clock.advance(INTERVAL)
        points = self.history.document()["points"]
        self.assertEqual(self.history.document()["interval"], INTERVAL)
        self.assertEqual([p["t"] for p in points], [5000, 5000 + INTERVAL, 5000 + 2 * INTERVAL])
        self.assertEqual([(p["throughput"], p["latency"]) for p in points], [(None, None), (3.0, 40.0), (0.0, None)])
        self.assertEqual({tuple(p["queues"].items()) for p in points}, {(("q/feed", None), ("q/parse", None))})

    def test_an_hour(self) -> None:
        """
        The ring keeps the last L{SIZE} points, an hour of them.
        """
        self.assertEqual(SIZE * INTERVAL, 3600)
        self.history.start()
        for _ in range(SIZE + 40):
            self.clock.advance(INTERVAL)
        points = self.history.points()
        self.assertEqual(len(points), SIZE)
        self.assertEqual(points[-1]["t"] - points[0]["t"], (SIZE - 1) * INTERVAL)
        self.assertEqual(points[-1]["t"], self.clock.seconds())

    def test_rates(self) -> None:
        """
        A stage's processed and failed rates are averaged over the last
        L{RATE_WINDOW} intervals; failures of every kind count.
        """
        self.assertEqual(self.history.rates("q/feed"), (None, None))
        self.history.start()
        self.assertEqual(self.history.rates("q/feed"), (None, None))
        for i in range(RATE_WINDOW + 2):
            # 60 a minute for three intervals, then none.
            if i < 3:
                self.metrics.succeeded.labels("feed_cuckoo", "q/feed").inc(10)
                self.metrics.failed.labels("feed_cuckoo", "q/feed", "transient").inc(1)
                self.metrics.failed.labels("feed_cuckoo", "q/feed", "permanent").inc(1)
            self.clock.advance(INTERVAL)
            if i == 2:
                self.assertEqual(self.history.rates("q/feed"), (1.0, 0.2))
        # The window has moved past all but the last busy interval.
        processed, failed = self.history.rates("q/feed")
        window = RATE_WINDOW * INTERVAL
        self.assertAlmostEqual(processed, 10 / window)
        self.assertAlmostEqual(failed, 2 / window)
        self.assertEqual(self.history.rates("q/other"), (0.0, 0.0))

    def test_stop(self) -> None:
        """
        Stopped, the history schedules nothing more.
        """
        self.history.start()
        self.history.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * INTERVAL)
        self.assertEqual(len(self.history.points()), 1)

    def test_copies(self) -> None:
        """
        What the page is given cannot change the history.
        """
        self.history.start()
        self.history.points()[0]["queues"]["q/feed"] = 99
        self.assertEqual(self.history.points()[0]["queues"]["q/feed"], None)


class QueueDepthTests(TestCase):
    """
    The depths come from the broker, on the daemon's connection, and fill
    in the point they were asked for.
    """

    timeout = 60

    async def test_depths(self) -> None:
        p = harness.prefix()
        queue, missing = f"{p}/feed", f"{p}/missing"
        amqp = parse_amqp_url(harness.AMQP_URL)
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(amqp, [queue])))
        connection = AMQPConnectionService(reactor, amqp)
        connection.startService()
        self.addCleanup(connection.stopService)
        await publish_confirmed(connection, [(queue, b"%d" % i) for i in range(3)])
        metrics = Metrics()
        sampler = QueueSampler(reactor, connection, [queue, missing])
        history = History(reactor, metrics, [queue, missing], sampler)
        history.sample()
        self.assertEqual(history.points()[0]["queues"], {queue: None, missing: None})
        await harness.wait_until(lambda: history.points()[0]["queues"][queue] is not None, 20, "the depths")
        self.assertEqual(history.points()[0]["queues"], {queue: 3, missing: None})
        self.assertEqual(sampler.latest[queue].messages, 3)
        self.assertEqual(sampler.latest[queue].consumers, 0)
        self.assertIsNone(sampler.latest[missing])
        # The next point starts from the last depths known, and gets the
        # new ones when they come.
        await publish_confirmed(connection, [(queue, b"3")])
        history.sample()
        self.assertEqual(history.points()[1]["queues"][queue], 3)
        await sampler.refresh()
        self.assertEqual(history.points()[1]["queues"][queue], 4)
        self.assertEqual(history.points()[0]["queues"][queue], 3)

    def test_disconnected(self) -> None:
        """
        Without a connection nothing is asked and every depth is unknown.
        """
        sampler = QueueSampler(Clock(), AMQPConnectionService(reactor, parse_amqp_url(harness.AMQP_URL)), ["a", "b"])
        self.assertIsNone(sampler.refresh())
        self.assertEqual(sampler.latest, {"a": None, "b": None})
