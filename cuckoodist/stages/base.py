# -*- test-case-name: tests.test_stage_base,tests.test_stages,tests.test_cuckoo_limit -*-
"""
What every stage shares: consuming its queue, resolving peers from the
configuration, and turning failures into messages for the overseer.

A stage implements one method, L{Stage.process}, which does the work for
one delivery and publishes its output through the L{Outbox}.  Every
delivery then ends exactly once, by one rule enforced here:

  - the work succeeded and its outputs were confirmed: ack;
  - it raised a L{CuckoodistError}: the message is published, confirmed,
    to the stage's failed queue in the Go workers' C{FailedMsg} shape, for
    the overseer to retry or dump, and then acked;
  - it raised anything else: that is a bug, logged loudly, but the message
    must still leave the queue, so it is failed as I{permanent} and the
    overseer dumps it with the reason.  Requeueing it instead would loop
    forever (the same bug fires again) and block the queue.

Only when even the failed queue cannot be reached (the channel died, the
broker nacked) does the delivery stay unacked for the broker to give back;
L{QueueConsumer} spaces out such retries of the same message.

Peers named in a message are data, not trust: a task's C{CuckooURL} must
be a configured Cuckoo and a request's C{crits_url} the configured CRITs
or one of C{crits.allowed_urls}, or no request is made at all.
"""

from typing import Any, Awaitable, BinaryIO, Callable, Mapping

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from cuckoodist.activity import Activity
from cuckoodist.amqp.consumer import Delivery, Outbox, QueueConsumer
from cuckoodist.amqp.protocol import Closed, PublishNacked
from cuckoodist.config import Config, CuckooConfig
from cuckoodist.crits import CritsClient
from cuckoodist.analyses import analysis_board
from cuckoodist.cuckoo import CuckooClient
from cuckoodist.errors import CuckoodistError, InvalidMessage, PermanentError
from cuckoodist.http import HTTPClient, Peer
from cuckoodist.metrics import Metrics
from cuckoodist.messages import CritsData, FailedMessage, peek
from cuckoodist.retry import retrying
from cuckoodist.sample_context import Sample, bound, current, identify
from cuckoodist.stages.keys import max_priorities

