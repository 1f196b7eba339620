# -*- test-case-name: tests.test_stage_overseer,tests.test_overseer -*-
"""
overseer: retry failed messages with backoff, and dump what cannot be
delivered.

The attempt count travels in the message (C{Retry} in the re-published
message, C{Attempts} in the failed envelope), so counts survive restarts
and are shared by any number of overseers.  The Go workers lose it, so an
L{AttemptMemory} counts too, and the larger count wins: whoever produced
the envelope, a message is retried at most C{max_retries} times.  The wait
between tries is held by the broker in a delay queue, one per backoff step,
so the overseer holds nothing while it waits.

Once a message is out of retries, or its failure is final, CRITs is told
the analysis ended in error and the message is dumped, durably, before its
delivery is acked.  A failed envelope is as hostile as any message: it may
not decode, it may name a queue we must not publish to, its C{Msg} may not
be retriable.  Each of those ends in the dump with its reason, never in a
requeue: the overseer has no overseer.
"""

from typing import Mapping

import attrs
from twisted.internet.threads import deferToThreadPool

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.attempts import AttemptMemory, identity
from cuckoodist.config import Config
from cuckoodist.dump import DumpRecord, DumpStore
from cuckoodist.errors import CuckoodistError, InvalidMessage
from cuckoodist.messages import FailedMessage, Peek, RetryInfo, peek, with_retry
from cuckoodist.retry import retrying
from cuckoodist.settings import integer, path_text, queues, seconds, setting
from cuckoodist.stages.base import Stage, label
from cuckoodist.stages.keys import StageSettings, consumes, prefetch, stage_type

__all__ = ["Overseer", "OverseerConfig", "retry_targets", "MAX_RETRY_DELAY"]

#: The longest wait between tries, whatever retry_delay and the count say;
#: a broker holds a message's TTL in 32 bits of milliseconds.
MAX_RETRY_DELAY = 86400.0


@attrs.frozen(kw_only=True)
class OverseerConfig(StageSettings):
    """
    Settings of the stage that retries failed messages and dumps hopeless ones.

    @ivar retry_delay: seconds; the retry after failure M{n} (counted from
        1) waits C{retry_delay * 2 ** (n - 1)}, at most L{MAX_RETRY_DELAY}.
    @ivar allowed_queues: queues the overseer may re-publish to besides the
        ones this configuration's stages consume or produce to and the
        standard stage queues; a failed message naming any other queue is
        dumped instead, since anyone who can publish a failed message could
        otherwise make the overseer publish anywhere.
    """

    type: str = stage_type("overseer")
    consumer_queue: str = consumes("worker/failed")
    prefetch_count: int = prefetch(100)
    dump_dir: str = setting(check=path_text(empty=False))
    max_retries: int = setting(3, integer(0, 100))
    retry_delay: float = setting(60.0, seconds(zero=False))
    allowed_queues: tuple[str, ...] = setting((), queues, converter=tuple)


def retry_targets(config: Config, overseer: OverseerConfig, stage_types: Mapping[str, type] = {}) -> frozenset[str]:
    """
    The queues an overseer may re-publish failed messages to: every queue
    the configured stages consume or produce to, the standard queue of
    every stage type that fails to the overseer (an overseer running alone
    serves a fleet using them), and the overseer's C{allowed_queues}.
    Never the overseer's own queue: a failed message sent back there would
    loop.

    @param stage_types: the stage classes by type (L{cuckoodist.registry}).
    """
    names = set(overseer.allowed_queues)
    for kind in stage_types.values():
        fields = attrs.fields_dict(kind.config_class)
        if "failed_queue" in fields:
            names.add(fields["consumer_queue"].default)
    for stage in config.stages:
        if stage.type != "overseer":
            names.update(q for q in (stage.consumer_queue, stage.producer_queue) if q)
    names.discard(overseer.consumer_queue)
    return frozenset(names)


