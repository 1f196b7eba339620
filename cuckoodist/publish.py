# -*- test-case-name: tests.test_resubmit,tests.test_e2e -*-
"""
Publishing a batch of messages so that none is lost: what the CRITs-side
service, C{cuckoodist demo}, C{submit} and C{resubmit} need.

Messages are published persistent, with publisher confirms, in windows.
A message counts as sent only once the broker confirms it; if the
connection drops first, every unconfirmed message is published again on
the next connection.  A receiver may therefore see a duplicate, never a
gap.
"""

from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from twisted.internet.defer import Deferred, DeferredList, TimeoutError as DeferredTimeout
from twisted.logger import Logger

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.protocol import Closed, PublishNacked, describe_close
from cuckoodist.amqp.topology import ensure_queue

__all__ = ["publish_confirmed", "with_connection"]

#: Seconds closing a command's connection may take before we stop waiting.
CLOSE_TIMEOUT = 10.0

_T = TypeVar("_T")

log = Logger()


async def publish_confirmed(
    connection: object,
    messages: Sequence[tuple[str, bytes]],
    on_confirmed: Callable[[int], object] | None = None,
    window: int = 256,
    max_priorities: Mapping[str, int] | None = None,
    priorities: Sequence[int | None] | None = None,
) -> None:
    """
    Publish C{(queue, body)} pairs until the broker has confirmed them all.

    @param connection: an L{AMQPConnectionService}; reconnects are awaited.
    @param on_confirmed: called with each message's index once confirmed
        (e.g. to delete a dump file only after its message is safe).
    @param window: how many publishes may await their confirm at once.
    @param max_priorities: queue -> C{max_priority} of its consumer, used
        only to create a queue that does not exist; an existing queue is
        published to as it is, priority queue or not
        (L{cuckoodist.amqp.topology.ensure_queue}), as the type of
        queue C{connection} was configured for (C{queue_type}).
    @param priorities: each message's AMQP C{priority} property, C{None}
        for none; by default no message has one.
    """
    pending = list(range(len(messages)))
    while pending:
        client = await connection.whenConnected()
        try:
            channel = await client.open_channel()
            await channel.enable_confirms()
            for queue in sorted({messages[i][0] for i in pending}):
                await ensure_queue(
                    client, queue, (max_priorities or {}).get(queue, 0), connection.queue_type
                )
            while pending:
                batch, rest = pending[:window], pending[window:]
                results = await DeferredList(
                    [channel.publish(messages[i][0], messages[i][1], priority=priorities[i] if priorities else None)
                     for i in batch],
                    consumeErrors=True,
                )
                failed = [i for i, (ok, _) in zip(batch, results) if not ok]
                for i, (ok, _) in zip(batch, results):
                    if ok and on_confirmed is not None:
                        on_confirmed(i)
                pending = failed + rest
                if failed:
                    raise PublishNacked(f"{len(failed)} publish(es) not confirmed")
            await channel.channel_close()
        except (Closed, PublishNacked) as e:
            log.warn("Publishing interrupted ({why}); {n} message(s) will be published again", why=describe_close(e), n=len(pending))


async def with_connection(
    reactor: Any,
    amqp: Any,
    work: Callable[[Any], Awaitable[_T]],
    timeout: float,
    queue_type: str | None = None,
    connection_log: Logger | None = None,
) -> _T:
    """
    Run C{work} on a connection of its own, as a command does: opened to
    C{amqp}, given at most C{timeout} seconds (connecting included, so an
    absent broker is a bounded wait, never a hang), and closed afterwards
    whatever happened, waiting at most L{CLOSE_TIMEOUT} for that.

    @param amqp: an L{AmqpConfig}, or the nodes of a cluster.
    @param work: called with the L{AMQPConnectionService}; typically
        L{publish_confirmed}.
    @param queue_type: the configuration's C{queue_type}, if any.
    @param connection_log: where the connection reports its state changes.
    @return: what C{work} returned.
    @raise twisted.internet.defer.TimeoutError: C{work} did not end in time.
    """
    options: dict[str, Any] = {"log": connection_log}
    if queue_type is not None:
        options["queue_type"] = queue_type
    connection = AMQPConnectionService(reactor, amqp, **options)
    connection.startService()
    try:
        return await Deferred.fromCoroutine(_awaited(work(connection))).addTimeout(timeout, reactor)
    finally:
        try:
            await connection.stopService().addTimeout(CLOSE_TIMEOUT, reactor)
        except DeferredTimeout:
            pass


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable
