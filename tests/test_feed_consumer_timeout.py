"""
feed_cuckoo against a broker with a short C{consumer_timeout}: a Cuckoo
that stays full for longer than the timeout closes no channel, and every
sample is still uploaded exactly once.

This needs a private RabbitMQ node (L{tests.rabbitnode}): the shared
broker's settings are never changed.  It runs in real time, since the
timeout is the broker's.
"""

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.feed_fleet import Fleet
from tests.rabbitnode import SKIP_REASON, private_node

CONSUMER_TIMEOUT = 10.0
FULL_FOR = 30.0
SAMPLES = 20


class ConsumerTimeoutTests(TestCase):
    skip = SKIP_REASON
    timeout = 150

    def setUp(self) -> None:
        self.node = private_node(self, settings={"consumer_timeout": int(CONSUMER_TIMEOUT * 1000)})

    async def test_full_cuckoo_outlasts_consumer_timeout(self) -> None:
        """
        Cuckoo full for three consumer timeouts: no channel is closed, and
        once it has room all twenty samples are uploaded, each once.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        fleet = Fleet(self, [5], status_interval=1.0, amqp=self.node.amqp_url(), clock=reactor)
        cuckoo = fleet.nodes[0]
        for _ in range(5):
            cuckoo.sim.create_task("backlog.exe", b"MZ backlog", {})
        expected = await fleet.publish(SAMPLES)
        await fleet.start()
        await deferLater(reactor, FULL_FOR, lambda: None)
        self.assertEqual(cuckoo.uploads(), 0)
        await fleet.settle("the full Cuckoo to have handed everything back", feed=(SAMPLES, 0), produced=0)

        cuckoo.free()
        cuckoo.sim.machines = 100
        await fleet.settle("every upload", feed=(0, 1), produced=SAMPLES, timeout=60)
        uploaded = [t["md5"] for t in cuckoo.tasks() if t["filename"] != "backlog.exe"]
        self.assertEqual(sorted(uploaded), sorted(expected))
        self.assertEqual(cuckoo.uploads(), SAMPLES)
        # Warnings only: a producer's "does this queue exist?" probe is
        # answered by a channel close, logged at debug level.
        text = "\n".join(formatEvent(e) for e in events if e.get("log_level", LogLevel.info) >= LogLevel.warn)
        self.assertNotIn("closed by the broker", text)
        self.assertNotIn("stopped:", text)
        self.assertNotIn("Channel lost", text)
