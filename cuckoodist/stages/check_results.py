# -*- test-case-name: tests.test_stage_check_results,tests.test_task_board -*-
"""
check_results: ask Cuckoo whether a task is done, and pass it on when it is.

The broker holds the polling, not the process: an unfinished task is
re-published (confirmed) through a delay queue that returns it later, and
the delivery is acked.  No delivery stays unacked for longer than one
check, so RabbitMQ's C{consumer_timeout} never fires, any instance can take
any task, and a crash loses nothing.  The Go worker instead held every
delivery unacked while Cuckoo worked.

How often Cuckoo is asked, and how:

  - Not before the analysis can be over.  A task is checked first near
    its expected end, C{ExpectedEnd} (feed_cuckoo sets it from the
    request's C{timeout}) or C{SubmittedAt} plus C{default_timeout}
    (Cuckoo's own default when a request names none).  Until then the
    message only travels through delay queues, with no HTTP request.  The
    wait is here rather than in feed_cuckoo's first publish so that it
    also applies to older cuckoodist's and Go feed_cuckoo's messages, and
    a Go check_results sharing the queue sees every message as it always
    did.
  - On Cuckoo 2.0, from one task list per node and interval
    (L{cuckoodist.task_board}), shared by all the task messages of the
    node this daemon handles: a task on it is passed on, a task absent
    from it comes back after one interval, so a task is passed on at most
    two intervals after Cuckoo reported it.  Lists never show failed
    tasks, so a task still absent well past its expected end is viewed now
    and then (ever more rarely, see L{_view_due}) to find those.
  - One task view per check (C{/tasks/view/<id>}) on Cuckoo 1.2, a node of
    unknown version, a round whose list failed, and for a task the board
    cannot vouch for (one view establishes its state).  Those checks back
    off from one interval to four, x1.5 per check.

Every delay is a step of a short ladder (L{delay_step}), because each
distinct delay is a queue of its own on the broker.

A task that never finishes is given up at its deadline, which is carried
in the message (C{Deadline}), so every instance agrees on it.
"""

import math

import attrs

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.cuckoo import FAILED, FINISHED, CuckooClient
from cuckoodist.errors import PermanentError
from cuckoodist.messages import TaskMessage
from cuckoodist.retry import retrying
from cuckoodist.sample_context import identify
from cuckoodist.settings import seconds, setting
from cuckoodist.stages.base import Stage, describe
from cuckoodist.stages.keys import StageSettings, consumes, fails_to, prefetch, priorities, produces, stage_type
from cuckoodist.task_board import NOT_REPORTED, REPORTED, UNKNOWN, TaskBoard

__all__ = ["CheckResults", "CheckResultsConfig", "AnalysisFailed", "delay_step"]

#: Per-task views back off by this factor per check...
BACKOFF = 1.5
#: ...up to this many intervals.
MAX_BACKOFF = 4.0
#: A task absent from the lists this many intervals past its expected end
#: is viewed, in case it failed...
FALLBACK_AFTER = 12
#: ...and again each time it is half as overdue again, at most this far
#: apart (seconds).
MAX_FALLBACK_GAP = 3600.0
#: The longest single hop before the first check, in intervals.
MAX_HOP = 2**12

#: Statuses that say the analysis has not completed yet.
UNFINISHED = frozenset({"pending", "running"})


@attrs.frozen(kw_only=True)
class CheckResultsConfig(StageSettings):
    """
    Settings of a stage that polls Cuckoo until an analysis is reported.

    @ivar analysis_deadline: seconds after submission after which the task
        is given up as failed.
    @ivar wait_between_requests: seconds between checks of a task; also how
        long one task list of a Cuckoo 2.0 node answers for its tasks.
    @ivar default_timeout: the analysis timeout of a request that names
        none, i.e. Cuckoo's C{timeout} in C{conf/cuckoo.conf} (120 by
        default): the first check comes that long after submission.
    """

    type: str = stage_type("check_results")
    consumer_queue: str = consumes("worker/check_results")
    producer_queue: str = produces("worker/parse_and_submit")
    failed_queue: str = fails_to()
    prefetch_count: int = prefetch(100)
    max_priority: int = priorities()
    wait_between_requests: float = setting(5.0, seconds(zero=False))
    analysis_deadline: float = setting(86400.0, seconds(zero=False))
    default_timeout: float = setting(120.0, seconds(zero=True))


