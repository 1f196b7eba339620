# -*- test-case-name: tests.test_amqp -*-
"""
The AMQP client protocol: txAMQP plus RabbitMQ publisher confirms.

txAMQP 0.8.2 can speak RabbitMQ's C{confirm.select} once the spec declares
it (see C{spec/amqp0-9-1-rabbitmq.xml}), but nothing in it receives the
broker's C{basic.ack}/C{basic.nack}.  L{ConfirmingDelegate} routes them to
the L{Channel} they belong to, and L{Channel.publish} turns each publish into
a Deferred that fires only once the broker has taken responsibility for the
message.  That Deferred is what lets a stage ack its input only after its
output is safe.
"""

import itertools
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed, Closed, TwistedDelegate
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, AMQClient

from cuckoodist.amqp.wire import unpack_frame

__all__ = ["AMQPClient", "Channel", "PublishNacked", "Closed", "ChannelClosed"]

log = Logger()

PERSISTENT = 2


class PublishNacked(Exception):
    """
    The broker refused responsibility for a published message (an internal
    error in the queue process).  The publisher must treat the message as
    not sent.
    """


class Channel(AMQChannel):
    """
    An AMQP channel that tracks publisher confirms and the consumers it owns.

    @ivar _unconfirmed: maps publish sequence numbers to the Deferreds
        returned by L{publish}; C{None} until confirms are enabled.
    """

    def __init__(self, id: int, outgoing: Any, client: "AMQPClient") -> None:
        super().__init__(id, outgoing, client)
        self._unconfirmed: dict[int, Deferred] | None = None
        self._sequence = itertools.count(1)
        self._consumer_tags: set[str] = set()

    async def enable_confirms(self) -> None:
        """
        Put the channel in confirm mode; from now on every publish is acked
        or nacked by the broker, numbered from 1.
        """
        await self.confirm_select(nowait=False)
        self._unconfirmed = {}

    def publish(
        self,
        routing_key: str,
        body: bytes,
        exchange: str = "",
        content_type: str = "application/json",
    ) -> Deferred:
        """
        Publish a persistent message and return a Deferred that fires when
        the broker confirms it.

        @raise RuntimeError: if confirms were not enabled; publishing
            without them would silently give up the delivery guarantee.
        @return: a Deferred firing with C{None} on broker ack, failing with
            L{PublishNacked} on nack or with L{Closed} if the channel dies
            first (the message may or may not have been taken).
        """
        if self._unconfirmed is None:
            raise RuntimeError("publish() needs enable_confirms() first")
        if self.closed:
            self._raise_closed(self.reason)
        content = Content(
            body,
            properties={"delivery-mode": PERSISTENT, "content-type": content_type},
        )
        sequence = next(self._sequence)
        confirmed = Deferred()
        self._unconfirmed[sequence] = confirmed
        self.basic_publish(exchange=exchange, routing_key=routing_key, content=content)
        return confirmed

    def _settle(self, delivery_tag: int, multiple: bool, error: Exception | None) -> None:
        if self._unconfirmed is None:
            return
        if multiple:
            tags = [tag for tag in self._unconfirmed if tag <= delivery_tag]
        else:
            tags = [delivery_tag] if delivery_tag in self._unconfirmed else []
        for tag in sorted(tags):
            d = self._unconfirmed.pop(tag)
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def confirmed(self, delivery_tag: int, multiple: bool) -> None:
        """
        The broker acked publishes up to C{delivery_tag}.
        """
        self._settle(delivery_tag, multiple, None)

    def refused(self, delivery_tag: int, multiple: bool) -> None:
        """
        The broker nacked publishes up to C{delivery_tag}.
        """
        self._settle(delivery_tag, multiple, PublishNacked("broker nacked the publish"))

    def track_consumer(self, consumer_tag: str) -> None:
        """
        Remember that deliveries for C{consumer_tag} arrive on this channel,
        so that they stop when the channel dies (txAMQP only closes consumer
        queues when the whole connection goes).
        """
        self._consumer_tags.add(consumer_tag)

    def do_close(self, reason: Any) -> None:
        """
        The channel is gone: fail every unconfirmed publish and end every
        consumer on it, so that nobody waits for what can no longer come.
        """
        if self.closed:
            return
        super().do_close(reason)
        pending, self._unconfirmed = self._unconfirmed or {}, {}
        for d in pending.values():
            d.errback(ChannelClosed(reason))
        for tag in self._consumer_tags:
            queue = self.client.queues.pop(tag, None)
            if queue is not None:
                queue.close()
        self._consumer_tags.clear()


class ConfirmingDelegate(TwistedDelegate):
    """
    Handles the methods the broker sends unprompted, adding publisher
    confirms, broker-initiated consumer cancellation and flow control
    notices to txAMQP's defaults.
    """

    def basic_ack(self, channel: Channel, message: Any) -> None:
        channel.confirmed(message.delivery_tag, message.multiple)

    def basic_nack(self, channel: Channel, message: Any) -> None:
        channel.refused(message.delivery_tag, message.multiple)

    def basic_cancel(self, channel: Channel, message: Any) -> None:
        """
        The broker cancelled a consumer (its queue was deleted): end the
        consumer's delivery stream so the stage re-declares and resumes.
        """
        queue = self.client.queues.pop(message.consumer_tag, None)
        if queue is not None:
            queue.close()

    def connection_blocked(self, channel: Channel, message: Any) -> None:
        log.warn("RabbitMQ blocked publishing on this connection: {reason}", reason=message.reason)

    def connection_unblocked(self, channel: Channel, message: Any) -> None:
        log.info("RabbitMQ unblocked publishing on this connection")


class AMQPClient(AMQClient):
    """
    One AMQP connection, shared by every stage of a daemon.  Each stage
    opens its own L{Channel} on it with L{open_channel}.
    """

    channelClass = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel_ids = itertools.count(1)

    def _unpack_frame(self, data: bytes) -> Any:
        return unpack_frame(self.spec, data, self.FRAME_END)

    async def open_channel(self) -> Channel:
        """
        Open a new channel with a number no other stage uses.
        """
        channel = await self.channel(next(self._channel_ids))
        await channel.channel_open()
        return channel

    def channel_failed(self, channel: Channel, reason: Any) -> None:
        log.warn(
            "AMQP channel {id} closed by the broker: {reason}",
            id=channel.id,
            reason=describe_close(reason),
        )


def describe_close(reason: Any) -> str:
    """
    Render why a channel or connection closed, in one line: the broker's
    reply code and text when it sent a close method, else the error.

    @param reason: a L{Failure}, an exception (txAMQP wraps the broker's
        close method as its first argument), or the close method itself.
    """
    if isinstance(reason, Failure):
        reason = reason.value
    for candidate in [reason, *getattr(reason, "args", ())[:1]]:
        if isinstance(candidate, Message) and len(candidate.fields) >= 2:
            return f"{candidate.fields[0]} {candidate.fields[1]}"
    return str(reason) or type(reason).__name__
