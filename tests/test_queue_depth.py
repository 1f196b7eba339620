"""
L{cuckoodist.amqp.queue_depth} against the real broker: depths and
consumer counts of existing queues, C{None} for missing ones (which stay
missing), and no channel left open or logged as failed.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.queue_depth import QueueDepth, queue_depths
from cuckoodist.amqp.topology import declare_queue
from cuckoodist.config import parse_amqp_url
from tests.harness import AMQP_URL, prefix


class QueueDepthTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL), retry_policy=lambda n: 0.1)
        self.service.startService()
        self.p = prefix()
        self.queues: list[str] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.service.whenConnected(failAfterFailures=3)
        self.channel = await self.client.open_channel()
        await self.channel.enable_confirms()

    async def _cleanup(self) -> None:
        client = await self.service.whenConnected()
        channel = await client.open_channel()
        for name in self.queues:
            await channel.queue_delete(queue=name)
        await channel.channel_close()
        await self.service.stopService()

    def name(self, stem: str) -> str:
        name = f"{self.p}/{stem}"
        self.queues.append(name)
        return name

    def test_depths_consumers_and_missing(self) -> Deferred:
        """
        Each queue's ready messages and consumers are reported; a missing
        queue, wherever it comes in the list, is C{None} and does not stop
        the queues after it being read; it is not created; every probing
        channel is closed and forgotten afterwards, and none was logged as
        failed.
        """

        async def go() -> None:
            full, idle, missing = self.name("full"), self.name("idle"), self.name("missing")
            await declare_queue(self.channel, full)
            await declare_queue(self.channel, idle)
            for i in range(3):
                await self.channel.publish(full, b"message %d" % i)
            consuming = await self.client.open_channel()
            await consuming.basic_consume(queue=idle, consumer_tag="test-idle")
            before = set(self.client.channels)
            events: list[dict] = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)

            depths = await queue_depths(self.client, [missing, full, missing, idle])

            self.assertEqual(list(depths), [missing, full, idle])
            self.assertEqual(depths, {missing: None, full: QueueDepth(3, 0), idle: QueueDepth(0, 1)})
            # Every channel it opened is closed, and its number free again.
            self.assertEqual({n for n, ch in self.client.channels.items() if not ch.closed}, before)
            reused = await self.client.open_channel()
            self.assertEqual(reused.id, min(set(range(1, 100)) - before))
            await reused.channel_close()
            self.assertFalse([e for e in events if "closed by the broker" in str(e.get("log_format", ""))])
            # Still missing: the probe created nothing.
            again = await queue_depths(self.client, [missing])
            self.assertEqual(again, {missing: None})
            await consuming.channel_close()

        return Deferred.fromCoroutine(go())

    def test_only_missing_and_empty(self) -> Deferred:
        """
        A list of missing queues only, and an empty list, need no queue to
        exist.
        """

        async def go() -> None:
            a, b = self.name("a"), self.name("b")
            self.assertEqual(await queue_depths(self.client, [a, b]), {a: None, b: None})
            self.assertEqual(await queue_depths(self.client, []), {})

        return Deferred.fromCoroutine(go())

    def test_invalid_name_asks_nothing(self) -> Deferred:
        """
        A name that is no usable queue name is refused before any question
        is sent, without quoting it.
        """

        async def go() -> None:
            before = set(self.client.channels)
            with self.assertRaises(ValueError) as caught:
                await queue_depths(self.client, [self.name("fine"), "amq.secret\n"])
            self.assertNotIn("secret", str(caught.exception))
            # Every channel it opened is closed, and its number free again.
            self.assertEqual({n for n, ch in self.client.channels.items() if not ch.closed}, before)
            reused = await self.client.open_channel()
            self.assertEqual(reused.id, min(set(range(1, 100)) - before))
            await reused.channel_close()

        return Deferred.fromCoroutine(go())