class Overseer(Stage):
    config_class = OverseerConfig

    def __init__(self, context, stage_config) -> None:
        super().__init__(context, stage_config)
        self.dump = DumpStore(stage_config.dump_dir)
        self.targets = retry_targets(context.config, stage_config, context.stage_types)
        self.attempts = AttemptMemory(context.reactor)
        # Label values a failed message may choose among (metric_labels).
        self._stage_types = frozenset(context.stage_types) | {stage.type for stage in context.config.stages}
        self._queues = self.targets | {stage_config.consumer_queue}

    def metric_labels(self, stage: str, queue: str) -> tuple[str, str]:
        """
        The C{stage} and C{queue} labels of a retry or a dump.  A failed
        message names both, and anyone can publish one: only a known stage
        type and a queue this configuration knows become labels
        (C{unknown} and C{other} stand for the rest), so no message can
        create time series.
        """
        return (stage if stage in self._stage_types else "unknown", queue if queue in self._queues else "other")

    async def give_up(self, delivery: Delivery, outbox: Outbox, error: CuckoodistError) -> None:
        """
        The overseer has no overseer: whatever went wrong, the message is
        dumped as it came, and so leaves the queue.
        """
        await self._dump(DumpRecord(
            stage="overseer",
            queue=self.stage_config.consumer_queue,
            reason=error.reason,
            message=_text(delivery.body),
            dumped_at=self.clock.seconds(),
        ))

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        try:
            failed = FailedMessage.decode(delivery.body)
        except InvalidMessage as e:
            await self._dump(DumpRecord(
                stage="unknown",
                queue=self.stage_config.consumer_queue,
                reason=f"unreadable failed message: {e.reason}",
                message=_text(delivery.body),
                dumped_at=self.clock.seconds(),
            ))
            return
        inner = peek(failed.msg.encode("utf-8"))
        key = identity(failed.queue, inner.doc, failed.msg)
        carried = max(failed.attempts or 1, inner.retry.attempts + 1)
        attempts = self.attempts.failed(key, carried)
        failed = attrs.evolve(
            failed,
            attempts=attempts,
            first_failure=failed.first_failure if failed.first_failure is not None else inner.retry.first_failure,
            analysis_id=failed.analysis_id or inner.analysis_id,
            task_id=failed.task_id if failed.task_id is not None else inner.task_id,
        )
        self.received(failed.analysis_id, failed.task_id)
        why = self._why_not_retry(failed, inner)
        if why is None:
            await self._retry(failed, inner, outbox, delivery.priority if delivery.priority is not None else inner.priority)
            return
        told = await self._tell_crits(failed, inner, why)
        await self._dump(DumpRecord(
            stage=failed.service,
            queue=failed.queue,
            reason=why,
            message=failed.msg,
            attempts=failed.attempts or 1,
            first_failure=failed.first_failure,
            dumped_at=self.clock.seconds(),
            analysis_id=failed.analysis_id,
            task_id=failed.task_id,
            crits_told=told,
        ))
        self.attempts.forget(key)

    def _why_not_retry(self, failed: FailedMessage, inner: Peek) -> str | None:
        """
        Why C{failed} goes to the dump instead of back to its queue, or
        C{None} if it may be retried.
        """
        if failed.final:
            return failed.error
        if failed.attempts > self.stage_config.max_retries:
            return f"gave up after {failed.attempts} attempt(s): {failed.error}"
        problem = queue_name_problem(failed.queue)
        if problem is None and failed.queue not in self.targets:
            problem = "its queue is not one this overseer may publish to (add it to allowed_queues)"
        if problem is not None:
            return f"{failed.error} (not retried: {problem})"
        if inner.doc is None:
            return f"{failed.error} (not retried: {inner.problem})"
        return None

    async def _retry(self, failed: FailedMessage, inner: Peek, outbox: Outbox, priority: int | None = None) -> None:
        cfg = self.stage_config
        first = failed.first_failure if failed.first_failure is not None else self.clock.seconds()
        body = with_retry(inner.doc, RetryInfo(failed.attempts, first))
        delay = min(cfg.retry_delay * 2 ** (failed.attempts - 1), MAX_RETRY_DELAY)
        await outbox.publish_later(failed.queue, body, delay, priority=priority)
        self.context.metrics.retried.labels(*self.metric_labels(failed.service, failed.queue)).inc()
        self.log.info(
            "Retrying {ids} on {queue} in {s:g} s (attempt {n} of {m}): {why}",
            ids=label(failed.analysis_id, failed.task_id),
            # The queue it goes back to, which the JSON line names too.
            queue=failed.queue,
            s=delay,
            n=failed.attempts + 1,
            m=cfg.max_retries + 1,
            why=failed.error,
            event="retried",
            attempt=failed.attempts + 1,
            failed_stage=failed.service,
            reason=failed.error,
        )

    async def _tell_crits(self, failed: FailedMessage, inner: Peek, why: str) -> bool:
        """
        End the CRITs analysis as error, saying why.  Best effort: a CRITs
        that cannot be reached, or that the message may not name, must not
        stop the message being dumped.
        """
        crits = inner.crits
        if crits is None:
            return False
        try:
            client = self.crits_client(crits)
            await retrying(self.clock, lambda: client.finish(f"cuckoodist {failed.service}: {why}"), f"tell CRITs analysis={crits.analysis_id}")
        except CuckoodistError as e:
            self.log.warn("Could not tell CRITs that {ids} failed: {why}", ids=label(failed.analysis_id, failed.task_id), why=e.reason)
            return False
        self.log.info(
            "Ended CRITs analysis {ids} as error: {why}",
            ids=label(failed.analysis_id, failed.task_id), why=why, event="posted", posted="error", reason=why,
        )
        return True

    async def _dump(self, record: DumpRecord) -> None:
        reactor = self.context.reactor
        path = await deferToThreadPool(reactor, reactor.getThreadPool(), self.dump.write, record)
        self.context.metrics.dumped.labels(*self.metric_labels(record.stage, record.queue)).inc()
        self.log.warn(
            "Dumped {ids} from {failed_stage} to {path}: {why}",
            ids=label(record.analysis_id, record.task_id),
            failed_stage=record.stage,
            path=path,
            why=record.reason,
            event="dumped",
            reason=record.reason,
        )


def _text(body: bytes) -> str:
    """
    A message body as text for the dump, whatever its bytes.
    """
    return body.decode("utf-8", "replace")
