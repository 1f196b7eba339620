# -*- test-case-name: tests.test_amqp_writepath,tests.test_amqp_connection -*-
"""
The AMQP client protocol: txAMQP plus RabbitMQ publisher confirms.

txAMQP 0.8.2 can speak RabbitMQ's C{confirm.select} once the spec declares
it (see C{spec/amqp0-9-1-rabbitmq.xml}), but nothing in it receives the
broker's C{basic.ack}/C{basic.nack}.  L{ConfirmingDelegate} routes them to
the L{Channel} they belong to, and L{Channel.publish} turns each publish into
a Deferred that fires only once the broker has taken responsibility for the
message.  That Deferred is what lets a stage ack its input only after its
output is safe.

Every outgoing frame is encoded by L{cuckoodist.amqp.wire.pack_frame}, and
every method is encoded once before it is queued, so a value that cannot
be framed fails the call that sent it (with L{UnframeableValue}) instead of
the writer.  Should the writer fail anyway, the transport is aborted: a
connection that can no longer write must look dead, so that the connection
service reconnects and consumers resume, rather than stay up and silent.
"""

import itertools
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed, Closed, TwistedDelegate
from txamqp.connection import Frame, Header, Method
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, AMQClient

from cuckoodist.amqp.wire import UnframeableValue, pack_frame, unpack_frame
from cuckoodist.handoff import HandoffLock

__all__ = ["AMQPClient", "Channel", "PublishNacked", "Closed", "ChannelClosed", "UnframeableValue"]

log = Logger()

PERSISTENT = 2
#: Channel numbers are 16 bits; 0 is the connection's own.
_MAX_CHANNEL = 65535


class PublishNacked(Exception):
    """
    The broker refused responsibility for a published message (an internal
    error in the queue process).  The publisher must treat the message as
    not sent.
    """


def _answered(method: Any, args: Any) -> bool:
    """
    Whether the broker answers C{method} with C{args} and the answer is
    awaited under the channel's lock (see L{Channel.invoke}): not for
    C{nowait}, nor for the C{connection} and C{channel} classes' own
    methods (the handshake, and closing), which must never wait behind an
    answer that may not come.
    """
    if not method.responses or method.klass.name in ("connection", "channel"):
        return False
    field = method.fields.byname.get("nowait")
    return field is None or not args[method.fields.index(field)]


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
        #: Held by the method awaiting the broker's answer (see L{invoke});
        #: a L{HandoffLock}, so that a long queue of methods cancelled while
        #: they waited (a drain) is let go in a loop, not nested.
        self._answered_methods = HandoffLock()
        #: Set on a channel opened to ask a question the broker answers by
        #: closing it (does this queue exist?): that close is no problem.
        self.probing = False

    def check_frames(self, method: Any, args: Any, content: Content | None = None) -> None:
        """
        Encode C{method} (and its content header) without sending it.

        @raise UnframeableValue: it cannot be framed.
        """
        self.client.pack_frame(Frame(self.id, Method(method, *args)))
        if content is not None:
            self.client.pack_frame(Frame(self.id, Header(method.klass, content.weight(), content.size(), **content.properties)))

    def invoke(self, method: Any, args: Any, content: Content | None = None) -> Deferred:
        """
        Send a method, after checking that it can be framed: a frame that
        fails in the writer would take the whole connection down.

        A method the broker answers waits until the channel's previous
        such method has had its answer.  txAMQP matches answers to
        waiting methods in the order the methods were sent, but RabbitMQ
        does not always answer in that order: a classic queue's process,
        not the channel, sends C{basic.cancel-ok}, so a C{queue.bind} sent
        just after a C{basic.cancel} can be answered first, and each
        method then received the other's answer and failed.  One answered
        method at a time per channel is what AMQP clients do anyway.
        C{connection.*} and C{channel.*} methods are exempt, so that
        closing a channel or the connection never waits behind a method
        whose answer will not come.

        Cancelling the result only stops the caller waiting.  A method
        still queued behind another is then not sent at all; one already
        sent keeps its place and its reply, which is dropped (cancelling
        it outright would hand its late reply to the next method).

        @return: a Deferred firing with the reply, or failing with
            L{UnframeableValue} when nothing was sent.
        """
        try:
            self.check_frames(method, args, content)
        except UnframeableValue:
            return fail()
        waiting = Deferred(lambda _: None)

        def settle(outcome: Any) -> None:
            if not waiting.called:
                (waiting.errback if isinstance(outcome, Failure) else waiting.callback)(outcome)

        if not _answered(method, args):
            sent = super().invoke(method, args, content)
            if method.klass.name == "channel" and method.name == "close":
                # Closed by us: mark it so, for open_channel to reuse its number.
                sent.addCallback(lambda reply: (self.close(None), reply)[1])
            sent.addBoth(settle)
            return waiting

        def send(_: object) -> None:
            if waiting.called:
                self._answered_methods.release()  # cancelled while queued: never sent
                return

            def done(outcome: Any) -> None:
                self._answered_methods.release()
                settle(outcome)

            super(Channel, self).invoke(method, args, content).addBoth(done)

        self._answered_methods.acquire().addCallback(send)
        return waiting

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
        priority: int | None = None,
    ) -> Deferred:
        """
        Publish a persistent message and return a Deferred that fires when
        the broker confirms it.

        @raise RuntimeError: if confirms were not enabled; publishing
            without them would silently give up the delivery guarantee.
        @return: a Deferred firing with C{None} on broker ack, failing with
            L{PublishNacked} on nack, with L{Closed} if the channel dies
            first (the message may or may not have been taken), or with
            L{UnframeableValue} (nothing was sent) when the routing key or
            exchange cannot be framed, or with C{ValueError} (nothing was
            sent) for a priority that is not an octet.
        @param priority: the message's C{priority} property (0..255), or
            C{None} for none; only a queue declared with C{x-max-priority}
            orders by it, others ignore it.
        """
        if self._unconfirmed is None:
            raise RuntimeError("publish() needs enable_confirms() first")
        if self.closed:
            self._raise_closed(self.reason)
        properties: dict[str, Any] = {"delivery-mode": PERSISTENT, "content-type": content_type}
        if priority is not None:
            if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
                return fail(ValueError(f"an AMQP priority is an integer from 0 to 255, got {priority!r}"))
            properties["priority"] = priority
        content = Content(body, properties=properties)
        sent = self.basic_publish(exchange=exchange, routing_key=routing_key, content=content)
        if isinstance(getattr(sent, "result", None), Failure):
            # Refused before anything was written: the broker's numbering
            # has not moved, so neither does ours.
            return sent
        sequence = next(self._sequence)
        confirmed = Deferred()
        self._unconfirmed[sequence] = confirmed
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

    @property
    def confirms_pending(self) -> int:
        """
        Publishes on this channel the broker has neither acked nor nacked.
        """
        return len(self._unconfirmed) if self._unconfirmed else 0

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


