# -*- test-case-name: tests.test_feed_capacity,tests.test_amqp_writepath -*-
"""
Consuming one queue with at-least-once semantics.

L{QueueConsumer} owns one channel on the shared connection.  It hands each
delivery to a handler together with an L{Outbox} bound to the same channel,
and acks the delivery only when the handler returns, which for our stages
means after their output was confirmed by the broker.  If the channel or
connection dies meanwhile, the ack is never sent and the broker redelivers:
duplicates are possible, loss is not.

A consumer declares its queue with the arguments it owns (C{x-max-priority}
for a priority queue, C{x-queue-type} for a quorum queue); when the queue
exists with others it says so once, with how to migrate, and stops (see
L{cuckoodist.amqp.topology}).  The L{Outbox} never asserts arguments on a
queue it publishes to.

The queue type is the connection's (L{AMQPConnectionService.queue_type}):
every queue a daemon declares has the same one, so it is set once where
the daemon's connection is made, and every consumer and producer on that
connection agrees, whichever stage built it.
"""

import hashlib
import itertools
from typing import Awaitable, Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cuckoodist.amqp.protocol import Channel, Closed, describe_close
from cuckoodist.amqp.topology import CLASSIC, QueueArgumentsMismatch, declare_delay, declare_queue, ensure_queue
from cuckoodist.attempts import AttemptMemory

__all__ = ["Delivery", "Outbox", "QueueConsumer", "Handler", "Admission"]

log = Logger()

_consumer_numbers = itertools.count(1)

#: The longest a message the handler could not settle is held before it is
#: given back: long enough that one such message costs a few log lines a
#: minute, short enough to stay below even a consumer_timeout of seconds.
_MAX_REQUEUE_PAUSE = 5.0
#: The longest wait before setting a consumer up again after a failure.
_MAX_SETUP_PAUSE = 4.0


@attrs.frozen
class Delivery:
    """
    One message taken from a queue.

    @ivar routing_key: the queue it was published to; a dead-lettered
        message keeps its original routing key.
    @ivar priority: its AMQP C{priority} property, C{None} if it has none.
    """

    body: bytes
    routing_key: str
    delivery_tag: int
    redelivered: bool
    headers: Mapping[str, object] = attrs.field(factory=dict)
    priority: int | None = None


class Outbox:
    """
    What a handler may publish, on the channel its delivery came from:
    persistent, confirmed messages, now or after a broker-held delay.

    A queue published to is made to exist first (L{ensure_queue}): an
    existing one is used with whatever arguments its consumer gave it, so
    publishing to a priority queue, or to a plain one, never fails on them.

    @param max_priorities: queue -> the C{max_priority} its consumer has in
        this configuration, used only to create a queue that does not exist
        yet, so that its consumer can declare it later as it wants it.
    @param queue_type: the type of the queues it creates (C{classic} or
        C{quorum}), delay queues included.
    """

    def __init__(
        self, channel: Channel, max_priorities: Mapping[str, int] | None = None, queue_type: str = CLASSIC
    ) -> None:
        self._channel = channel
        self._max_priorities = dict(max_priorities or {})
        self._queue_type = queue_type
        self._declared: dict[object, Deferred] = {}

    async def publish(self, queue: str, body: bytes, priority: int | None = None) -> None:
        """
        Publish C{body} to C{queue} (created durable if missing) and wait
        for the broker's confirm.

        @param priority: the AMQP C{priority} property, C{None} for none.
        """
        await self._ensure_queue(queue)
        await self._channel.publish(queue, body, priority=priority)

    async def publish_later(self, queue: str, body: bytes, delay: float, priority: int | None = None) -> None:
        """
        Publish C{body} so that it reaches C{queue} after C{delay} seconds,
        held by the broker; wait for the confirm.  Dead-lettering keeps the
        C{priority} property, so it counts in C{queue}.
        """
        await self._ensure_queue(queue)
        exchange = await self._ensure(("delay", delay), lambda: declare_delay(self._channel, delay, self._queue_type))
        await self._channel.publish(queue, body, exchange=exchange, priority=priority)

    async def _ensure_queue(self, queue: str) -> None:
        async def ensure() -> None:
            if await ensure_queue(self._channel.client, queue, self._max_priorities.get(queue, 0), self._queue_type):
                log.info("Created queue {queue} to publish to it", queue=queue)

        await self._ensure(("queue", queue), ensure)

    async def _ensure(self, key: object, declare: Callable[[], Awaitable[object]]) -> object:
        if key not in self._declared:
            self._declared[key] = await declare()
        return self._declared[key]


