# -*- test-case-name: tests.test_sample_context -*-
"""
Which sample the code running now works for, so that every log event it
emits can say so.

A stage handles each delivery in its own coroutine, and Twisted runs each
coroutine in a copy of the context it was started in.  A L{ContextVar}
set while a delivery is handled is therefore seen by everything that
delivery awaits (the HTTP client timing a call, a helper logging a
retry; even in a coroutine of its own, for the L{Sample} is shared by
reference) and by nothing else: two deliveries in flight never see each
other's identifiers, and no code has to pass them along by hand.

L{with_sample_fields} is the other half: a log observer wrapper that
copies the current sample's fields into each event that lacks them.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import attrs

__all__ = ["Sample", "bound", "current", "identify", "with_sample_fields"]


@attrs.define(eq=False)
class Sample:
    """
    The identifiers of the sample being handled, filled in as the stage
    learns them (L{identify}).  Mutable, and shared by reference: the
    daemon's L{cuckoodist.activity.Activity} lists the same objects as
    its analyses in flight.

    @ivar stage: the stage type (C{feed_cuckoo}, ...).
    @ivar queue: the stage's consumer queue, which tells chained instances
        of one type apart.
    @ivar started: when the delivery arrived, by the daemon's clock.
    @ivar analysis_id: the CRITs analysis id, C{""} until known.
    @ivar task_id: the Cuckoo task id, C{None} until there is one.
    @ivar sample_name: the sample's file name, C{""} until known; shown on
        the dashboard, never logged as a field.
    @ivar cuckoo: the configured name of the Cuckoo node, C{""} until known.
    """

    stage: str
    queue: str
    started: float = 0.0
    analysis_id: str = ""
    task_id: int | None = None
    sample_name: str = ""
    cuckoo: str = ""

    def fields(self) -> dict[str, Any]:
        """
        The log event keys this sample adds.
        """
        return {"stage": self.stage, "queue": self.queue, "analysis_id": self.analysis_id, "task_id": self.task_id}


_current: ContextVar[Sample | None] = ContextVar("cuckoodist_sample", default=None)


def current() -> Sample | None:
    """
    The sample the running code works for, or C{None} outside any delivery.
    """
    return _current.get()


@contextmanager
def bound(sample: Sample) -> Iterator[Sample]:
    """
    Make C{sample} the current one for the body of the C{with} block (and
    whatever it awaits), restoring the previous one afterwards.
    """
    token = _current.set(sample)
    try:
        yield sample
    finally:
        try:
            _current.reset(token)
        except ValueError:
            # A coroutine collected unfinished is closed outside its own
            # context, where there is nothing to restore.
            pass


def identify(
    analysis_id: str | None = None,
    task_id: int | None = None,
    sample_name: str | None = None,
    cuckoo: str | None = None,
) -> None:
    """
    Record the current sample's identifiers once they are known: a stage
    learns the analysis id when it has decoded its message, feed_cuckoo the
    task id from the upload.  C{None} leaves a field as it was.  Outside a
    delivery this does nothing.
    """
    sample = _current.get()
    if sample is None:
        return
    if analysis_id is not None:
        sample.analysis_id = analysis_id
    if task_id is not None:
        sample.task_id = task_id
    if sample_name is not None:
        sample.sample_name = sample_name
    if cuckoo is not None:
        sample.cuckoo = cuckoo


def with_sample_fields(observer: Callable[[dict], None]) -> Callable[[dict], None]:
    """
    Wrap a log observer so that each event emitted while a sample is
    current carries that sample's fields (the event's own values win).
    """

    def observe(event: dict) -> None:
        sample = _current.get()
        if sample is not None:
            for key, value in sample.fields().items():
                if event.get(key) is None:
                    event[key] = value
        observer(event)

    return observe
