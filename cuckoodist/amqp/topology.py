# -*- test-case-name: tests.test_amqp_writepath -*-
"""
Queue and delay declarations.

Every work queue is durable on the default exchange, as in the original Go
workers, so that old and new workers share queues.  Delays are held by the
broker, not by a process: a message to be seen again in N seconds is
published to a fanout exchange C{cuckoodist.delay.<N>ms} whose only queue
has C{x-message-ttl} N and dead-letters to the default exchange.  Because
the dead-lettered message keeps the routing key it was published with, one
delay queue serves every destination queue.  RabbitMQ only expires messages
at the head of a queue, so each delay length gets its own queue: mixing
TTLs in one queue would make short delays wait behind long ones.

A work queue's arguments belong to its consumer.  A stage with
C{max_priority} declares its queue with C{x-max-priority}; without it, with
no arguments, as the Go workers do.  RabbitMQ refuses (406, closing the
channel) to declare an existing queue with other arguments, so:

  - the consumer's declare (L{declare_queue}) turns that refusal into
    L{QueueArgumentsMismatch}, which says what the queue has and how to
    migrate, and the consumer stops instead of retrying;
  - a producer never asserts arguments on a queue that exists: it checks
    with a passive declare on a channel of its own (L{ensure_queue}) and
    publishes to the queue as it is; only a queue that does not exist yet
    is created, with the arguments the producer's configuration gives its
    consumer (none if this configuration does not consume it).
"""

from typing import Any, Mapping

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.amqp.protocol import Channel, ChannelClosed, describe_close
from cuckoodist.errors import PermanentError

__all__ = [
    "InvalidQueueName",
    "QueueArgumentsMismatch",
    "queue_arguments",
    "declare_queue",
    "ensure_queue",
    "declare_delay",
    "delay_name",
]


class InvalidQueueName(PermanentError, ValueError):
    """
    A queue name we will not declare (see L{queue_name_problem}); the
    reason never quotes the name, which may come from a hostile message.
    """


class QueueArgumentsMismatch(Exception):
    """
    RabbitMQ refused to declare a queue because it exists with other
    arguments (406 PRECONDITION_FAILED; the channel is closed).  Retrying
    cannot help: RabbitMQ never changes the arguments of an existing queue.

    @ivar queue: the queue's name.
    @ivar wanted: the arguments we declared it with.
    @ivar broker_says: the broker's reply, which names the first argument
        that differs and its current value.
    """

    def __init__(self, queue: str, wanted: Mapping[str, Any], broker_says: str) -> None:
        super().__init__(queue, dict(wanted), broker_says)
        self.queue = queue
        self.wanted = dict(wanted)
        self.broker_says = broker_says

    def __str__(self) -> str:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(self.wanted.items()))
        wanted = f"with {wanted}" if wanted else "without arguments (no priorities)"
        return (
            f"queue {self.queue!r} was declared here {wanted}, but it exists with other arguments; "
            f"the broker says: {self.broker_says}.  RabbitMQ cannot change an existing queue: "
            "set max_priority to what the queue has, or stop its producers, let it drain, delete it "
            "and restart this daemon to declare it anew, or consume a new queue name and move the old "
            "messages there with a shovel"
        )


def queue_arguments(max_priority: int = 0) -> dict[str, Any]:
    """
    The arguments a work queue is declared with: C{x-max-priority} for a
    priority queue, none otherwise (as the Go workers declare it).
    """
    return {"x-max-priority": max_priority} if max_priority else {}


def _check_name(name: str) -> None:
    problem = queue_name_problem(name)
    if problem is not None:
        raise InvalidQueueName(problem)


def _reply_code(error: Exception) -> int | None:
    """
    The reply code of the broker's C{channel.close} behind C{error}.
    """
    for candidate in getattr(error, "args", ())[:1]:
        fields = getattr(candidate, "fields", None)
        if fields and isinstance(fields[0], int):
            return fields[0]
    return None


async def declare_queue(channel: Channel, name: str, max_priority: int = 0) -> None:
    """
    Declare a durable work queue, as its consumer: with C{x-max-priority}
    when C{max_priority} is set, else with no arguments, like the Go
    workers.  Idempotent while the arguments match.

    @raise InvalidQueueName: before anything is sent, for a name that
        cannot be framed or that we refuse.
    @raise QueueArgumentsMismatch: the queue exists with other arguments;
        C{channel} is closed.
    """
    _check_name(name)
    arguments = queue_arguments(max_priority)
    try:
        await channel.queue_declare(queue=name, durable=True, arguments=arguments)
    except ChannelClosed as e:
        if _reply_code(e) == 406:
            raise QueueArgumentsMismatch(name, arguments, describe_close(e)) from None
        raise


async def ensure_queue(client: Any, name: str, max_priority: int = 0) -> bool:
    """
    Make sure a queue exists before publishing to it, as a producer: a
    queue that exists is left as its consumer declared it, whatever its
    arguments; one that does not is created as L{declare_queue} would.
    Both steps run on a channel of their own, which the broker may close
    (404, 406) without harming the caller's.

    @param client: an L{AMQPClient}.
    @param max_priority: what this configuration says the queue's consumer
        declares, used only to create it.
    @return: whether this call created the queue.
    @raise InvalidQueueName: as L{declare_queue}.
    """
    _check_name(name)
    if await _on_own_channel(client, lambda channel: channel.queue_declare(queue=name, durable=True, passive=True)):
        return False
    try:
        if await _on_own_channel(client, lambda channel: declare_queue(channel, name, max_priority)):
            return True
    except QueueArgumentsMismatch:
        pass  # its consumer declared it meanwhile, with its own arguments
    return False


async def _on_own_channel(client: Any, declare: Any) -> bool:
    """
    Run C{declare} on a new channel, closed afterwards.

    @return: C{False} if the broker answered 404 or 406 (closing the channel).
    """
    channel = await client.open_channel()
    channel.probing = True
    try:
        await declare(channel)
    except ChannelClosed as e:
        if _reply_code(e) in (404, 406):
            return False
        raise
    if not channel.closed:
        await channel.channel_close()
    return True


def delay_name(delay: float) -> str:
    """
    The exchange and queue name for one delay length.
    """
    return f"cuckoodist.delay.{max(1, round(delay * 1000))}ms"


async def declare_delay(channel: Channel, delay: float) -> str:
    """
    Declare the exchange and queue that hold messages for C{delay} seconds
    and then dead-letter them to the queue named by their routing key.

    @return: the exchange to publish delayed messages to.
    """
    name = delay_name(delay)
    await channel.exchange_declare(exchange=name, type="fanout", durable=True)
    await channel.queue_declare(
        queue=name,
        durable=True,
        arguments={
            "x-message-ttl": max(1, round(delay * 1000)),
            "x-dead-letter-exchange": "",
        },
    )
    await channel.queue_bind(queue=name, exchange=name, routing_key="")
    return name
