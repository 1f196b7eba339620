# -*- test-case-name: tests.test_readiness,tests.test_ops_server -*-
"""
Whether the daemon is doing its job right now, and if not, why.

A daemon is I{ready} when its broker connection is up and every consumer
of every configured stage is set up on it.  Both come back on their own
after a broker outage (L{AMQPConnectionService} reconnects, each
L{QueueConsumer} opens a new channel), so readiness is read from them at
each question, never remembered: C{/readyz} and the systemd notifier ask
L{Readiness.check} and get the answer of that moment.

A consumer paused on purpose (feed_cuckoo pauses while its Cuckoo has no
room, see L{cuckoodist.stages.capacity}) is still ready: the daemon is
doing exactly what it should, and a load balancer or an operator taking it
out of service would not make Cuckoo any emptier.  It is reported as
paused, with the reason, so that a queue that grows is explained.
"""

from typing import Any, Iterator, Mapping, Sequence

import attrs
from twisted.application.service import MultiService

from cuckoodist.amqp.consumer import QueueConsumer

__all__ = ["Readiness", "Verdict", "CONSUMING", "PAUSED", "NOT_CONSUMING", "REFUSED", "NOT_RUNNING"]

#: The state of one consumer, as C{/readyz} names it.
CONSUMING = "consuming"
PAUSED = "paused"
NOT_CONSUMING = "not consuming"
REFUSED = "refused"
NOT_RUNNING = "not running"


@attrs.frozen
class Verdict:
    """
    One answer to "is the daemon ready?".

    @ivar ready: the connection is up and every consumer is set up.
    @ivar reasons: one line per thing that is wrong, each starting with
        what it is about (C{amqp:}, C{feed_cuckoo:QUEUE:}); empty when
        ready.
    @ivar stages: per consumer (C{TYPE:QUEUE}), its C{state} (one of
        L{CONSUMING}, L{PAUSED}, L{NOT_CONSUMING}, L{REFUSED},
        L{NOT_RUNNING}) and, unless consuming, a C{reason}.
    @ivar amqp: the connection's C{connected} flag and either the node it
        is connected to (C{node}) or why not (C{reason}).
    """

    ready: bool
    reasons: tuple[str, ...]
    stages: Mapping[str, Mapping[str, str]]
    amqp: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        """
        The verdict as C{/readyz} shows it.
        """
        return {
            "ready": self.ready,
            "reasons": list(self.reasons),
            "amqp": dict(self.amqp),
            "stages": {name: dict(state) for name, state in self.stages.items()},
        }

    def summary(self) -> str:
        """
        One line for a status display (systemd's C{STATUS=}).
        """
        if not self.ready:
            return "Not ready: " + "; ".join(self.reasons)
        paused = [name for name, state in self.stages.items() if state["state"] == PAUSED]
        where = f" to {self.amqp['node']}" if self.amqp.get("node") else ""
        return f"Ready: connected{where}, {len(self.stages)} consumer(s)" + (
            f", paused: {', '.join(paused)}" if paused else ""
        )


class Readiness:
    """
    Answers whether a daemon is ready, from its connection and its stages.

    @param connection: the daemon's L{AMQPConnectionService}: its
        C{connected_to} is the node while logged in, C{None} otherwise,
        and its C{last_error} says why it is not.
    @param stages: the daemon's stage services; every L{QueueConsumer}
        below each one counts (parse_and_submit has two when it cleans up).
    """

    def __init__(self, connection: Any, stages: Sequence[MultiService]) -> None:
        self._connection = connection
        self._stages = tuple(stages)

    def check(self) -> Verdict:
        """
        The daemon's readiness at this moment.
        """
        reasons: list[str] = []
        node = self._connection.connected_to
        if node is not None:
            amqp = {"connected": True, "node": node}
        else:
            why = self._connection_problem()
            amqp = {"connected": False, "reason": why}
            reasons.append(f"amqp: not connected ({why})")
        stages: dict[str, dict[str, str]] = {}
        for stage, consumer in self._consumers():
            name = f"{getattr(stage, 'kind', 'stage')}:{_queue_of(consumer)}"
            state, why = _consumer_state(stage, consumer)
            stages[name] = {"state": state} if not why else {"state": state, "reason": why}
            if state not in (CONSUMING, PAUSED):
                reasons.append(f"{name}: {state}" + (f" ({why})" if why and state != NOT_CONSUMING else ""))
        return Verdict(ready=not reasons, reasons=tuple(reasons), stages=stages, amqp=amqp)

    def _connection_problem(self) -> str:
        if not self._connection.running:
            return "stopped"
        last = getattr(self._connection, "last_error", None)
        return f"last error: {last}" if last else "connecting"

    def _consumers(self) -> Iterator[tuple[MultiService, QueueConsumer]]:
        for stage in self._stages:
            for child in stage:
                if isinstance(child, QueueConsumer):
                    yield stage, child


def _queue_of(consumer: QueueConsumer) -> str:
    """
    The queue a consumer consumes, from its service name
    (C{consumer:QUEUE}).
    """
    return (consumer.name or "").removeprefix("consumer:")


def _consumer_state(stage: Any, consumer: QueueConsumer) -> tuple[str, str]:
    """
    The state of one consumer, and why it is not simply consuming.
    """
    if consumer.refused is not None:
        return REFUSED, str(consumer.refused)
    if not consumer.running:
        return NOT_RUNNING, "the daemon is starting or stopping"
    if not consumer.consuming:
        return NOT_CONSUMING, "waiting for the broker to set up its channel and queue"
    if consumer.paused:
        return PAUSED, _pause_reason(stage)
    return CONSUMING, ""


def _pause_reason(stage: Any) -> str:
    """
    Why a stage paused its consumer.  Only feed_cuckoo pauses (its Cuckoo
    has no room: too many pending tasks, too little disk, or no status
    answer), and its capacity gate says which; it resumes by itself once a
    status probe finds room.
    """
    config = getattr(stage, "stage_config", None)
    cuckoo = getattr(config, "cuckoo", None)
    gate = getattr(stage, "gate", None)
    why = getattr(gate, "full_reason", "")
    if cuckoo:
        return f"Cuckoo {cuckoo!r} has no room ({why or 'pending tasks, free disk, or no status answer'}); resumes when it has"
    return "paused by its stage"
