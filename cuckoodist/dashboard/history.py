# -*- test-case-name: tests.test_dashboard_history -*-
"""
The last hour of the daemon's work, for the dashboard's charts and rates.

Every C{interval} seconds a L{History} reads the counters the daemon
keeps anyway (L{cuckoodist.metrics.Metrics}: each stage's succeeded and
failed messages, the end-to-end latency histogram) and turns their
change since the last reading into one point: throughput, mean latency,
and the queue depths a L{QueueSampler} fetched.  A ring of
C{size} points (360 of 10 s: an hour) is all it keeps, so a page poll
costs a copy of at most that many points, whatever the traffic.

Counters rather than events: the stages count every message already, and
a history fed by events would put a cost on every delivery for the sake
of a page nobody may be looking at.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Sequence

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cuckoodist.amqp.queue_depth import QueueDepth

__all__ = ["History", "INTERVAL", "SIZE", "RATE_WINDOW"]

log = Logger()

#: Seconds between two points.
INTERVAL = 10.0
#: Points kept: an hour of them.
SIZE = 360
#: How many intervals the stages table's rates are averaged over: a
#: minute, so that one busy interval does not make the rate jump.
RATE_WINDOW = 6


def _by_stage(metric: Any, suffix: str = "_total") -> dict[str, float]:
    """
    A labelled counter's values summed by C{queue} label (over any other
    label, such as the failure kind).  Reads only this metric's own
    samples: O(its label sets), never the whole registry.
    """
    totals: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                queue = sample.labels.get("queue", "")
                totals[queue] = totals.get(queue, 0.0) + sample.value
    return totals


def _sum_count(histogram: Any) -> tuple[float, float]:
    """
    The C{_sum} and C{_count} of an unlabelled histogram.
    """
    total = count = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


class _Reading:
    """
    The counters at one instant.
    """

    def __init__(self, at: float, metrics: Any) -> None:
        self.at = at
        self.succeeded = _by_stage(metrics.succeeded)
        self.failed = _by_stage(metrics.failed)
        self.latency_sum, self.latency_count = _sum_count(metrics.end_to_end_seconds)


def _rate(new: Mapping[str, float], old: Mapping[str, float], key: str, seconds: float) -> float:
    return max(0.0, new.get(key, 0.0) - old.get(key, 0.0)) / seconds


class History:
    """
    A ring of points, one per C{interval}, and the per-stage rates.

    @param clock: schedules the readings and stamps them.
    @param metrics: the daemon's L{cuckoodist.metrics.Metrics}.
    @param queues: the consumer queues of the daemon's stages.
    @param sampler: a L{cuckoodist.dashboard.queues.QueueSampler} asked
        for the queue depths at each point, or C{None} for none.
    """

    def __init__(
        self,
        clock: Any,
        metrics: Any,
        queues: Sequence[str],
        sampler: Any = None,
        interval: float = INTERVAL,
        size: int = SIZE,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._queues = tuple(dict.fromkeys(queues))
        self._sampler = sampler
        self.interval = interval
        self._points: deque[dict[str, Any]] = deque(maxlen=size)
        self._readings: deque[_Reading] = deque(maxlen=RATE_WINDOW + 1)
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Take a reading now and one every C{interval} seconds after.
        """
        if not self._loop.running:
            self._loop.start(self.interval, now=True).addErrback(lambda f: log.failure("Dashboard history failed", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._sampler is not None:
            self._sampler.stop()

    def sample(self) -> None:
        """
        Read the counters and append a point: throughput and latency since
        the last reading (C{None} for the first, which has nothing to
        compare with, and latency C{None} when no analysis finished), and
        the queue depths, filled in when the broker answers.
        """
        reading = _Reading(self._clock.seconds(), self._metrics)
        last = self._readings[-1] if self._readings else None
        self._readings.append(reading)
        throughput = latency = None
        if last is not None and reading.at > last.at:
            seconds = reading.at - last.at
            throughput = sum(_rate(reading.succeeded, last.succeeded, queue, seconds) for queue in reading.succeeded)
            finished = reading.latency_count - last.latency_count
            if finished > 0:
                latency = (reading.latency_sum - last.latency_sum) / finished
        point: dict[str, Any] = {
            "t": reading.at,
            "throughput": throughput,
            "latency": latency,
            "queues": self._depths(self._sampler.latest if self._sampler is not None else {}),
        }
        self._points.append(point)
        if self._sampler is not None:
            self._sampler.refresh(lambda depths: point.update(queues=self._depths(depths)))

    def _depths(self, depths: Mapping[str, QueueDepth | None]) -> dict[str, int | None]:
        shown = {}
        for queue in self._queues:
            depth = depths.get(queue)
            shown[queue] = depth.messages if depth is not None else None
        return shown

    def points(self) -> list[dict[str, Any]]:
        """
        The points of the last hour, oldest first (copies).
        """
        return [{**point, "queues": dict(point["queues"])} for point in self._points]

    def rates(self, queue: str) -> tuple[float | None, float | None]:
        """
        Messages per second a stage finished and failed, averaged over the
        last L{RATE_WINDOW} intervals (or as many as there are), C{None}
        before two readings.
        """
        if len(self._readings) < 2:
            return None, None
        old, new = self._readings[0], self._readings[-1]
        seconds = new.at - old.at
        if seconds <= 0:
            return None, None
        return _rate(new.succeeded, old.succeeded, queue, seconds), _rate(new.failed, old.failed, queue, seconds)

    def document(self) -> dict[str, Any]:
        """
        What C{/dashboard/api/history} answers.
        """
        return {"interval": self.interval, "points": self.points()}
