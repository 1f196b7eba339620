# -*- test-case-name: tests.test_stages -*-
"""
overseer: retry failed messages with backoff, and dump what cannot be
delivered.

The attempt count travels in the message (C{Retry} in the re-published
message, C{Attempts} in the failed envelope), not in the overseer's memory,
so counts survive restarts and are shared by any number of overseers.  The
wait between tries is held by the broker in a delay queue, one per backoff
step, so the overseer holds nothing while it waits.  Once a message is out
of retries, or its failure is final, CRITs is told the analysis ended in
error and the message is dumped, durably, before its delivery is acked.
"""

from twisted.internet.threads import deferToThreadPool

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.dump import DumpRecord, DumpStore
from cuckoodist.errors import CuckoodistError, InvalidMessage
from cuckoodist.messages import FailedMessage, RetryInfo, crits_data_of, with_retry
from cuckoodist.retry import retrying
from cuckoodist.stages.base import Stage

__all__ = ["Overseer"]


class Overseer(Stage):
    kind = "overseer"

    def __init__(self, context, stage_config) -> None:
        super().__init__(context, stage_config)
        self.dump = DumpStore(stage_config.dump_dir)

    async def _on_delivery(self, delivery: Delivery, outbox: Outbox) -> None:
        # The overseer has no overseer: it never publishes to a failed
        # queue.  Anything it cannot handle is dumped.
        try:
            await self._handle(delivery, outbox)
        except CuckoodistError as e:
            await self._dump(delivery.body.decode("utf-8", "replace"), "overseer", delivery.routing_key, e.reason)

    async def _handle(self, delivery: Delivery, outbox: Outbox) -> None:
        try:
            failed = FailedMessage.decode(delivery.body)
        except InvalidMessage as e:
            await self._dump(delivery.body.decode("utf-8", "replace"), "unknown", delivery.routing_key, f"unreadable failed message: {e.reason}")
            return
        cfg = self.stage_config
        retryable = not failed.final and failed.attempts <= cfg.max_retries and failed.queue != cfg.consumer_queue
        if retryable:
            try:
                body = with_retry(failed.msg.encode("utf-8"), RetryInfo(failed.attempts, failed.first_failure))
            except InvalidMessage as e:
                retryable, why = False, f"{failed.error} (and cannot be retried: {e.reason})"
            else:
                delay = cfg.retry_delay * 2 ** (failed.attempts - 1)
                await outbox.publish_later(failed.queue, body, delay)
                self.log.info(
                    "Retrying analysis={analysis} task={task} on {queue} in {s:g} s (attempt {n} of {m}): {why}",
                    analysis=failed.analysis_id or "?",
                    task=failed.task_id if failed.task_id is not None else "-",
                    queue=failed.queue,
                    s=delay,
                    n=failed.attempts + 1,
                    m=cfg.max_retries + 1,
                    why=failed.error,
                )
                return
        else:
            why = failed.error if failed.final else f"gave up after {failed.attempts} attempt(s): {failed.error}"
        told = await self._tell_crits(failed, why)
        await self._dump(failed.msg, failed.service, failed.queue, why, failed, told)

    async def _tell_crits(self, failed: FailedMessage, why: str) -> bool:
        """
        End the CRITs analysis as error, saying why.  Best effort: a CRITs
        that cannot be reached must not stop the message being dumped.
        """
        crits = crits_data_of(failed.msg.encode("utf-8"))
        if crits is None:
            return False
        try:
            client = self.crits_client(crits)
            await retrying(self.clock, lambda: client.finish(f"cuckoodist {failed.service}: {why}"), f"tell CRITs analysis={crits.analysis_id}")
        except CuckoodistError as e:
            self.log.warn("Could not tell CRITs that analysis={analysis} failed: {why}", analysis=crits.analysis_id, why=e.reason)
            return False
        return True

    async def _dump(self, message: str, stage: str, queue: str, reason: str, failed: FailedMessage | None = None, told: bool = False) -> None:
        record = DumpRecord(
            stage=stage,
            queue=queue,
            reason=reason,
            message=message,
            attempts=failed.attempts if failed else 0,
            first_failure=failed.first_failure if failed else None,
            dumped_at=self.clock.seconds(),
            analysis_id=failed.analysis_id if failed else "",
            task_id=failed.task_id if failed else None,
            crits_told=told,
        )
        reactor = self.context.reactor
        path = await deferToThreadPool(reactor, reactor.getThreadPool(), self.dump.write, record)
        self.log.warn(
            "Dumped analysis={analysis} task={task} from {stage} to {path}: {why}",
            analysis=record.analysis_id or "?",
            task=record.task_id if record.task_id is not None else "-",
            stage=stage,
            path=path,
            why=reason,
        )
