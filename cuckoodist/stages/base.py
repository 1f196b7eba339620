# -*- test-case-name: tests.test_stages -*-
"""
What every stage shares: consuming its queue, resolving peers from the
configuration, and turning failures into messages for the overseer.

A stage implements one method, L{Stage.process}, which does the work for
one delivery and publishes its output through the L{Outbox}.  Whatever it
raises is caught here and published, confirmed, to the stage's failed
queue in the Go workers' C{FailedMsg} shape; only then is the delivery
acked.  If even that publish fails (the channel died), the delivery stays
unacked and the broker redelivers it: a message is never dropped.
"""

from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from cuckoodist.amqp.consumer import Delivery, Outbox, QueueConsumer
from cuckoodist.amqp.protocol import Closed
from cuckoodist.config import Config
from cuckoodist.crits import CritsClient
from cuckoodist.cuckoo import CuckooClient
from cuckoodist.errors import CuckoodistError, InvalidMessage, PermanentError, TransientError
from cuckoodist.http import HTTPClient
from cuckoodist.messages import CritsData, FailedMessage, RetryInfo, decode_json

__all__ = ["Stage", "StageContext", "describe"]


@attrs.frozen
class StageContext:
    """
    The shared parts a stage is built from.

    @ivar reactor: provides time and threads; tests pass a fake.
    @ivar connection: the daemon's L{AMQPConnectionService}.
    @ivar http: the daemon's L{HTTPClient}.
    @ivar config: the whole validated configuration.
    @ivar log_observer: where stage log events go; the daemon passes one
        that drops events below C{log_level}.
    """

    reactor: Any
    connection: Any
    http: HTTPClient
    config: Config
    log_observer: Any = None


class Stage(MultiService):
    """
    A pipeline stage consuming C{stage_config.consumer_queue}.

    @cvar kind: the stage type, used as C{Service} in failed messages.
    """

    kind = "stage"

    def __init__(self, context: StageContext, stage_config: Any) -> None:
        super().__init__()
        self.context = context
        self.stage_config = stage_config
        self.clock = context.reactor
        self.log = Logger(namespace=f"cuckoodist.{self.kind}", observer=context.log_observer)
        self.setName(f"{self.kind}:{stage_config.consumer_queue}")
        self.consumer = QueueConsumer(
            context.connection,
            stage_config.consumer_queue,
            stage_config.prefetch_count,
            self._on_delivery,
            context.reactor,
            context.config.grace_period,
        )
        self.consumer.setServiceParent(self)

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        """
        Do this stage's work for one delivery.

        @raise CuckoodistError: the work failed; the message goes to the
            overseer with the error's reason.
        """
        raise NotImplementedError

    async def _on_delivery(self, delivery: Delivery, outbox: Outbox) -> None:
        try:
            await self.process(delivery, outbox)
        except (Closed, CancelledError):
            raise
        except CuckoodistError as e:
            await self._fail(delivery, outbox, e)
        except Exception as e:
            self.log.failure("Unexpected error in {stage}", stage=self.kind)
            await self._fail(delivery, outbox, TransientError(f"internal error: {type(e).__name__}: {e}"))

    async def _fail(self, delivery: Delivery, outbox: Outbox, error: CuckoodistError) -> None:
        try:
            doc = decode_json(delivery.body)
        except InvalidMessage:
            doc = {}
        retry = RetryInfo.from_doc(doc)
        crits = doc.get("crits_data", doc.get("CritsData"))
        task_id = doc.get("TaskId")
        failed = FailedMessage(
            service=self.kind,
            queue=delivery.routing_key or self.stage_config.consumer_queue,
            error=error.reason,
            desc=_DESCRIPTIONS.get(type(error), "permanent failure" if isinstance(error, PermanentError) else "transient failure"),
            msg=delivery.body.decode("utf-8", "replace"),
            attempts=retry.attempts + 1,
            first_failure=retry.first_failure if retry.first_failure is not None else self.clock.seconds(),
            final=isinstance(error, PermanentError),
            analysis_id=crits.get("analysis_id", "") if isinstance(crits, dict) and isinstance(crits.get("analysis_id"), str) else "",
            task_id=task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None,
        )
        self.log.warn(
            "{stage} failed for analysis={analysis} task={task}: {why} (attempt {n}, {kind})",
            stage=self.kind,
            analysis=failed.analysis_id or "?",
            task=failed.task_id if failed.task_id is not None else "-",
            why=error.reason,
            n=failed.attempts,
            kind="final" if failed.final else "will retry",
        )
        await outbox.publish(self.stage_config.failed_queue, failed.encode())

    # Peers -----------------------------------------------------------------

    def cuckoo_client(self, url: str) -> CuckooClient:
        """
        A client for the Cuckoo at C{url}.  A token is sent only when the
        URL matches a configured instance.
        """
        configured = self.context.config.cuckoo_for_url(url)
        if configured is None:
            return CuckooClient(self.context.http, url)
        return CuckooClient(self.context.http, configured.url, configured.token, configured.verify_ssl)

    def crits_client(self, crits: CritsData, max_body: int = 2_500_000) -> CritsClient:
        """
        A client for the CRITs analysis a message belongs to.  Messages
        without C{crits_url} use the configured CRITs and its credentials;
        the configured API key is never sent to any other URL.

        @raise InvalidMessage: no CRITs to talk to, or no credentials for it.
        """
        configured = self.context.config.crits
        url = crits.crits_url.rstrip("/")
        same = configured is not None and (not url or url == configured.url.rstrip("/"))
        if not url:
            if configured is None:
                raise InvalidMessage("crits_data.crits_url is empty and no crits section is configured")
            url = configured.url
        username, api_key = crits.username, crits.api_key
        if not (username and api_key):
            if not same:
                raise InvalidMessage(f"no CRITs credentials for {url}: the message carries none and it is not the configured CRITs")
            username, api_key = configured.username, configured.api_key
        verify = configured.verify_ssl if same else True
        resolved = attrs.evolve(crits, crits_url=url, username=username, api_key=api_key)
        return CritsClient(self.context.http, resolved, verify_ssl=verify, max_body=max_body)


_DESCRIPTIONS = {
    InvalidMessage: "invalid message",
}


def describe(crits: CritsData, task_id: int | None = None) -> str:
    """
    The identifiers every log line about a sample carries.
    """
    return f"analysis={crits.analysis_id} task={task_id if task_id is not None else '-'}"
