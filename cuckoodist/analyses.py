# -*- test-case-name: tests.test_dashboard -*-
"""
The analyses this daemon is carrying, between deliveries too.

A delivery is in a stage's hands for moments: an upload, one check, one
report.  The analysis itself spends most of its life waiting, in Cuckoo
and in check_results' delay queues, where no stage holds it.  The
dashboard's "analyses in flight" are therefore those this daemon has
seen and not yet seen leave: a L{AnalysisBoard} hears of every delivery
a stage ends (L{passed}, L{failed}) and remembers, per CRITs analysis id,
what it knows (sample name, Cuckoo node and task), the stage the analysis
is at, when this daemon first saw it and when last.

An analysis leaves the board when parse_and_submit finished it, when a
stage failed it for good (the overseer dumps it), when the overseer took
it (a retry brings it back), when it is passed to a stage type this
daemon does not run, or when no stage has seen it for L{FORGET_AFTER}
seconds (another daemon carries it on).  The board is bounded: at most
L{CAPACITY} analyses, the longest unseen dropped first.  Every operation
is O(1) but the expiry, which is O(analyses expired).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import attrs

__all__ = ["AnalysisBoard", "Seen", "analysis_board", "CAPACITY", "FORGET_AFTER", "UNSEEN_STALL"]

#: The most analyses remembered.
CAPACITY = 10_000
#: Seconds after which an analysis no stage has seen is stalled: longer
#: than check_results ever leaves a task between two checks (its views of
#: an overdue task come at most an hour apart).
UNSEEN_STALL = 3600.0 + 600.0
#: Seconds after which it is forgotten.
FORGET_AFTER = 2 * UNSEEN_STALL
#: Where an analysis is after a stage of this type passed it on.
_NEXT = {"feed_cuckoo": "check_results", "check_results": "check_results"}


@attrs.define
class Seen:
    """
    What the daemon knows of one analysis.

    @ivar stage: the stage type it is at (or waits for).
    @ivar first_seen: when this daemon first saw it.
    @ivar last_seen: when a stage last ended a delivery of it.
    """

    analysis_id: str
    sample_name: str
    cuckoo: str
    task_id: int | None
    stage: str
    first_seen: float
    last_seen: float


class AnalysisBoard:
    """
    The analyses a daemon carries.

    @param clock: stamps the sightings.
    @param kinds: the stage types this daemon runs.
    """

    def __init__(
        self, clock: Any, kinds: Iterable[str], capacity: int = CAPACITY, forget_after: float = FORGET_AFTER
    ) -> None:
        self._clock = clock
        self._kinds = frozenset(kinds)
        self._capacity = capacity
        self._forget_after = forget_after
        #: By first sighting: the oldest first.
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        #: By last sighting: the longest unseen first.
        self._recent: OrderedDict[str, None] = OrderedDict()

    def passed(self, sample: Any) -> None:
        """
        A stage finished its delivery of C{sample}'s analysis.
        """
        stage = _NEXT.get(sample.stage)
        if stage is None or stage not in self._kinds:
            self._drop(sample.analysis_id)
        else:
            self._note(sample, stage)

    def failed(self, sample: Any, final: bool) -> None:
        """
        A stage handed C{sample}'s analysis to the overseer: for good, or
        for a retry at the same stage.
        """
        if final or "overseer" not in self._kinds:
            self._drop(sample.analysis_id)
        else:
            self._note(sample, sample.stage)

    def _note(self, sample: Any, stage: str) -> None:
        analysis_id = sample.analysis_id
        if not analysis_id:
            return
        now = self._clock.seconds()
        self._expire(now)
        seen = self._seen.get(analysis_id)
        if seen is None:
            if len(self._seen) >= self._capacity:
                oldest, _ = self._recent.popitem(last=False)
                del self._seen[oldest]
            seen = self._seen[analysis_id] = Seen(analysis_id, "", "", None, stage, now, now)
        seen.stage = stage
        seen.last_seen = now
        seen.sample_name = sample.sample_name or seen.sample_name
        seen.cuckoo = sample.cuckoo or seen.cuckoo
        seen.task_id = sample.task_id if sample.task_id is not None else seen.task_id
        self._recent[analysis_id] = None
        self._recent.move_to_end(analysis_id)

    def _drop(self, analysis_id: str) -> None:
        if self._seen.pop(analysis_id, None) is not None:
            del self._recent[analysis_id]

    def _expire(self, now: float) -> None:
        while self._recent:
            analysis_id = next(iter(self._recent))
            if now - self._seen[analysis_id].last_seen <= self._forget_after:
                return
            self._drop(analysis_id)

    def get(self, analysis_id: str) -> Seen | None:
        return self._seen.get(analysis_id)

    def oldest(self, limit: int) -> list[Seen]:
        """
        The analyses first seen longest ago, at most C{limit} of them.
        """
        self._expire(self._clock.seconds())
        shown = []
        for seen in self._seen.values():
            if len(shown) >= limit:
                break
            shown.append(seen)
        return shown

    def ids(self) -> Iterable[str]:
        return self._seen.keys()

    def __len__(self) -> int:
        return len(self._seen)


def analysis_board(context: Any) -> AnalysisBoard:
    """
    The one L{AnalysisBoard} of the daemon C{context} (a
    L{cuckoodist.stages.base.StageContext}) belongs to.
    """
    return context.share(
        "analysis-board", lambda: AnalysisBoard(context.reactor, (stage.type for stage in context.config.stages))
    )
