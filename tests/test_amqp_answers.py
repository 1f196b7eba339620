"""
Against the real shared broker: methods the broker answers, sent back to
back on one channel, each get their own answer; channel numbers are
reused.

RabbitMQ does not always answer in the order the methods were sent: a
classic queue's process, not the channel, sends C{basic.cancel-ok}.  A
stage stopping (C{basic.cancel}) while it declared a delay queue
(C{queue.bind}) had each method receive the other's answer and fail.
"""

import uuid

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import parse_amqp_url
from tests.harness import AMQP_URL


class AnswerOrderTests(TestCase):
    timeout = 120

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL, ("amqp",)), retry_policy=lambda n: 0.1)
        self.service.startService()
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.service.whenConnected()
        self.channel = await self.client.open_channel()

    async def _cleanup(self) -> None:
        channel = await self.client.open_channel()
        for q in self.queues:
            await channel.queue_delete(queue=q)
        for e in self.exchanges:
            await channel.exchange_delete(exchange=e)
        await self.service.stopService()

    def test_cancel_then_bind(self) -> Deferred:
        """
        A C{basic.cancel} of a consumer holding unacked messages, followed
        at once by an exchange declare, a queue declare and a bind on the
        same channel: every call succeeds with its own answer, many times
        over (the mix-up happened about once in twenty tries before).
        """

        async def go() -> None:
            stem = f"test.answers.{uuid.uuid4().hex[:8]}"
            await self.channel.basic_qos(prefetch_count=50)
            for round in range(60):
                source, target = f"{stem}.{round}", f"{stem}.{round}.x"
                self.queues += [source, target]
                self.exchanges.append(target)
                await self.channel.queue_declare(queue=source, durable=False, auto_delete=False)
                for _ in range(20):
                    self.channel.basic_publish(routing_key=source, content=_content(b"m"))
                tag = f"c{round}"
                await self.channel.basic_consume(queue=source, consumer_tag=tag)
                calls = [
                    self.channel.basic_cancel(consumer_tag=tag),
                    self.channel.exchange_declare(exchange=target, type="fanout", durable=False),
                    self.channel.queue_declare(queue=target, durable=False),
                    self.channel.queue_bind(queue=target, exchange=target, routing_key=""),
                ]
                results = await DeferredList(calls, consumeErrors=True)
                failures = [r.getErrorMessage() for ok, r in results if not ok]
                self.assertEqual(failures, [], f"round {round}")
                cancel_ok, _, declare_ok, _ = (r for _, r in results)
                self.assertEqual(cancel_ok.method.name, "cancel-ok")
                self.assertEqual(declare_ok.method.name, "declare-ok")

        return Deferred.fromCoroutine(go())

    def test_cancelled_while_queued_is_not_sent(self) -> Deferred:
        """
        A call cancelled while it waits behind another is never sent: the
        queue it would have declared does not exist.
        """

        async def go() -> None:
            first = f"test.answers.{uuid.uuid4().hex[:8]}"
            second = first + ".never"
            self.queues += [first, second]
            declaring = self.channel.queue_declare(queue=first, durable=False)
            queued = self.channel.queue_declare(queue=second, durable=False)
            queued.cancel()
            await declaring
            with self.assertRaises(CancelledError):
                await queued
            probe = await self.client.open_channel()
            probe.probing = True
            with self.assertRaises(Exception):
                await probe.queue_declare(queue=second, passive=True)

        return Deferred.fromCoroutine(go())

    def test_many_cancelled_while_queued(self) -> Deferred:
        """
        Thousands of calls cancelled while they wait behind one (a drain)
        are let go without deepening the stack, and the channel still
        answers the next call.
        """

        async def go() -> None:
            name = f"test.answers.{uuid.uuid4().hex[:8]}"
            self.queues.append(name)
            first = self.channel.queue_declare(queue=name, durable=False)
            queued = [self.channel.queue_declare(queue=name, durable=False) for _ in range(3000)]
            for call in queued:
                call.cancel()
            await first
            for call in queued:
                with self.assertRaises(CancelledError):
                    await call
            reply = await self.channel.queue_declare(queue=name, durable=False)
            self.assertEqual(reply.method.name, "declare-ok")

        return Deferred.fromCoroutine(go())


class ChannelNumberTests(TestCase):
    """
    Channel numbers are given out again once their channel is closed:
    they are 16 bits, and a daemon probing queues every few seconds opens
    a channel each time.
    """

    timeout = 60

    def setUp(self) -> Deferred:
        self.service = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL, ("amqp",)), retry_policy=lambda n: 0.1)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.service.whenConnected()

    def test_reused(self) -> Deferred:
        """
        A channel closed by us, and one the broker closed (a passive
        declare of a missing queue), free their numbers; open ones keep
        theirs; the table holds only open channels.
        """

        async def go() -> None:
            kept = await self.client.open_channel()
            for _ in range(3):
                mine = await self.client.open_channel()
                self.assertEqual(mine.id, kept.id + 1)
                await mine.channel_close()
                self.assertTrue(mine.closed)
            probe = await self.client.open_channel()
            probe.probing = True
            with self.assertRaises(Exception):
                await probe.queue_declare(queue=f"test.answers.missing.{uuid.uuid4().hex}", passive=True)
            again = await self.client.open_channel()
            self.assertEqual(again.id, probe.id)
            self.assertEqual(set(self.client.channels) - {0}, {kept.id, again.id})
            self.assertFalse(kept.closed)
            await kept.queue_declare(queue="", exclusive=True)

        return Deferred.fromCoroutine(go())


class ClosedConnectionTests(TestCase):
    timeout = 60

    def test_no_heartbeat_after_loss(self) -> Deferred:
        """
        A frame sent once the connection is lost does not restart the
        heartbeat loop that the loss stopped.
        """
        from txamqp.connection import Frame, Heartbeat

        service = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL + "?heartbeat=5", ("amqp",)))
        service.startService()

        async def go() -> None:
            client = await service.whenConnected()
            self.assertTrue(client.sendHB.running)
            lost = client.disconnected.wait()
            await service.stopService()
            await lost
            self.assertFalse(client.sendHB.running)
            client.send_frame(Frame(0, Heartbeat()))
            client.reschedule_send_heartbeat()
            self.assertFalse(client.sendHB.running)

        return Deferred.fromCoroutine(go())


def _content(body: bytes):
    from txamqp.content import Content

    return Content(body)
