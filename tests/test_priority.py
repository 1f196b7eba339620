"""
Priority queues against the real shared broker, on queues of their own
(unique names, deleted afterwards; no broker setting is changed):

  - a stage's queue declared with C{max_priority} gives the higher
    C{priority} first, whether the message was published at once or came
    back through a delay queue;
  - a producer publishes to an existing queue as it is, priority queue or
    not, without ever asserting arguments on it (no 406 on its channel),
    and creates a missing one as its consumer will declare it;
  - a consumer whose queue exists with other arguments says so in one line
    that names the queue, what the broker says it has, and how to migrate,
    and stops instead of trying again;
  - a queue without priorities works as before: plain publishes, and
    declares without arguments, as the Go workers make them.
"""

import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import Delivery, Outbox, QueueConsumer
from cuckoodist.amqp.topology import QueueArgumentsMismatch, declare_queue, ensure_queue
from cuckoodist.config import parse_amqp_url
from cuckoodist.publish import publish_confirmed
from tests.harness import AMQP_URL, wait_for



class PriorityTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL, ("amqp",)), retry_policy=lambda n: 0.1)
        self.service.startService()
        self.queues: list[str] = []
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.service.whenConnected()
        # Leave whenConnected's callback chain before the test runs: a
        # consumer started from inside it would re-enter the service.
        await deferLater(reactor, 0, lambda: None)

    async def _cleanup(self) -> None:
        client = await self.service.whenConnected()
        channel = await client.open_channel()
        for q in self.queues:
            await channel.queue_delete(queue=q)
        await self.service.stopService()

    def name(self) -> str:
        q = f"test.priority.{uuid.uuid4().hex[:10]}"
        self.queues.append(q)
        return q

    async def channel(self):
        channel = await self.client.open_channel()
        await channel.enable_confirms()
        return channel

    def consumer(self, queue: str, seen: list[Delivery], **kwargs) -> QueueConsumer:
        async def handler(delivery: Delivery, outbox: Outbox) -> None:
            seen.append(delivery)

        consumer = QueueConsumer(self.service, queue, 1, handler, reactor, grace_period=1, **kwargs)
        self.addCleanup(consumer.stopService)
        return consumer

    async def paused_consumer(self, queue: str, seen: list[Delivery], **kwargs) -> QueueConsumer:
        """
        A consumer set up on C{queue} but taking nothing until resumed, so
        that what is published meanwhile waits in the queue.
        """
        consumer = self.consumer(queue, seen, **kwargs)
        consumer.pause()
        consumer.startService()
        await wait_for(lambda: consumer.consuming)
        return consumer

    def lines(self, text: str) -> list[str]:
        """
        The log lines (formatted) that contain C{text}.
        """
        return [line for line in (formatEvent(e) for e in self.events) if text in line]

    def test_higher_priority_first(self) -> None:
        """
        With C{max_priority}, messages published while the consumer is
        paused are delivered highest priority first, those without one
        last; each delivery shows its priority.  The producer's outbox does
        not know the queue is a priority queue, and needs not.
        """

        async def go() -> None:
            q = self.name()
            seen: list[Delivery] = []
            consumer = await self.paused_consumer(q, seen, max_priority=3)
            outbox = Outbox(await self.channel())
            for body, priority in [(b"low", 1), (b"none", None), (b"high", 3), (b"mid", 2), (b"high-2", 3)]:
                await outbox.publish(q, body, priority=priority)
            await consumer.resume()
            await wait_for(lambda: len(seen) == 5)
            self.assertEqual([d.body for d in seen], [b"high", b"high-2", b"mid", b"low", b"none"])
            self.assertEqual([d.priority for d in seen], [3, 3, 2, 1, None])

        return Deferred.fromCoroutine(go())

    def test_priority_survives_delay(self) -> None:
        """
        A message published through a delay queue (polls, overseer retries)
        keeps its priority when it is dead-lettered to a priority queue.
        """

        async def go() -> None:
            q = self.name()
            seen: list[Delivery] = []
            consumer = await self.paused_consumer(q, seen, max_priority=3)
            outbox = Outbox(await self.channel())
            await outbox.publish_later(q, b"low", 0.05, priority=1)
            await outbox.publish_later(q, b"high", 0.05, priority=3)
            channel = await self.channel()
            await deferLater(reactor, 0.3, lambda: None)
            reply = await channel.queue_declare(queue=q, durable=True, passive=True)
            self.assertEqual(reply.message_count, 2)
            await consumer.resume()
            await wait_for(lambda: len(seen) == 2)
            self.assertEqual([(d.body, d.priority) for d in seen], [(b"high", 3), (b"low", 1)])

        return Deferred.fromCoroutine(go())

    def test_producer_never_asserts_arguments(self) -> None:
        """
        L{ensure_queue} leaves an existing queue as it is, priority queue or
        plain, without a 406 on anyone's channel; a missing queue is created
        with the arguments given, which its consumer's declare then matches.
        """

        async def go() -> None:
            prioritised, plain, missing = self.name(), self.name(), self.name()
            setup = await self.channel()
            await declare_queue(setup, prioritised, 10)
            await declare_queue(setup, plain)
            self.assertFalse(await ensure_queue(self.client, prioritised))
            self.assertFalse(await ensure_queue(self.client, plain, 3))
            self.assertTrue(await ensure_queue(self.client, missing, 3))
            await declare_queue(setup, missing, 3)  # the consumer agrees
            self.assertFalse(setup.closed)
            self.assertEqual(self.lines("PRECONDITION_FAILED"), [])
            with self.assertRaises(QueueArgumentsMismatch):
                await declare_queue(await self.channel(), missing)

        return Deferred.fromCoroutine(go())

    def test_resubmit_to_priority_queue(self) -> None:
        """
        C{publish_confirmed} (resubmit, demo) publishes to an existing
        priority queue, instead of failing on its declare over and over.
        """

        async def go() -> None:
            q = self.name()
            await declare_queue(await self.channel(), q, 5)
            await publish_confirmed(self.service, [(q, b"again")])
            reply = await (await self.channel()).queue_declare(queue=q, durable=True, passive=True)
            self.assertEqual(reply.message_count, 1)

        return Deferred.fromCoroutine(go())

    def _mismatch(self, existing: int, wanted: int, says: str, declared: str) -> Deferred:
        async def go() -> None:
            q = self.name()
            await declare_queue(await self.channel(), q, existing)
            seen: list[Delivery] = []
            consumer = self.consumer(q, seen, max_priority=wanted)
            consumer.startService()
            await wait_for(lambda: consumer.refused is not None)
            # Longer than the consumer's first backoffs: it must not try again.
            await deferLater(reactor, 2.5, lambda: None)
            (line,) = self.lines(f"Stopped consuming {q} until the daemon is restarted")
            self.assertNotIn("\n", line)
            for part in (repr(q), declared, says, "PRECONDITION_FAILED", "delete", "shovel", "max_priority"):
                self.assertIn(part, line)
            self.assertEqual(len(self.lines("PRECONDITION_FAILED")), 2)  # the channel's close, and ours
            self.assertFalse(consumer.consuming)
            # The queue is untouched and still takes what its producers send.
            outbox = Outbox(await self.channel())
            await outbox.publish(q, b"still works", priority=2)
            reply = await (await self.channel()).queue_declare(queue=q, durable=True, passive=True)
            self.assertEqual(reply.message_count, 1)

        return Deferred.fromCoroutine(go())

    def test_plain_queue_refuses_priorities(self) -> None:
        """
        A stage given C{max_priority} on a queue that exists without it
        (made by Go workers or an earlier configuration) logs one line
        saying what the queue has and how to migrate, and stops for good.
        """
        return self._mismatch(0, 3, "current is none", "declared here with x-max-priority=3, but it exists with other arguments")

    def test_priority_queue_refuses_plain_consumer(self) -> None:
        """
        The other way round: a stage without C{max_priority} (or a Go
        worker) cannot consume a priority queue, and says why, once.
        """
        return self._mismatch(10, 0, "current is the value '10'", "declared here without arguments (no priorities), but it exists with other arguments")

    def test_plain_queue_as_before(self) -> None:
        """
        Without C{max_priority} the queue is declared without arguments: a
        Go worker's declare agrees with it, plain publishes arrive in order,
        and a priority property on a message changes nothing.
        """

        async def go() -> None:
            q = self.name()
            seen: list[Delivery] = []
            consumer = await self.paused_consumer(q, seen)
            go_worker = await self.channel()
            await go_worker.queue_declare(queue=q, durable=True)  # as the Go workers declare it
            await go_worker.publish(q, b"first")
            outbox = Outbox(await self.channel())
            await outbox.publish(q, b"second", priority=3)
            await outbox.publish(q, b"third")
            await consumer.resume()
            await wait_for(lambda: len(seen) == 3)
            self.assertEqual([d.body for d in seen], [b"first", b"second", b"third"])
            self.assertIsNone(consumer.refused)

        return Deferred.fromCoroutine(go())

    def test_bad_priority_refused_before_sending(self) -> None:
        """
        A priority that is not an octet fails the publish, nothing is sent,
        and the channel goes on confirming.
        """

        async def go() -> None:
            q = self.name()
            channel = await self.channel()
            await declare_queue(channel, q, 3)
            for bad in (256, -1, True, "3"):
                with self.assertRaises(ValueError):
                    await channel.publish(q, b"x", priority=bad)
            await channel.publish(q, b"ok", priority=255)
            reply = await channel.queue_declare(queue=q, durable=True, passive=True)
            self.assertEqual(reply.message_count, 1)

        return Deferred.fromCoroutine(go())
