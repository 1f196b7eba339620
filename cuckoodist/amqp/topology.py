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

Every queue of a daemon has one type, its top-level C{queue_type}:
C{classic} (the default: the Go workers declare classic queues without
arguments, and a declare with other arguments is refused) or C{quorum},
replicated over a cluster's nodes so that losing one node loses no queue.
Quorum queues are durable and never exclusive or auto-deleted, which is
how every queue here is declared anyway; RabbitMQ 3.10 gives them no
priorities, so configuration refuses C{max_priority} with them.  A quorum
delay queue dead-letters I{at-least-once} (C{x-dead-letter-strategy},
which needs C{x-overflow: reject-publish}): the message leaves it only once
the destination queue has confirmed it, so a node crash at that instant
cannot lose it.  Its exchange and queue are named apart from the classic
ones (L{delay_name}), so that daemons of both types can share a broker
while a fleet migrates: a queue's type cannot change, and two queues bound
to one fanout exchange would each get every delayed message.
"""

from typing import Any, Mapping

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.amqp.protocol import Channel, ChannelClosed, describe_close
from cuckoodist.errors import PermanentError

__all__ = [
    "reply_code",
    "CLASSIC",
    "QUORUM",
    "QUEUE_TYPES",
    "InvalidQueueName",
    "QueueArgumentsMismatch",
    "queue_arguments",
    "declare_queue",
    "ensure_queue",
    "declare_delay",
    "delay_arguments",
    "delay_name",
]


CLASSIC = "classic"
QUORUM = "quorum"
#: The values of the C{queue_type} key.
QUEUE_TYPES = (CLASSIC, QUORUM)


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
        if "x-queue-type" in self.broker_says:
            # The queue is of the other type (classic or quorum).
            fix = (
                "RabbitMQ cannot change a queue's type: set queue_type to the type the queue has, or "
                "migrate it: stop its producers and consumers (Go workers included), let it drain, delete it "
                "(rabbitmqctl delete_queue NAME) and restart this daemon to declare it anew, or consume a "
                "new queue name and move the old messages there with a shovel"
            )
        else:
            fix = (
                "RabbitMQ cannot change an existing queue: set max_priority to what the queue has, or stop "
                "its producers, let it drain, delete it and restart this daemon to declare it anew, or consume "
                "a new queue name and move the old messages there with a shovel"
            )
        return (
            f"queue {self.queue!r} was declared here {wanted}, but it exists with other arguments; "
            f"the broker says: {self.broker_says}.  {fix}"
        )


def queue_arguments(max_priority: int = 0, queue_type: str = CLASSIC) -> dict[str, Any]:
    """
    The arguments a work queue is declared with: C{x-max-priority} for a
    priority queue, C{x-queue-type} for a quorum queue, none otherwise (as
    the Go workers declare it).

    @raise ValueError: C{queue_type} is unknown, or a quorum queue is
        asked for priorities (configuration refuses both first).
    """
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"unknown queue type {queue_type!r}")
    arguments: dict[str, Any] = {}
    if queue_type == QUORUM:
        if max_priority:
            raise ValueError("RabbitMQ quorum queues have no priorities (x-max-priority)")
        arguments["x-queue-type"] = QUORUM
    elif max_priority:
        arguments["x-max-priority"] = max_priority
    return arguments


def delay_arguments(delay: float, queue_type: str = CLASSIC) -> dict[str, Any]:
    """
    The arguments of the queue holding messages for C{delay} seconds: its
    TTL and the default exchange to dead-letter to; a quorum one also
    dead-letters at-least-once, which RabbitMQ only does when the queue
    refuses publishes past its limits instead of dropping its head.
    """
    arguments: dict[str, Any] = {"x-message-ttl": _milliseconds(delay), "x-dead-letter-exchange": ""}
    if queue_type == QUORUM:
        arguments.update({
            "x-queue-type": QUORUM,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
    elif queue_type != CLASSIC:
        raise ValueError(f"unknown queue type {queue_type!r}")
    return arguments


def _check_name(name: str) -> None:
    problem = queue_name_problem(name)
    if problem is not None:
        raise InvalidQueueName(problem)


def reply_code(error: Exception) -> int | None:
    """
    The reply code of the broker's C{channel.close} behind C{error}.
    """
    for candidate in getattr(error, "args", ())[:1]:
        fields = getattr(candidate, "fields", None)
        if fields and isinstance(fields[0], int):
            return fields[0]
    return None


async def declare_queue(channel: Channel, name: str, max_priority: int = 0, queue_type: str = CLASSIC) -> None:
    """
    Declare a durable work queue, as its consumer, with the arguments of
    L{queue_arguments}: none for a plain classic queue, like the Go
    workers.  Idempotent while the arguments match.

    @raise InvalidQueueName: before anything is sent, for a name that
        cannot be framed or that we refuse.
    @raise QueueArgumentsMismatch: the queue exists with other arguments;
        C{channel} is closed.
    """
    _check_name(name)
    arguments = queue_arguments(max_priority, queue_type)
    try:
        await channel.queue_declare(queue=name, durable=True, arguments=arguments)
    except ChannelClosed as e:
        if reply_code(e) == 406:
            raise QueueArgumentsMismatch(name, arguments, describe_close(e)) from None
        raise


async def ensure_queue(client: Any, name: str, max_priority: int = 0, queue_type: str = CLASSIC) -> bool:
    """
    Make sure a queue exists before publishing to it, as a producer: a
    queue that exists is left as its consumer declared it, whatever its
    arguments; one that does not is created as L{declare_queue} would.
    Both steps run on a channel of their own, which the broker may close
    (404, 406) without harming the caller's.

    @param client: an L{AMQPClient}.
    @param max_priority: what this configuration says the queue's consumer
        declares, used only to create it; C{queue_type} likewise.
    @return: whether this call created the queue.
    @raise InvalidQueueName: as L{declare_queue}.
    """
    _check_name(name)
    if await _on_own_channel(client, lambda channel: channel.queue_declare(queue=name, durable=True, passive=True)):
        return False
    try:
        if await _on_own_channel(client, lambda channel: declare_queue(channel, name, max_priority, queue_type)):
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
        if reply_code(e) in (404, 406):
            return False
        raise
    if not channel.closed:
        await channel.channel_close()
    return True


def _milliseconds(delay: float) -> int:
    return max(1, round(delay * 1000))


def delay_name(delay: float, queue_type: str = CLASSIC) -> str:
    """
    The exchange and queue name for one delay length:
    C{cuckoodist.delay.<N>ms} for classic queues (as before quorum queues
    existed), C{cuckoodist.delay.quorum.<N>ms} for quorum ones.
    """
    kind = "" if queue_type == CLASSIC else f"{queue_type}."
    return f"cuckoodist.delay.{kind}{_milliseconds(delay)}ms"


async def declare_delay(channel: Channel, delay: float, queue_type: str = CLASSIC) -> str:
    """
    Declare the exchange and queue that hold messages for C{delay} seconds
    and then dead-letter them to the queue named by their routing key
    (L{delay_arguments}).

    @return: the exchange to publish delayed messages to.
    """
    name = delay_name(delay, queue_type)
    await channel.exchange_declare(exchange=name, type="fanout", durable=True)
    await channel.queue_declare(queue=name, durable=True, arguments=delay_arguments(delay, queue_type))
    await channel.queue_bind(queue=name, exchange=name, routing_key="")
    return name
