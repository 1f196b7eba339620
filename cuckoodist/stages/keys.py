# -*- test-case-name: tests.test_config -*-
"""
The configuration keys every stage type shares, and the base of each stage
type's settings class.

Each stage module declares its own settings as a frozen attrs class of
L{cuckoodist.settings.setting} fields, starting with these: C{type},
C{consumer_queue}, C{producer_queue}, C{failed_queue} and
C{prefetch_count}, whose defaults differ from type to type, and, for the
stages that consume requests or tasks, C{max_priority}.  The stage
class names it as C{config_class}, and L{cuckoodist.registry} lists the
stage classes: that is all L{cuckoodist.config.parse_config} needs to read
a C{stages} entry.
"""

from typing import Any, Mapping

from cuckoodist.settings import UINT16_MAX, Path, integer, queue, setting

__all__ = ["StageSettings", "stage_type", "consumes", "produces", "fails_to", "prefetch", "priorities", "max_priorities"]

#: RabbitMQ holds a queue's C{x-max-priority} in one byte.
MAX_PRIORITY = 255


class StageSettings:
    """
    What every stage type's settings class can do besides holding values.
    """

    def check(self, path: Path, cuckoos: Mapping[str, Any]) -> None:
        """
        Check what involves more than one key, or the rest of the
        configuration, once every key has been read.

        @param path: the key path of this stage's entry.
        @param cuckoos: the configured Cuckoo instances by name.
        @raise ConfigError: naming the offending key.
        """


def stage_type(name: str) -> Any:
    """
    The C{type} key: set by the reader from the entry, and the name under
    which the stage type is known (C{Stage.kind}).
    """
    return setting(name, None)


def consumes(default: str) -> Any:
    """
    The C{consumer_queue} key.
    """
    return setting(default, queue(empty=False))


def produces(default: str, *, may_end: bool = False) -> Any:
    """
    The C{producer_queue} key.

    @param may_end: C{""} is allowed, meaning "the end of the chain".
    """
    return setting(default, queue(empty=may_end))


def fails_to() -> Any:
    """
    The C{failed_queue} key: where failures go for the overseer.
    """
    return setting("worker/failed", queue(empty=False))


def prefetch(default: int) -> Any:
    """
    The C{prefetch_count} key: deliveries in flight at once (an unsigned
    16-bit field in AMQP).
    """
    return setting(default, integer(1, UINT16_MAX))


def priorities() -> Any:
    """
    The C{max_priority} key: 0 (the default) for a plain queue, else the
    stage declares its C{consumer_queue} with C{x-max-priority} set to it,
    and the broker delivers messages with a higher C{priority} property
    first (above it they count as it; without one, as 0).  Requests carry
    Cuckoo's priorities, 1 to 3, so 3 is enough; RabbitMQ recommends at
    most 10, each level costs it memory and CPU.  An existing queue keeps
    the arguments it was created with: changing this key means migrating
    the queue (see C{docs/architecture.md}), and Go workers, which declare
    their queue without arguments, cannot share a priority queue.  Quorum
    queues have no priorities: with C{queue_type: quorum} the key must stay
    0 (L{cuckoodist.config.parse_config} refuses anything else).
    """
    return setting(0, integer(0, MAX_PRIORITY))


def max_priorities(config: Any) -> dict[str, int]:
    """
    Queue -> the C{max_priority} its consumer has in C{config}, for every
    queue a configured stage consumes: what a producer in this daemon
    creates a missing queue with, so that its consumer's declare agrees.
    """
    return {stage.consumer_queue: getattr(stage, "max_priority", 0) for stage in config.stages}
