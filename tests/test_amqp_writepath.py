"""
The AMQP write path against the real shared broker: names are framed in
UTF-8 bytes, unframeable values fail their caller before anything is
written, and a writer that fails anyway drops the connection so that the
service reconnects and consumers resume.  Also what C{queue_type: quorum}
declares (L{QuorumDeclareTests}).
"""

import uuid

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import TestCase
from txamqp.connection import Frame, Method

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import Outbox, QueueConsumer
from cuckoodist.amqp.protocol import ChannelClosed, describe_close
from cuckoodist.amqp.topology import (
    CLASSIC,
    QUORUM,
    InvalidQueueName,
    QueueArgumentsMismatch,
    declare_queue,
    delay_arguments,
    delay_name,
    ensure_queue,
    queue_arguments,
)
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


class QuorumDeclareTests(TestCase):
    """
    C{queue_type: quorum} against the real shared broker, on queues under a
    prefix of this test's own, deleted afterwards.  RabbitMQ cannot tell a
    client a queue's arguments, so a declare that must be refused (406)
    shows that the arguments took effect.
    """

    timeout = 60

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(
            reactor, parse_amqp_url(AMQP_URL, ("amqp",)), retry_policy=lambda n: 0.1, queue_type=QUORUM
        )
        self.service.startService()
        self.prefix = f"test.quorum.{uuid.uuid4().hex[:8]}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.service.whenConnected()
        # Leave whenConnected's callbacks before a test starts consumers,
        # which call it again (ClientService refuses reentrant calls).
        await (await self.client.open_channel()).channel_close()

    async def _cleanup(self) -> None:
        channel = await (await self.service.whenConnected()).open_channel()
        for q in self.queues:
            await channel.queue_delete(queue=q)
        for exchange in self.exchanges:
            await channel.exchange_delete(exchange=exchange)
        await self.service.stopService()

    def name(self, stem: str = "") -> str:
        q = f"{self.prefix}.{len(self.queues)}{stem}"
        self.queues.append(q)
        return q

    async def channel(self):
        return await self.client.open_channel()

    async def refused(self, declare) -> str:
        """
        Run C{declare} on a new channel and return the broker's refusal.
        """
        channel = await self.channel()
        with self.assertRaises(ChannelClosed) as caught:
            await declare(channel)
        return describe_close(caught.exception)

    def test_arguments(self) -> None:
        """
        A quorum work queue is declared with C{x-queue-type} alone; its
        delay queues also dead-letter at-least-once, refusing publishes
        rather than dropping messages when full.  Quorum queues have no
        priorities, and an unknown type is refused.
        """
        self.assertEqual(queue_arguments(0, QUORUM), {"x-queue-type": "quorum"})
        self.assertEqual(queue_arguments(0, CLASSIC), {})
        self.assertEqual(queue_arguments(3, CLASSIC), {"x-max-priority": 3})
        self.assertRaises(ValueError, queue_arguments, 3, QUORUM)
        self.assertRaises(ValueError, queue_arguments, 0, "stream")
        self.assertEqual(
            delay_arguments(1.5, QUORUM),
            {"x-message-ttl": 1500, "x-dead-letter-exchange": "", "x-queue-type": "quorum",
             "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"},
        )
        self.assertEqual(delay_arguments(1.5, CLASSIC), {"x-message-ttl": 1500, "x-dead-letter-exchange": ""})
        self.assertEqual(delay_name(1.5, CLASSIC), "cuckoodist.delay.1500ms")
        self.assertEqual(delay_name(1.5, QUORUM), "cuckoodist.delay.quorum.1500ms")

    def test_work_queue_is_quorum(self) -> Deferred:
        """
        A consumer on a connection of C{queue_type} quorum declares a
        quorum queue: it exists, a classic declare of it is refused on
        C{x-queue-type}, and the refusal says how to migrate.
        """
        async def go() -> None:
            q = self.name()
            consumer = QueueConsumer(self.service, q, 5, self._ignore, reactor, grace_period=1)
            consumer.startService()
            self.addCleanup(consumer.stopService)
            await wait_for(lambda: consumer.consuming)
            await (await self.channel()).queue_declare(queue=q, durable=True, passive=True)
            says = await self.refused(lambda channel: channel.queue_declare(queue=q, durable=True))
            self.assertIn("406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type'", says)
            self.assertIn("current is the value 'quorum'", says)
            with self.assertRaises(QueueArgumentsMismatch) as caught:
                await declare_queue(await self.channel(), q)
            text = str(caught.exception)
            for part in ("declared here without arguments", "x-queue-type", "set queue_type", "drain",
                         "delete_queue", "shovel", "Go workers"):
                self.assertIn(part, text)
        return Deferred.fromCoroutine(go())

    def test_classic_queue_refused(self) -> Deferred:
        """
        A classic queue (made by a Go worker or a classic configuration)
        stops a quorum consumer, once, with the way to migrate.
        """
        async def go() -> None:
            q = self.name()
            await declare_queue(await self.channel(), q)
            consumer = QueueConsumer(self.service, q, 5, self._ignore, reactor, grace_period=1)
            consumer.startService()
            self.addCleanup(consumer.stopService)
            await wait_for(lambda: consumer.refused is not None)
            text = str(consumer.refused)
            self.assertIn("declared here with x-queue-type=quorum, but it exists with other arguments", text)
            self.assertIn("received the value 'quorum' of type 'longstr' but current is none", text)
            self.assertIn("set queue_type to the type the queue has", text)
            self.assertFalse(consumer.consuming)
        return Deferred.fromCoroutine(go())

    def test_producer_creates_quorum(self) -> Deferred:
        """
        A producer creating a missing queue gives it the queue type its
        consumer would (and leaves an existing classic queue alone).
        """
        async def go() -> None:
            missing, classic = self.name(), self.name()
            await declare_queue(await self.channel(), classic)
            self.assertTrue(await ensure_queue(self.client, missing, 0, QUORUM))
            self.assertFalse(await ensure_queue(self.client, classic, 0, QUORUM))
            await declare_queue(await self.channel(), missing, 0, QUORUM)  # the consumer agrees
            says = await self.refused(lambda channel: channel.queue_declare(queue=missing, durable=True))
            self.assertIn("inequivalent arg 'x-queue-type'", says)
        return Deferred.fromCoroutine(go())

    def test_delay_queue(self) -> Deferred:
        """
        A quorum delay queue has its own name, dead-letters at-least-once
        (a declare without the strategy, or as a classic queue, is
        refused), and a message published through it by the L{Outbox}
        arrives after the delay.
        """
        seen: list[bytes] = []

        async def handler(delivery, outbox) -> None:
            seen.append(delivery.body)

        async def go() -> None:
            q = self.name()
            # A length of its own, so that no other test's delay queue is touched.
            delay = (200 + int(uuid.uuid4().hex[:4], 16) % 700) / 1000
            name = delay_name(delay, QUORUM)
            self.queues.append(name)
            self.exchanges.append(name)
            consumer = QueueConsumer(self.service, q, 5, handler, reactor, grace_period=1)
            consumer.startService()
            self.addCleanup(consumer.stopService)
            await wait_for(lambda: consumer.consuming)
            channel = await self.channel()
            await channel.enable_confirms()
            outbox = Outbox(channel, queue_type=QUORUM)
            await outbox.publish_later(q, b"later", delay)
            await wait_for(lambda: seen == [b"later"])
            arguments = delay_arguments(delay, QUORUM)
            without = {k: v for k, v in arguments.items() if k != "x-dead-letter-strategy"}
            says = await self.refused(lambda c: c.queue_declare(queue=name, durable=True, arguments=without))
            self.assertIn("inequivalent arg 'x-dead-letter-strategy'", says)
            classic = delay_arguments(delay, CLASSIC)
            says = await self.refused(lambda c: c.queue_declare(queue=name, durable=True, arguments=classic))
            self.assertIn("406 PRECONDITION_FAILED", says)
            await (await self.channel()).queue_declare(queue=name, durable=True, arguments=arguments)
        return Deferred.fromCoroutine(go())

    async def _ignore(self, delivery, outbox) -> None:
        pass
