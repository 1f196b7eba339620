# -*- test-case-name: tests.test_stage_check_results -*-
"""
check_results: ask Cuckoo whether a task is done, and pass it on when it is.

The broker holds the polling, not the process: an unfinished task is
re-published (confirmed) through a delay queue that returns it after
C{wait_between_requests} seconds, and the delivery is acked.  No delivery
stays unacked for longer than one poll, so RabbitMQ's C{consumer_timeout}
never fires, any instance can take any task, and a crash loses nothing.
The Go worker instead held every delivery unacked while Cuckoo worked.

A task that never finishes is given up at its deadline, which is carried
in the message (C{Deadline}), so every instance agrees on it.
"""

import attrs

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.cuckoo import FAILED, FINISHED
from cuckoodist.errors import PermanentError
from cuckoodist.messages import TaskMessage
from cuckoodist.retry import retrying
from cuckoodist.settings import seconds, setting
from cuckoodist.stages.base import Stage, describe
from cuckoodist.stages.keys import StageSettings, consumes, fails_to, prefetch, priorities, produces, stage_type

__all__ = ["CheckResults", "CheckResultsConfig", "AnalysisFailed"]


@attrs.frozen(kw_only=True)
class CheckResultsConfig(StageSettings):
    """
    Settings of a stage that polls Cuckoo until an analysis is reported.

    @ivar analysis_deadline: seconds after submission after which the task
        is given up as failed.
    """

    type: str = stage_type("check_results")
    consumer_queue: str = consumes("worker/check_results")
    producer_queue: str = produces("worker/parse_and_submit")
    failed_queue: str = fails_to()
    prefetch_count: int = prefetch(100)
    max_priority: int = priorities()
    wait_between_requests: float = setting(5.0, seconds(zero=False))
    analysis_deadline: float = setting(86400.0, seconds(zero=False))


class AnalysisFailed(PermanentError):
    """
    Cuckoo gave up on the analysis, or it ran past its deadline.
    """


class CheckResults(Stage):
    config_class = CheckResultsConfig

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        task = TaskMessage.decode(delivery.body)
        now = self.clock.seconds()
        if task.deadline is None:
            start = task.submitted_at if task.submitted_at is not None else now
            task = attrs.evolve(task, deadline=start + self.stage_config.analysis_deadline)
        ids = describe(task.crits, task.task_id)
        cuckoo = self.cuckoo_client(task.cuckoo_url)
        view = await retrying(self.clock, lambda: cuckoo.view(task.task_id), f"poll {ids}")
        status = view.get("status")
        if status in FINISHED:
            self.log.info("Task {task} on {url} is {status}; passing it on ({ids})", task=task.task_id, url=cuckoo.url, status=status, ids=ids)
            await outbox.publish(self.stage_config.producer_queue, task.for_next_stage().encode(), priority=task.priority)
            return
        if status in FAILED:
            errors = view.get("errors")
            detail = "; ".join(str(e) for e in errors[:5]) if isinstance(errors, list) and errors else "no error given"
            raise AnalysisFailed(f"Cuckoo task {task.task_id} ended as {status}: {detail}")
        if now > task.deadline:
            raise AnalysisFailed(
                f"Cuckoo task {task.task_id} still {status} at its deadline "
                f"({self.stage_config.analysis_deadline:g} s after submission)"
            )
        self.log.debug("Task {task} is {status}; checking again in {s:g} s ({ids})", task=task.task_id, status=status, s=self.stage_config.wait_between_requests, ids=ids)
        await outbox.publish_later(
            self.stage_config.consumer_queue,
            task.encode(),
            self.stage_config.wait_between_requests,
            priority=task.priority,
        )
