# -*- test-case-name: tests.test_config -*-
"""
The configuration keys every stage type shares, and the base of each stage
type's settings class.

Each stage module declares its own settings as a frozen attrs class of
L{cuckoodist.settings.setting} fields, starting with these: C{type},
C{consumer_queue}, C{producer_queue}, C{failed_queue} and
C{prefetch_count}, whose defaults differ from type to type.  The stage
class names it as C{config_class}, and L{cuckoodist.registry} lists the
stage classes: that is all L{cuckoodist.config.parse_config} needs to read
a C{stages} entry.
"""

from typing import Any, Mapping

from cuckoodist.settings import UINT16_MAX, Path, integer, queue, setting

__all__ = ["StageSettings", "stage_type", "consumes", "produces", "fails_to", "prefetch"]


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