class AnalysisFailed(PermanentError):
    """
    Cuckoo gave up on the analysis, or it ran past its deadline.
    """


def delay_step(wanted: float, interval: float) -> float:
    """
    The delay to publish with for a wait of about C{wanted} seconds: the
    longest step of the ladder not past it, and at least one interval.

    The ladder is C{interval} times 1, 1.5, 2.25, 3.375, 4 (the back-off)
    and the powers of two up to L{MAX_HOP} (the wait for the expected end,
    in hops that halve what is left), 16 delay queues in all, where
    exact delays would make one queue per task.
    """
    factors = {1.0, BACKOFF, BACKOFF**2, BACKOFF**3, MAX_BACKOFF}
    factors.update(2.0**k for k in range(int(math.log2(MAX_HOP)) + 1))
    fitting = [f for f in factors if f * interval <= wanted]
    return interval * max(fitting, default=1.0)


class CheckResults(Stage):
    config_class = CheckResultsConfig

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        config = self.stage_config
        wait = config.wait_between_requests
        task = TaskMessage.decode(delivery.body)
        now = self.clock.seconds()
        if task.deadline is None:
            start = task.submitted_at if task.submitted_at is not None else now
            task = attrs.evolve(task, deadline=start + config.analysis_deadline)
        ids = describe(task.crits, task.task_id)
        self.received(task.crits.analysis_id, task.task_id)
        cuckoo = self.cuckoo_client(task.cuckoo_url)
        identify(cuckoo=cuckoo.name)
        expected = self._expected_end(task)
        if expected is not None and expected - now >= wait:
            # Too early for any answer but "not yet": no request at all.
            await self._later(outbox, task, delay_step(expected - now, wait))
            return
        board = self._board(cuckoo)
        # A floor from the future (a forged or skewed message) would make
        # any list vouch for the task; it counts as now at most.
        floor = max((min(t, now) for t in (task.submitted_at, task.pending_since) if t is not None), default=None)
        answer = await board.lookup(task.task_id, floor)
        if answer is REPORTED:
            await self._pass_on(outbox, task, cuckoo, "reported", ids)
            return
        overdue = now > task.deadline
        if answer is NOT_REPORTED and not overdue and not self._view_due(task, now):
            self.log.debug(
                "Task {task} is not on {url}'s list of reported tasks yet ({ids})",
                task=task.task_id, url=cuckoo.url, ids=ids, event="polled", status="not reported",
            )
            await self._later(outbox, task, wait)
            return
        view = await retrying(self.clock, lambda: cuckoo.view(task.task_id), f"poll {ids}")
        status = view.get("status")
        if status in FINISHED:
            board.forget(task.task_id)
            await self._pass_on(outbox, task, cuckoo, status, ids)
            return
        if status in FAILED:
            board.forget(task.task_id)
            errors = view.get("errors")
            detail = "; ".join(str(e) for e in errors[:5]) if isinstance(errors, list) and errors else "no error given"
            raise AnalysisFailed(f"Cuckoo task {task.task_id} ended as {status}: {detail}")
        if overdue:
            board.forget(task.task_id)
            raise AnalysisFailed(
                f"Cuckoo task {task.task_id} still {status} at its deadline "
                f"({config.analysis_deadline:g} s after submission)"
            )
        task = attrs.evolve(task, last_view=now, pending_since=now if status in UNFINISHED else task.pending_since)
        # A node that lists tasks answers for this one from now on (the view
        # gave it a recent floor, unless it was "completed": then views until
        # it is reported); otherwise views, backing off.
        if answer is UNKNOWN or status not in UNFINISHED:
            delay = self._backoff(task, now)
        else:
            delay = wait
        self.log.debug(
            "Task {task} is {status}; checking again in {s:g} s ({ids})",
            task=task.task_id, status=status, s=delay, ids=ids, event="polled",
        )
        await self._later(outbox, task, delay)

    def _expected_end(self, task: TaskMessage) -> float | None:
        """
        When the analysis should be over: C{ExpectedEnd}, else submission
        plus C{default_timeout}; never past the deadline (a forged
        C{ExpectedEnd} cannot park a task), and unknown without either.
        """
        if task.expected_end is not None:
            expected = task.expected_end
        elif task.submitted_at is not None:
            expected = task.submitted_at + self.stage_config.default_timeout
        else:
            return None
        return min(expected, task.deadline) if task.deadline is not None else expected

    def _base(self, task: TaskMessage) -> float:
        """
        Where a task's overdue time counts from: its expected end, else the
        start its deadline was counted from.
        """
        expected = self._expected_end(task)
        if expected is not None:
            return expected
        return task.deadline - self.stage_config.analysis_deadline if task.deadline is not None else self.clock.seconds()

    def _view_due(self, task: TaskMessage, now: float) -> bool:
        """
        Whether a task absent from the lists gets a view now, in case it
        failed (failed tasks are never on a list of reported ones).

        The first comes L{FALLBACK_AFTER} intervals past the expected end,
        when processing should be over too; each next one when the task is
        half as overdue again as at the last view (a x1.5 back-off), at
        most L{MAX_FALLBACK_GAP} apart: a handful of views for a task stuck
        in a long queue, where polling it would cost one per interval.
        """
        overdue = now - self._base(task)
        grace = FALLBACK_AFTER * self.stage_config.wait_between_requests
        if overdue < grace:
            return False
        if task.last_view is None or task.last_view > now:
            return True
        gap = min(max(grace, (task.last_view - self._base(task)) / 2), MAX_FALLBACK_GAP)
        return now - task.last_view >= gap

    def _backoff(self, task: TaskMessage, now: float) -> float:
        """
        The wait after a per-task view: half the time the task is overdue,
        from one interval to L{MAX_BACKOFF}, so each wait is about 1.5
        times the one before once past the first few.
        """
        wait = self.stage_config.wait_between_requests
        overdue = max(0.0, now - self._base(task))
        return delay_step(min(max(overdue / 2, wait), MAX_BACKOFF * wait), wait)

    def _board(self, cuckoo: CuckooClient) -> TaskBoard:
        """
        The daemon's board of this node for this interval: shared by every
        check_results stage of the daemon with the same interval.
        """
        wait = self.stage_config.wait_between_requests
        return self.context.share(("task-board", cuckoo.url, wait), lambda: TaskBoard(cuckoo, self.clock, wait, log=self.log))

    async def _pass_on(self, outbox: Outbox, task: TaskMessage, cuckoo: CuckooClient, status: str, ids: str) -> None:
        self.log.info(
            "Task {task} on {url} is {status}; passing it on ({ids})",
            task=task.task_id, url=cuckoo.url, status=status, ids=ids, event="reported",
        )
        await outbox.publish(self.stage_config.producer_queue, task.for_next_stage().encode(), priority=task.priority)
        # From the upload (SubmittedAt, feed_cuckoo's clock) to the report
        # seen here: Go feed_cuckoo messages carry no SubmittedAt, and a
        # time from the future (skewed or forged) is no duration.
        if task.submitted_at is not None:
            took = self.clock.seconds() - task.submitted_at
            if took >= 0:
                self.context.metrics.analysis_seconds.labels(cuckoo.name).observe(took)

    async def _later(self, outbox: Outbox, task: TaskMessage, delay: float) -> None:
        await outbox.publish_later(self.stage_config.consumer_queue, task.encode(), delay, priority=task.priority)
