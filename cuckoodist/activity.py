# -*- test-case-name: tests.test_activity -*-
"""
What a daemon is working on right now, and what went wrong lately: the
live view behind C{/readyz}'s neighbours, the dashboard and C{status}.

Metrics answer "how many"; this answers "which".  It holds the
L{Sample} of every delivery in flight (the very objects the stages fill
in through L{cuckoodist.sample_context.identify}) and the last few
failures with their reasons.  Both are bounded by what the daemon holds
anyway: deliveries in flight are capped by the stages' prefetch counts,
and failures by L{RECENT_FAILURES}.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

import attrs

from cuckoodist.sample_context import Sample

__all__ = ["Activity", "Failure", "RECENT_FAILURES"]

#: How many failures the daemon remembers for its dashboard.
RECENT_FAILURES = 50


@attrs.frozen
class Failure:
    """
    One message a stage handed to the overseer.

    @ivar at: when, by the daemon's clock.
    @ivar final: C{True} for a permanent failure (the overseer dumps it),
        C{False} for one the overseer retries.
    """

    at: float
    stage: str
    queue: str
    analysis_id: str
    task_id: int | None
    reason: str
    final: bool


class Activity:
    """
    The deliveries in flight and the recent failures of one daemon.

    @param clock: gives C{seconds()}; the reactor, or a test's L{Clock}.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._in_flight: set[Sample] = set()
        self._failures: deque[Failure] = deque(maxlen=RECENT_FAILURES)

    @contextmanager
    def handling(self, sample: Sample) -> Iterator[Sample]:
        """
        List C{sample} as in flight for the body of the C{with} block,
        stamped with the time it started.
        """
        sample.started = self._clock.seconds()
        self._in_flight.add(sample)
        try:
            yield sample
        finally:
            self._in_flight.discard(sample)

    def failed(self, sample: Sample, reason: str, final: bool) -> None:
        """
        Remember that C{sample}'s message was handed to the overseer.
        """
        self._failures.append(Failure(
            at=self._clock.seconds(),
            stage=sample.stage,
            queue=sample.queue,
            analysis_id=sample.analysis_id,
            task_id=sample.task_id,
            reason=reason,
            final=final,
        ))

    def in_flight(self, limit: int | None = None) -> list[Sample]:
        """
        The deliveries in flight, oldest first, at most C{limit} of them.
        """
        ordered = sorted(self._in_flight, key=lambda sample: sample.started)
        return ordered if limit is None else ordered[:limit]

    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def recent_failures(self) -> list[Failure]:
        """
        The last L{RECENT_FAILURES} failures, newest first.
        """
        return list(reversed(self._failures))