Handler = Callable[[Delivery, Outbox], Awaitable[None]]

#: Decides before the handler runs whether this consumer takes a delivery
#: now; see L{QueueConsumer.admit_with}.
Admission = Callable[[Delivery], Awaitable[bool]]


class QueueConsumer(Service):
    """
    Consume C{queue} with at most C{prefetch} deliveries in flight.

    The consumer survives connection loss: it waits for the connection
    service to reconnect, then opens a new channel, re-declares and resumes.
    On stop it cancels its consumer, gives in-flight work C{grace_period}
    seconds to finish (and be acked), then abandons the rest unacked.

    @param connection: a L{ClientService} whose C{whenConnected} gives an
        authenticated L{AMQPClient}; its C{queue_type} (C{classic} when it
        has none) is the type the queue is declared with, and the type of
        the queues and delay queues the L{Outbox} creates.
    @param handler: called per delivery; returning acks the delivery,
        raising leaves it for redelivery.
    @param max_priority: declare C{queue} as a priority queue
        (C{x-max-priority}) with priorities up to this; 0 for none.  If the
        queue exists with other arguments the consumer logs why, once, and
        stops for good (L{refused}): retrying cannot change the queue.
    @param max_priorities: for the L{Outbox}: queue -> C{max_priority} of
        its consumer in this configuration.
    @ivar refused: the L{QueueArgumentsMismatch} that stopped the consumer,
        or C{None}.
    @ivar consuming: C{True} while the consumer is set up on a live
        channel (its queue declared, its delivery stream open), paused or
        not.
    """

    def __init__(
        self,
        connection: object,
        queue: str,
        prefetch: int,
        handler: Handler,
        clock: IReactorTime,
        grace_period: float = 30.0,
        max_priority: int = 0,
        max_priorities: Mapping[str, int] | None = None,
    ) -> None:
        self.name = f"consumer:{queue}"
        self._connection = connection
        self._queue = queue
        self._max_priority = max_priority
        self._max_priorities = {**(max_priorities or {}), queue: max_priority}
        self._queue_type = getattr(connection, "queue_type", CLASSIC)
        self.refused: QueueArgumentsMismatch | None = None
        self._prefetch = prefetch
        self._handler = handler
        self._clock = clock
        self._grace_period = grace_period
        self._loop: Deferred | None = None
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[Deferred] = set()
        self._requeued = AttemptMemory(clock, max_entries=10_000, max_age=3600.0)
        self.consuming = False
        # Flow control (pause/resume): what the owner wants, and whether the
        # broker is currently sending to our consumer tag.
        self._admission: Admission | None = None
        self._paused = False
        self._active = False
        self._switching = DeferredLock()

    @property
    def paused(self) -> bool:
        """
        Whether the owner asked the consumer to stop taking deliveries
        (L{pause}, or an admission that refused one) and has not resumed it.
        """
        return self._paused

    @property
    def registered(self) -> bool:
        """
        Whether the broker has this consumer registered now and sends it
        deliveries: set up on a live channel and not paused.  Read-only,
        for health checks and the C{cuckoodist_stage_consuming} gauge.
        """
        return self.consuming and self._active and self._channel is not None and not self._channel.closed

    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: f.trap(CancelledError))

    async def _run(self) -> None:
        failures = 0
        last_why = ""
        while self.running:
            client = await self._connection.whenConnected()
            try:
                await self._serve(client)
            except CancelledError:
                raise
            except QueueArgumentsMismatch as e:
                self.refused = e
                log.error("Stopped consuming {queue} until the daemon is restarted: {why}", queue=self._queue, why=str(e))
                return
            except Exception as e:
                # A consumer that had been serving starts the backoff afresh;
                # one that keeps failing to set up backs off further, up to
                # a few seconds: a broker coming back recovers its queues a
                # little after it accepts connections, and consuming must
                # resume as soon as they are there.  The same reason again
                # is not worth another warning.
                if self.consuming:
                    failures, last_why = 1, ""
                else:
                    failures += 1
                why = describe_close(e)
                (log.warn if why != last_why else log.debug)("Consumer of {queue} stopped: {why}", queue=self._queue, why=why)
                last_why = why
            finally:
                self.consuming = False
                self._channel = None
                self._active = False
            if self.running:
                await deferLater(self._clock, min(_MAX_SETUP_PAUSE, 0.5 * 2 ** min(failures, 6)), lambda: None)

    async def _serve(self, client: object) -> None:
        channel = await client.open_channel()
        await channel.enable_confirms()
        await declare_queue(channel, self._queue, self._max_priority, self._queue_type)
        await channel.basic_qos(prefetch_count=self._prefetch)
        tag = f"cuckoodist.{self._queue}.{next(_consumer_numbers)}"
        channel.track_consumer(tag)
        deliveries = await client.queue(tag)
        active = not self._paused
        if active:
            await channel.basic_consume(queue=self._queue, consumer_tag=tag)
        self._channel, self._consumer_tag, self._active = channel, tag, active
        self._converge()  # catch up with a pause() or resume() made meanwhile
        self.consuming = True
        log.info("Consuming {queue} (prefetch {n})", queue=self._queue, n=self._prefetch)
        outbox = Outbox(channel, self._max_priorities, self._queue_type)
        while True:
            message = await deliveries.get()
            delivery = Delivery(
                body=_as_bytes(message.content.body),
                routing_key=message.routing_key,
                delivery_tag=message.delivery_tag,
                redelivered=bool(message.redelivered),
                headers=message.content.properties.get("headers") or {},
                priority=_priority(message.content.properties.get("priority")),
            )
            work = Deferred.fromCoroutine(self._dispatch(channel, outbox, delivery))
            self._in_flight.add(work)
            work.addBoth(lambda r, w=work: (self._in_flight.discard(w), r)[1])

    async def _process(self, channel: Channel, outbox: Outbox, delivery: Delivery) -> None:
        try:
            await self._handler(delivery, outbox)
        except CancelledError:
            log.info("Abandoned unfinished work on {queue}; it stays unacked", queue=self._queue)
            return
        except Closed as e:
            log.warn("Channel lost mid-work on {queue}: {why}; left for redelivery", queue=self._queue, why=describe_close(e))
            return
        except Exception:
            # The handler could not settle the message (the stages fail
            # everything they can to the overseer, so this means even that
            # publish was refused).  Give it back, but after a pause that
            # grows each time the same message comes back here, so one
            # message the broker keeps refusing cannot spin the process.
            times = self._requeued.failed(hashlib.sha256(delivery.body).hexdigest(), 1)
            pause = min(_MAX_REQUEUE_PAUSE, 2.0 ** (times - 1))
            log.failure(
                "Handler for {queue} could not settle a message (time {n}); it goes back to the queue in {s:g} s",
                queue=self._queue,
                n=times,
                s=pause,
            )
            try:
                await deferLater(self._clock, pause, lambda: None)
            except CancelledError:
                return
            if not channel.closed:
                channel.basic_reject(delivery_tag=delivery.delivery_tag, requeue=True)
            return
        if channel.closed:
            log.warn("Finished work on {queue} after its channel closed; it will be redelivered", queue=self._queue)
            return
        channel.basic_ack(delivery_tag=delivery.delivery_tag)

    # Flow control ------------------------------------------------------------

    def admit_with(self, admission: Admission) -> None:
        """
        Ask C{admission} about each delivery before the handler sees it.

        A refused delivery is handed back: rejected with requeue, at once,
        which is not a failure (the handler never ran).  A refusal also
        pauses the consumer, so that the broker gives the queue to other
        consumers instead of straight back to this one, until the owner
        calls L{resume}.
        """
        self._admission = admission

    def pause(self) -> Deferred:
        """
        Stop taking deliveries (C{basic.cancel}) until L{resume}; any that
        still arrive are handed back.  Holds across reconnections.

        @return: fires once the broker has stopped sending.
        """
        self._paused = True
        return self._converge()

    def resume(self) -> Deferred:
        """
        Take deliveries again, under the same consumer tag.

        @return: fires once the broker is sending again.
        """
        self._paused = False
        return self._converge()

    def _converge(self) -> Deferred:
        """
        Bring the broker's view in line with the wish, one switch at a time
        (a resume queued behind a pause runs after the pause's C{cancel-ok}).
        """
        return self._switching.run(lambda: Deferred.fromCoroutine(self._switch()))

    async def _switch(self) -> None:
        channel, tag = self._channel, self._consumer_tag
        if not self.running or channel is None or channel.closed or tag is None:
            return  # _serve consumes, or not, on the next channel
        try:
            if self._paused and self._active:
                await channel.basic_cancel(consumer_tag=tag)
                self._active = False
                log.info("Paused consuming {queue}", queue=self._queue)
            elif not self._paused and not self._active:
                await channel.basic_consume(queue=self._queue, consumer_tag=tag)
                self._active = True
                log.info("Resumed consuming {queue}", queue=self._queue)
        except Exception as e:
            # The channel died under us; _run opens the next one.
            log.info("Could not switch consuming of {queue}: {why}", queue=self._queue, why=describe_close(e))

    async def _dispatch(self, channel: Channel, outbox: Outbox, delivery: Delivery) -> None:
        """
        Give a delivery to L{_process}, unless the consumer is paused or
        its admission refuses it: then hand it back, unhandled.
        """
        try:
            if not self._paused:
                if await self._admitted(delivery):
                    await self._process(channel, outbox, delivery)
                    return
                self.pause()
            # Wait until the broker stopped sending to us, so that the
            # message goes to another consumer rather than straight back here.
            await self._converge()
        except CancelledError:
            return  # stopping: it stays unacked and the broker gives it back
        if not channel.closed:
            channel.basic_reject(delivery_tag=delivery.delivery_tag, requeue=True)

    async def _admitted(self, delivery: Delivery) -> bool:
        if self._admission is None:
            return True
        try:
            return await self._admission(delivery)
        except CancelledError:
            raise
        except Exception:
            # A broken admission must not strand messages: let the handler
            # decide, as if there were none.
            log.failure("Admission check for {queue} failed; handling the message anyway", queue=self._queue)
            return True

    def stopService(self) -> Deferred:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and not channel.closed and tag is not None:
            try:
                await channel.basic_cancel(consumer_tag=tag).addTimeout(5, self._clock)
            except Exception as e:
                log.info("Could not cancel consumer {tag}: {why}", tag=tag, why=describe_close(e))
        if self._loop is not None:
            self._loop.cancel()
        pending = list(self._in_flight)
        if pending:
            log.info(
                "Draining {n} message(s) in flight on {queue} (up to {s} s)",
                n=len(pending),
                queue=self._queue,
                s=self._grace_period,
            )
            waiting = DeferredList(pending, consumeErrors=True)
            timer = self._clock.callLater(self._grace_period, lambda: [d.cancel() for d in list(self._in_flight)])
            await waiting
            if timer.active():
                timer.cancel()


def _priority(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return str(body).encode("utf-8")
