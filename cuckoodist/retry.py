# -*- test-case-name: tests.test_feed_upload -*-
"""
Retrying transient failures inside a stage, before giving up to the
overseer.

A Cuckoo that restarts or a CRITs behind a busy web server fails for a few
seconds; failing the whole message for that would send it through the
overseer's minutes-long backoff.  So each HTTP step is tried a few times
with a short exponential backoff, and only L{TransientError}s are retried:
a L{PermanentError} means retrying cannot help.
"""

from typing import Awaitable, Callable, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from cuckoodist.errors import TransientError

__all__ = ["retrying"]

log = Logger()

T = TypeVar("T")


async def retrying(
    clock: IReactorTime,
    step: Callable[[], Awaitable[T]],
    what: str,
    attempts: int = 4,
    base_delay: float = 1.0,
    max_delay: float = 15.0,
    retry_on: type[TransientError] | tuple[type[TransientError], ...] = TransientError,
) -> T:
    """
    Run C{step} until it succeeds, retrying L{TransientError}s up to
    C{attempts} times in all, waiting C{base_delay} * 2**n seconds between.

    @param what: names the step (with the analysis and task ids) in logs.
    @param retry_on: the transient errors worth retrying here; a step that
        must not run twice narrows it to L{cuckoodist.http.NotSent}, and
        its other transient errors then fail at once.
    @raise TransientError: the last transient failure, once attempts run out.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except retry_on as e:
            if attempt == attempts:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            log.info(
                "{what}: {why}; retry {n} of {m} in {s:g} s",
                what=what,
                why=e.reason,
                n=attempt,
                m=attempts - 1,
                s=delay,
            )
            await deferLater(clock, delay, lambda: None)
    raise AssertionError("unreachable")