__all__ = ["Stage", "StageContext", "describe", "label"]


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
    @ivar stage_types: every stage class by type (L{cuckoodist.registry}),
        for a stage that must know the others' defaults.
    @ivar metrics: the daemon's L{Metrics}, which every stage counts into.
    @ivar activity: the daemon's deliveries in flight and recent failures.
    @ivar shared: per-daemon state that stages share per peer, by key: the
        request caps of L{cuckoo_limiter}, check_results' task boards.  It
        lives here, not in module globals, so that two daemons (or two
        tests) in one process never share a cap or a board.
    """

    reactor: Any
    connection: Any
    http: HTTPClient
    config: Config
    log_observer: Any = None
    stage_types: Mapping[str, type] = attrs.field(factory=dict)
    metrics: Metrics = attrs.field(factory=Metrics, eq=False, repr=False)
    activity: Activity = attrs.field(
        default=attrs.Factory(lambda self: Activity(self.reactor), takes_self=True), eq=False, repr=False
    )
    shared: dict = attrs.field(factory=dict, eq=False, repr=False)

    def share(self, key: Any, make: Callable[[], Any]) -> Any:
        """
        The one object this daemon keeps under C{key}, made by C{make} the
        first time it is asked for.
        """
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def cuckoo_limiter(self, cuckoo: CuckooConfig) -> DeferredSemaphore:
        """
        The cap on requests in flight to one configured Cuckoo node,
        C{max_requests} of its entry, shared by every stage of this daemon:
        feed uploads, capacity probes, polls, downloads and deletes all
        draw on the same node's API process, so only a cap they share
        protects it.
        """
        return self.share(("cuckoo-limit", cuckoo.name), lambda: DeferredSemaphore(cuckoo.max_requests))

    def peer(self, kind: str, node: str) -> Peer:
        """
        What counts and times this daemon's requests to one peer node
        (L{Peer}): C{("cuckoo", configured name)} or C{("crits", "crits")}.
        """
        return self.share(("peer", kind, node), lambda: Peer(kind, node, self.metrics, self.log_observer))


class Stage(MultiService):
    """
    A pipeline stage consuming C{stage_config.consumer_queue}.

    @cvar config_class: the settings class of this stage type (see
        L{cuckoodist.stages.keys}); a subclass must set it.
    @cvar kind: the stage type, as its settings' C{type} key names it; used
        as C{Service} in failed messages.
    """

    config_class: type | None = None
    kind = "stage"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.kind = attrs.fields(cls.config_class).type.default

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
            max_priority=getattr(stage_config, "max_priority", 0),
            max_priorities=max_priorities(context.config),
        )
        self.consumer.setServiceParent(self)
        # Read when /metrics is scraped, so nothing is kept in step.  Stages
        # of one type on one queue (a feed_cuckoo per Cuckoo) share labels:
        # the gauge counts their consumers.
        labels = (self.kind, stage_config.consumer_queue)
        consumers = context.share(("consuming",) + labels, list)
        if not consumers:
            context.metrics.consuming.labels(*labels).set_function(lambda: float(sum(c.registered for c in consumers)))
        consumers.append(self.consumer)
        # This stage's series, looked up once rather than per delivery.
        metrics = context.metrics
        self._received = metrics.received.labels(*labels)
        self._in_flight = metrics.in_flight.labels(*labels)
        self._succeeded = metrics.succeeded.labels(*labels)

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        """
        Do this stage's work for one delivery.

        @raise CuckoodistError: the work failed; the message goes to the
            overseer with the error's reason.
        """
        raise NotImplementedError

    async def _on_delivery(self, delivery: Delivery, outbox: Outbox) -> None:
        """
        Handle one delivery as the current sample (L{sample_context}), and
        count it: received, in flight, then succeeded or failed.
        """
        self._received.inc()
        self._in_flight.inc()
        # The ids are filled in by process() once it has decoded the body
        # (L{sample_context.identify}): decoding it here too would double
        # the JSON work of every message.
        sample = Sample(self.kind, self.stage_config.consumer_queue)
        try:
            with bound(sample), self.context.activity.handling(sample):
                # The "received" line comes from received(), once the
                # message can be named.
                await self._handle(delivery, outbox)
        finally:
            self._in_flight.dec()

    def received(
        self, analysis_id: str, task_id: int | None = None, cuckoo: str | None = None, sample_name: str | None = None
    ) -> None:
        """
        Name the current sample (L{identify}) as soon as process() has
        decoded its message, and log its arrival (C{event="received"}):
        only then can that line say which analysis it is about.  A message
        that does not decode is named by its C{failed} line instead.
        """
        identify(analysis_id=analysis_id, task_id=task_id, cuckoo=cuckoo, sample_name=sample_name)
        self.log.debug(
            "Received {ids} on {queue}", ids=label(analysis_id, task_id), queue=self.stage_config.consumer_queue, event="received"
        )

    async def _handle(self, delivery: Delivery, outbox: Outbox) -> None:
        try:
            await self.process(delivery, outbox)
        except (Closed, CancelledError, PublishNacked):
            # The broker lost or refused our output: nothing was decided
            # about the message, so it stays unacked and comes back.
            raise
        except CuckoodistError as e:
            await self.give_up(delivery, outbox, e)
        except Exception as e:
            self.log.failure("Bug: unexpected error in {stage}; the message is given up as a permanent failure", stage=self.kind)
            await self.give_up(delivery, outbox, PermanentError(f"internal error in {self.kind}: {type(e).__name__}: {_clip(str(e))}"))
        else:
            self._succeeded.inc()
            sample = current()
            if sample is not None:
                analysis_board(self.context).passed(sample)

    async def give_up(self, delivery: Delivery, outbox: Outbox, error: CuckoodistError) -> None:
        """
        Hand the message to the overseer, with everything it needs to
        decide: built from what can be read of the message, whatever it
        holds, so that this step itself cannot fail on a hostile body.
        """
        body = error.resume if error.resume is not None else delivery.body
        seen = peek(body)
        failed = FailedMessage(
            service=self.kind,
            queue=self.stage_config.consumer_queue,
            error=_clip(error.reason),
            desc=_DESCRIPTIONS.get(type(error), "permanent failure" if isinstance(error, PermanentError) else "transient failure"),
            msg=body.decode("utf-8", "replace"),
            attempts=seen.retry.attempts + 1,
            first_failure=seen.retry.first_failure if seen.retry.first_failure is not None else self.clock.seconds(),
            final=isinstance(error, PermanentError),
            analysis_id=seen.analysis_id,
            task_id=seen.task_id,
        )
        # What the failed message says wins over what process() got to,
        # in the line below too.
        identify(analysis_id=failed.analysis_id or None, task_id=failed.task_id)
        self.log.warn(
            "{stage} failed for {ids}: {why} (attempt {n}, {kind})",
            stage=self.kind,
            ids=label(failed.analysis_id, failed.task_id),
            why=failed.error,
            n=failed.attempts,
            kind="final" if failed.final else "will retry",
            event="failed",
            reason=failed.error,
            final=failed.final,
            attempt=failed.attempts,
        )
        await outbox.publish(self.stage_config.failed_queue, failed.encode(), priority=delivery.priority)
        sample = current()
        if sample is not None:
            self.context.activity.failed(sample, failed.error, failed.final)
            analysis_board(self.context).failed(sample, failed.final)
        self.context.metrics.failed.labels(
            self.kind, self.stage_config.consumer_queue, "permanent" if failed.final else "transient"
        ).inc()

    async def download(self, spool: BinaryIO, fetch: Callable[[BinaryIO], Awaitable[None]], what: str) -> None:
        """
        Stream one download into C{spool} with C{fetch}, starting over on
        each retry: a Cuckoo report still being written answers 404 for a
        while, and a broken transfer leaves part of a file behind.
        """

        async def attempt() -> None:
            spool.seek(0)
            spool.truncate()
            await fetch(spool)

        await retrying(self.clock, attempt, what, attempts=6, base_delay=2.0)

    def in_thread(self, f: Any, *args: Any, on_cancel: Callable[[], None] | None = None) -> Deferred:
        """
        Run C{f(*args)} in the reactor's thread pool (parsing a report,
        unpacking an archive, decrypting a sample).

        A thread cannot be interrupted, so cancelling the result only stops
        waiting for it; C{on_cancel} is how the work is told to stop too,
        and the thread's late outcome is dropped.

        @param on_cancel: called when the returned Deferred is cancelled.
        """
        reactor = self.context.reactor
        running = deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
        if on_cancel is None:
            return running
        result: Deferred = Deferred(lambda _: on_cancel())

        def deliver(outcome: Any) -> None:
            if not result.called:
                (result.errback if isinstance(outcome, Failure) else result.callback)(outcome)

        running.addBoth(deliver)
        return result

    # Peers -----------------------------------------------------------------

    def cuckoo_client(self, url: str) -> CuckooClient:
        """
        A client for the configured Cuckoo that C{url}, taken from a
        message, names.

        Requests go to the configured URL, never to the message's: a
        message naming any other host, port or path would otherwise make
        this daemon fetch from wherever it says and post what it read into
        CRITs with the configured key.

        @raise InvalidMessage: C{url} is not a configured Cuckoo.
        """
        configured = self.context.config.cuckoo_for_url(url)
        if configured is None:
            raise InvalidMessage(
                f"CuckooURL {_clip(url, 200)!r} is not a Cuckoo in this configuration; "
                "list it under 'cuckoo' to accept tasks from it"
            )
        return CuckooClient(
            self.context.http,
            configured.url,
            configured.token,
            configured.verify_ssl,
            limiter=self.context.cuckoo_limiter(configured),
            peer=self.context.peer("cuckoo", configured.name),
        )

    def crits_client(self, crits: CritsData, max_body: int = 2_500_000) -> CritsClient:
        """
        A client for the CRITs analysis a message belongs to.  Messages
        without C{crits_url} use the configured CRITs and its credentials;
        the configured API key is never sent to any other URL.

        @raise InvalidMessage: the message names a CRITs that is neither the
            configured one nor in C{crits.allowed_urls}, or there is no CRITs
            to talk to, or no credentials for it.
        """
        config = self.context.config
        configured = config.crits
        url = crits.crits_url
        if url:
            known = config.known_crits_url(url)
            if known is None:
                raise InvalidMessage(
                    f"crits_url {_clip(url, 200)!r} is not the configured CRITs nor in crits.allowed_urls"
                )
            url = known.rstrip("/")
        elif configured is None:
            raise InvalidMessage("crits_data.crits_url is empty and no crits section is configured")
        else:
            url = configured.url
        same = config.is_configured_crits(url)
        username, api_key = crits.username, crits.api_key
        if not (username and api_key):
            if not same:
                raise InvalidMessage(f"no CRITs credentials for {url}: the message carries none and it is not the configured CRITs")
            username, api_key = configured.username, configured.api_key
        verify = configured.verify_ssl if same else True
        resolved = attrs.evolve(crits, crits_url=url, username=username, api_key=api_key)
        return CritsClient(
            self.context.http, resolved, verify_ssl=verify, max_body=max_body, peer=self.context.peer("crits", "crits")
        )


_DESCRIPTIONS = {
    InvalidMessage: "invalid message",
}


def _clip(text: str, limit: int = 2000) -> str:
    """
    Keep reasons that quote peers or exceptions to a loggable length.
    """
    return text if len(text) <= limit else text[:limit] + "..."


def label(analysis_id: str, task_id: int | None = None) -> str:
    """
    The identifiers every log line about a sample carries, C{?} and C{-}
    standing for the ones a message did not give.
    """
    return f"analysis={analysis_id or '?'} task={task_id if task_id is not None else '-'}"


def describe(crits: CritsData, task_id: int | None = None) -> str:
    """
    L{label} for a message's CRITs context.
    """
    return label(crits.analysis_id, task_id)