#: What we tell the broker we understand.  Without these capabilities
#: RabbitMQ sends no C{basic.cancel} when a consumed queue is deleted, no
#: C{connection.blocked}, and answers a refused login by dropping the
#: socket instead of saying C{403 ACCESS_REFUSED}.
CLIENT_PROPERTIES = {
    "product": "cuckoodist",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
    },
}


class ConfirmingDelegate(TwistedDelegate):
    """
    Handles the methods the broker sends unprompted, adding publisher
    confirms, broker-initiated consumer cancellation and flow control
    notices to txAMQP's defaults.
    """

    def connection_start(self, channel: Channel, message: Any) -> None:
        channel.connection_start_ok(
            client_properties=CLIENT_PROPERTIES,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def connection_close(self, channel: Channel, message: Any) -> None:
        """
        The broker closes the connection (an operator's
        C{close_connection}, a node shutting down): keep its reason, the
        only place it is said, for the connection service to report
        rather than the clean TCP close that follows.
        """
        self.client.closed_by_broker = message
        super().connection_close(channel, message)

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
        self.logged_in = False
        #: The broker's C{connection.close}, when it closed the connection.
        self.closed_by_broker: Message | None = None

    @property
    def confirms_pending(self) -> int:
        """
        Publishes on every channel of this connection that the broker has
        not confirmed yet: what the daemon waits for before it can ack.
        """
        return sum(getattr(channel, "confirms_pending", 0) for channel in list(self.channels.values()))

    def mark_logged_in(self) -> None:
        """
        The vhost is open: from now on a lost connection is a lost
        connection, not a failed login.
        """
        self.logged_in = True

    def reschedule_send_heartbeat(self) -> None:
        """
        Restart the heartbeat timer after a frame was sent, unless the
        connection is gone: a frame written after the loss (the answer to
        a broker's C{connection.close} dispatched after the socket closed,
        a frame still queued) restarted the loop that C{connectionLost}
        had stopped, and it ran for as long as the process did.
        """
        if not self.closed:
            super().reschedule_send_heartbeat()

    def lost_during_login(self, reason: Any) -> None:
        """
        The connection went away before the login finished: fail the login
        (and anything waiting on the connection) without reporting a lost
        connection to the connection service.
        """
        AMQClient.connectionLost(self, reason)

    def _unpack_frame(self, data: bytes) -> Any:
        return unpack_frame(self.spec, data, self.FRAME_END)

    def _pack_frame(self, frame: Frame) -> bytes:
        return pack_frame(self.spec, frame, self.FRAME_END)

    def pack_frame(self, frame: Frame) -> bytes:
        """
        Encode C{frame} as it would be written.

        @raise UnframeableValue: it cannot be framed.
        """
        return self._pack_frame(frame)

    def writer(self, frame: Frame) -> None:
        """
        Write one queued frame.  txAMQP's writer stops for good on the first
        error, leaving a connection that only sends heartbeats; here an
        error aborts the connection instead, which is then seen as lost.
        """
        try:
            self.send_frame(frame)
        except Exception:
            log.failure("Could not write an AMQP frame; dropping the connection to recover")
            if self.transport is not None:
                self.transport.abortConnection()
        finally:
            self.outgoing.get().addCallback(self.writer)

    async def open_channel(self) -> Channel:
        """
        Open a new channel, numbered with the lowest number no open
        channel uses.

        txAMQP keeps every channel it ever made in C{channels}, and a
        channel number is 16 bits: numbering on and on, a daemon that
        opens a channel per probe (the dashboard's queue depths, every few
        seconds) ran out after days, and then no stage could reopen its
        channel.  Closed channels are dropped from the table and their
        numbers given out again.  Picking the number and entering the
        channel in the table happen in one step, so two openings never
        pick the same number.
        """
        for number, known in list(self.channels.items()):
            if known.closed:
                del self.channels[number]
        number = 1
        while number in self.channels:
            number += 1
        if number > _MAX_CHANNEL:
            raise RuntimeError(f"all {_MAX_CHANNEL} AMQP channels of this connection are open")
        channel = self.channels[number] = self.channelFactory(number, self.outgoing, self)
        await channel.channel_open()
        return channel

    def channel_failed(self, channel: Channel, reason: Any) -> None:
        if channel.probing:
            return  # the broker's answer to a question, not a failure
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
