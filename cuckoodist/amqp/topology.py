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
"""

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.amqp.protocol import Channel
from cuckoodist.errors import PermanentError

__all__ = ["InvalidQueueName", "declare_queue", "declare_delay", "delay_name"]


class InvalidQueueName(PermanentError, ValueError):
    """
    A queue name we will not declare (see L{queue_name_problem}); the
    reason never quotes the name, which may come from a hostile message.
    """


async def declare_queue(channel: Channel, name: str) -> None:
    """
    Declare a durable work queue (idempotent; same arguments as the Go
    workers, which declare it with none).

    @raise InvalidQueueName: before anything is sent, for a name that
        cannot be framed or that we refuse.
    """
    problem = queue_name_problem(name)
    if problem is not None:
        raise InvalidQueueName(problem)
    await channel.queue_declare(queue=name, durable=True)


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
