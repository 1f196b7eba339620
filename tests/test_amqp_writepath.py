"""
The AMQP write path against the real shared broker: names are framed in
UTF-8 bytes, unframeable values fail their caller before anything is
written, and a writer that fails anyway drops the connection so that the
service reconnects and consumers resume.
"""

import uuid

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import TestCase
from txamqp.connection import Frame, Method

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.amqp.topology import InvalidQueueName, declare_queue
from cuckoodist.amqp.wire import UnframeableValue
from cuckoodist.config import parse_amqp_url
from tests.harness import AMQP_URL, wait_for



class WritePathTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(
            reactor, parse_amqp_url(AMQP_URL, ("amqp",)), retry_policy=lambda n: 0.1
        )
        self.service.startService()
        self.queues: list[str] = []
        self.addCleanup(self.cleanup)
        return Deferred.fromCoroutine(self.open())

    async def open(self) -> None:
        self.client = await self.service.whenConnected()
        self.channel = await self.client.open_channel()
        await self.channel.enable_confirms()

    async def _cleanup(self) -> None:
        client = await self.service.whenConnected()
        channel = await client.open_channel()
        for q in self.queues:
            await channel.queue_delete(queue=q)
        await self.service.stopService()

    def cleanup(self) -> Deferred:
        return Deferred.fromCoroutine(self._cleanup())

    def name(self, stem: str = "") -> str:
        q = f"test.wire.{uuid.uuid4().hex[:8]}{stem}"
        self.queues.append(q)
        return q

    def test_non_ascii_queue_round_trip(self) -> Deferred:
        """
        A queue named in non-ASCII text is declared, published to and read
        back (txAMQP's character count made the broker answer 501
        FRAME_ERROR and drop the connection).
        """
        async def go() -> None:
            q = self.name("-\u00e9chantillon-\u6837\u672c")
            await declare_queue(self.channel, q)
            await self.channel.publish(q, b"hello")
            reply = await self.channel.basic_get(queue=q, no_ack=True)
            self.assertEqual(reply.content.body, b"hello")
        return Deferred.fromCoroutine(go())

    def test_cancelled_wait_keeps_replies_in_order(self) -> Deferred:
        """
        A method whose caller stopped waiting (a drain's timeout, a stage
        cancelled at shutdown) still takes its own reply: the next method
        on the channel gets its own, not the other's (a C{queue.bind} was
        handed a C{cancel-ok} and failed).
        """
        async def go() -> None:
            first, second = self.name("-a"), self.name("-b")
            waited = self.channel.queue_declare(queue=second, durable=True)
            abandoned = self.channel.queue_declare(queue=first, durable=True)
            abandoned.cancel()
            self.failureResultOf(abandoned).trap(CancelledError)
            await waited
            reply = await self.channel.queue_declare(queue=second, durable=True, passive=True)
            self.assertEqual(reply.queue, second)
        return Deferred.fromCoroutine(go())

    def test_unframeable_publish_fails_loudly(self) -> Deferred:
        """
        A 300-byte routing key and an over-long queue name fail their caller
        before anything is written; the same channel goes on confirming
        publishes (the confirm numbering did not move).
        """
        async def go() -> None:
            q = self.name()
            await declare_queue(self.channel, q)
            with self.assertRaises(UnframeableValue):
                await self.channel.publish("x" * 300, b"lost")
            with self.assertRaises(InvalidQueueName):
                await declare_queue(self.channel, "\u00e9" * 200)
            with self.assertRaises(UnframeableValue):
                await self.channel.queue_declare(queue="\u00e9" * 200, durable=True)
            for i in range(3):
                await self.channel.publish(q, b"%d" % i)
            reply = await self.channel.queue_declare(queue=q, durable=True, passive=True)
            self.assertEqual(reply.message_count, 3)
            self.assertFalse(self.client.closed)
        return Deferred.fromCoroutine(go())

    def test_writer_failure_reconnects_and_consumer_resumes(self) -> Deferred:
        """
        A frame that fails in the writer (bypassing the checks) drops the
        connection instead of wedging it: the service reconnects, the
        consumer resumes, and a later publish is delivered.
        """
        seen: list[bytes] = []

        async def handler(delivery, outbox) -> None:
            seen.append(delivery.body)

        async def go() -> None:
            q = self.name()
            consumer = QueueConsumer(self.service, q, 5, handler, reactor, grace_period=1)
            consumer.startService()
            self.addCleanup(consumer.stopService)
            await wait_for(lambda: consumer.consuming)
            first = self.client
            publish = self.client.spec.classes.byname["basic"].methods.byname["publish"]
            bad = Frame(self.channel.id, Method(publish, 0, "", "x" * 300, False, False))
            self.flushLoggedErrors()
            first.outgoing.put(bad)
            await wait_for(lambda: first.closed)
            self.assertEqual(len(self.flushLoggedErrors(UnframeableValue)), 1)
            second = await self.service.whenConnected()
            self.assertIsNot(second, first)
            await wait_for(lambda: consumer.consuming)
            channel = await second.open_channel()
            await channel.enable_confirms()
            await channel.publish(q, b"after")
            await wait_for(lambda: seen == [b"after"])
        return Deferred.fromCoroutine(go())
