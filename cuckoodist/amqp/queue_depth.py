# -*- test-case-name: tests.test_queue_depth -*-
"""
How many messages and consumers a queue has, asked without touching it.

A passive C{queue.declare} is the one AMQP question that answers with a
queue's depth and consumer count, and it never creates or changes the
queue: that is what an operator's look (C{cuckoodist status}) and the
daemon's own dashboard need, since neither may create a queue with
arguments that are not its consumer's.  The broker answers a passive
declare of a missing queue by closing the channel (404 NOT_FOUND), so
the question is asked on channels of its own, marked C{probing} so that
the close is not logged as a failure, and a fresh one is opened after
each missing queue.  Every channel opened here is closed before
L{queue_depths} returns.
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.amqp.protocol import Channel, ChannelClosed
from cuckoodist.amqp.topology import reply_code

__all__ = ["QueueDepth", "queue_depths"]

#: The reply code of a passive declare of a queue that does not exist.
_NOT_FOUND = 404


@attrs.frozen
class QueueDepth:
    """
    What the broker says of one queue.

    @ivar messages: messages ready for delivery (RabbitMQ leaves out those
        delivered and not yet acked).
    @ivar consumers: consumers attached to the queue.
    """

    messages: int
    consumers: int


async def _probing_channel(client: Any) -> Channel:
    channel = await client.open_channel()
    channel.probing = True
    return channel


async def queue_depths(client: Any, names: Iterable[str]) -> dict[str, QueueDepth | None]:
    """
    The depth and consumer count of each queue in C{names}, by passive
    declare, creating nothing.

    The queues are asked one after the other on one channel; a missing
    queue costs that channel (the broker closes it), and the next queue is
    asked on a new one.  Names given twice are asked once.

    @param client: a logged-in L{cuckoodist.amqp.protocol.AMQPClient}, the
        daemon's own or a command's.
    @param names: queue names, already checked (configuration checks the
        names it gives).
    @return: each name mapped to its L{QueueDepth}, or to C{None} when the
        queue does not exist, in the order given.
    @raise ValueError: a name is not a usable queue name; nothing was
        asked (the reason does not quote the name).
    @raise ChannelClosed: the broker refused the question for another
        reason than a missing queue (e.g. 403 ACCESS_REFUSED).
    @raise txamqp.client.Closed: the connection went away meanwhile.
    """
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        problem = queue_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
    depths: dict[str, QueueDepth | None] = {}
    channel: Channel | None = None
    try:
        for name in wanted:
            if channel is None or channel.closed:
                channel = await _probing_channel(client)
            try:
                reply = await channel.queue_declare(queue=name, passive=True)
            except ChannelClosed as e:
                if reply_code(e) != _NOT_FOUND:
                    raise
                depths[name] = None
                channel = None
                continue
            depths[name] = QueueDepth(messages=reply.message_count, consumers=reply.consumer_count)
    finally:
        if channel is not None and not channel.closed:
            await channel.channel_close()
    return depths

