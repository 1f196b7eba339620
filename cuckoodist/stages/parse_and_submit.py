# -*- test-case-name: tests.test_stage_parse_and_submit,tests.test_request_budget -*-
"""
parse_and_submit: turn a finished Cuckoo task into CRITs results.

The report is streamed to a temporary file (bounded by C{max_report_size})
and parsed incrementally in a worker thread, so neither memory nor the
reactor suffers from a 400 MB report.  Dropped files come as a tar archive,
unpacked entry by entry under hard caps, also in a thread.

Instances can be chained: one with the fast parsers forwards the task to
C{producer_queue}, where an instance with C{dropped} finishes the job.  Only
the last instance of a chain (no C{producer_queue}) finishes the CRITs
analysis; with C{cuckoo_cleanup} it then has the Cuckoo task deleted
C{cleanup_delay} seconds later.

The delay is held by the broker: the task message goes, confirmed with the
stage's other outputs, through a delay queue to the stage's own
C{<consumer_queue>.cleanup} queue, which the stage also consumes.  Deleting
at once would make every duplicate delivery (a redelivery after a lost ack,
a copy forked by a crash in check_results) find its task gone, and a task
gone from Cuckoo ends its analysis as an error.  Duplicates come within
seconds of a crash, so by the time the task is deleted they have been
served.

Requests are counted (issue #12): the task is not viewed before the work,
only when its report or dropped archive is missing (L{_confirm_task}); a
step's notes for the CRITs log ride on its last results request; and a
dropped file is related to the analysed object by its upload.  In the
common case a task costs Cuckoo three requests here (report, archive,
delete) and CRITs one results request per step, one upload per dropped
file, and the finish.
"""

import tempfile
import threading
from typing import Any, Awaitable, BinaryIO, Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import CancelledError

from cuckoodist.amqp.consumer import Delivery, Outbox, QueueConsumer
from cuckoodist.amqp.protocol import Closed
from cuckoodist.archive import ArchiveError, unpacked
from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.config import CRITS_BODY_LIMIT
from cuckoodist.crits import CritsClient, Note
from cuckoodist.cuckoo import CuckooClient, OutputMissing, TaskNotFound
from cuckoodist.errors import ConfigError, CuckoodistError, PermanentError
from cuckoodist.http import BodyTooLarge
from cuckoodist.messages import TaskMessage
from cuckoodist.report.extract import ExtractOptions, extract_results
# REPORT_PARSERS: the parsers that read report.json; dropped reads the archive.
from cuckoodist.report.rows import MAX_NESTING, MAX_STRING, PARSERS as REPORT_PARSERS, STAGE_PARSERS
from cuckoodist.results import ResultRow
from cuckoodist.retry import retrying
from cuckoodist.sample_context import identify
from cuckoodist.settings import Path, boolean, integer, one_of, seconds, setting, wrong_type
from cuckoodist.stages.base import Stage, StageContext, describe
from cuckoodist.stages.keys import StageSettings, consumes, fails_to, prefetch, priorities, produces, stage_type

__all__ = ["ParseAndSubmit", "ParseAndSubmitConfig", "REPORT_PARSERS", "TaskGone", "cleanup_queue"]

#: A broker holds a message's TTL in 32 bits of milliseconds.
_MAX_CLEANUP_DELAY = 86400.0


def cleanup_queue(consumer_queue: str) -> str:
    """
    The queue on which a parse_and_submit stage holds the deletion of its
    finished Cuckoo tasks.  Its own queue, not the stage's: Go workers
    sharing C{consumer_queue} would take a clean-up for a new task.
    """
    return f"{consumer_queue}.cleanup"


def _parsers(value: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise wrong_type("a list", value, path)
    seen: list[str] = []
    for index, item in enumerate(value):
        name = one_of(STAGE_PARSERS)(item, path + (index,))
        if name in seen:
            raise ConfigError(f"{name!r} is listed twice", path + (index,))
        seen.append(name)
    return tuple(seen)


@attrs.frozen(kw_only=True)
class ParseAndSubmitConfig(StageSettings):
    """
    Settings of a stage that turns a report into CRITs results.

    @ivar producer_queue: where to relay the message afterwards, C{""} for
        nowhere (the end of the chain).
    @ivar enabled_parsers: a subset of the report parsers and C{dropped},
        in the order given.
    @ivar max_dropped_bytes: total unpacked bytes of dropped files.
    @ivar crits_max_body: bytes per CRITs request, at most
        L{CRITS_BODY_LIMIT}.
    @ivar cleanup_delay: seconds between finishing an analysis and deleting
        its Cuckoo task, held by the broker on C{<consumer_queue>.cleanup}:
        a duplicate delivery (at-least-once) arriving meanwhile still finds
        its task, instead of taking a finished analysis for a deleted one.
    """

    type: str = stage_type("parse_and_submit")
    consumer_queue: str = consumes("worker/parse_and_submit")
    producer_queue: str = produces("", may_end=True)
    failed_queue: str = fails_to()
    prefetch_count: int = prefetch(10)
    max_priority: int = priorities()
    push_api_calls_max: int = setting(5000, integer(0))
    cuckoo_cleanup: bool = setting(True, boolean)
    cleanup_delay: float = setting(300.0, seconds(zero=True))
    enabled_parsers: tuple[str, ...] = setting(STAGE_PARSERS, _parsers, converter=tuple)
    max_report_size: int = setting(1024 * 1024 * 1024, integer(1))
    max_dropped_files: int = setting(500, integer(0))
    max_dropped_bytes: int = setting(512 * 1024 * 1024, integer(0))
    crits_max_body: int = setting(2_500_000, integer(1, CRITS_BODY_LIMIT))

    def check(self, path: Path, cuckoos: Mapping[str, Any]) -> None:
        if self.cuckoo_cleanup and not self.producer_queue:
            problem = queue_name_problem(cleanup_queue(self.consumer_queue))
            if problem is not None:
                raise ConfigError(
                    f"with cuckoo_cleanup the stage also consumes '<consumer_queue>.cleanup': {problem}",
                    path + ("consumer_queue",),
                )


class TaskGone(PermanentError):
    """
    The task a message names is no longer in Cuckoo.
    """


@attrs.define
class _Task:
    """
    The Cuckoo task of one delivery, and whether a view confirmed it
    exists (so that it is viewed at most once per delivery).
    """

    task_id: int
    client: CuckooClient
    confirmed: bool = False


class ParseAndSubmit(Stage):
    config_class = ParseAndSubmitConfig

    def __init__(self, context: StageContext, stage_config: Any) -> None:
        super().__init__(context, stage_config)
        self.cleanup_queue: str | None = None
        if stage_config.cuckoo_cleanup and not stage_config.producer_queue:
            self.cleanup_queue = cleanup_queue(stage_config.consumer_queue)
            QueueConsumer(
                context.connection,
                self.cleanup_queue,
                stage_config.prefetch_count,
                self._clean_up,
                context.reactor,
                context.config.grace_period,
            ).setServiceParent(self)

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        task = TaskMessage.decode(delivery.body)
        self.received(task.crits.analysis_id, task.task_id)
        cfg = self.stage_config
        crits = self.crits_client(task.crits, cfg.crits_max_body)
        cuckoo = self.cuckoo_client(task.cuckoo_url)
        identify(cuckoo=cuckoo.name)
        ids = describe(task.crits, task.task_id)
        progress = dict(task.progress)
        try:
            await self._submit(task, _Task(task.task_id, cuckoo), crits, ids, progress, outbox)
        except CuckoodistError as e:
            # CRITs cannot replace or deduplicate results: the retry must
            # not post again what was posted before this failure.
            if progress != task.progress:
                e.resume = attrs.evolve(task, progress=progress).encode()
            raise

    async def _submit(self, task: TaskMessage, cuckoo: _Task, crits: CritsClient, ids: str, progress: dict[str, int], outbox: Outbox) -> None:
        """
        Post the results, then pass the task on or finish it, recording in
        C{progress} each step done.
        """
        cfg = self.stage_config
        parsers = REPORT_PARSERS.intersection(cfg.enabled_parsers)
        if parsers and not progress.get("report_done"):
            await self._submit_report(task, cuckoo, crits, parsers, ids, progress)
            progress["report_done"] = 1
        if "dropped" in cfg.enabled_parsers and not progress.get("dropped_done"):
            await self._submit_dropped(task, cuckoo, crits, ids, progress)
            progress["dropped_done"] = 1
        if cfg.producer_queue:
            await outbox.publish(cfg.producer_queue, task.for_next_stage().encode(), priority=task.priority)
            self.log.info("Parsed {ids}; forwarded to {to_queue}", ids=ids, to_queue=cfg.producer_queue, event="forwarded")
            return
        await retrying(self.clock, lambda: crits.finish(), f"finish {ids}")
        self.log.info("Finished CRITs analysis {ids}", ids=ids, event="finished")
        # From the request's own time (RequestedAt: the CRITs service,
        # submit and the demo stamp it), else from the upload (SubmittedAt,
        # the pipeline's first stamp; requests of the Go service carry no
        # time).  Go task messages have neither; a time from the future is
        # no duration.
        started = task.requested_at if task.requested_at is not None else task.submitted_at
        if started is not None and self.clock.seconds() >= started:
            self.context.metrics.end_to_end_seconds.observe(self.clock.seconds() - started)
        if self.cleanup_queue is not None:
            await outbox.publish_later(self.cleanup_queue, task.for_next_stage().encode(), min(cfg.cleanup_delay, _MAX_CLEANUP_DELAY), priority=task.priority)

    async def _clean_up(self, delivery: Delivery, outbox: Outbox) -> None:
        """
        Delete a finished task from Cuckoo.  Every outcome acks: the
        results are in CRITs, and a task left behind only costs disk.
        """
        try:
            task = TaskMessage.decode(delivery.body)
            ids = describe(task.crits, task.task_id)
            cuckoo = self.cuckoo_client(task.cuckoo_url)
            await retrying(self.clock, lambda: cuckoo.delete(task.task_id), f"delete {ids}")
        except CuckoodistError as e:
            self.log.warn("Could not delete a finished Cuckoo task: {why}", why=e.reason)
            return
        except (Closed, CancelledError):
            raise
        except Exception:
            self.log.failure("Bug: unexpected error deleting a finished Cuckoo task; leaving it")
            return
        # No delivery of process() is bound here: the fields say which.
        self.log.info(
            "Deleted Cuckoo task {ids}", ids=ids, event="deleted", stage=self.kind, queue=self.cleanup_queue,
            analysis_id=task.crits.analysis_id, task_id=task.task_id,
        )

    async def _fetch(self, spool: BinaryIO, cuckoo: _Task, fetch: Callable[[BinaryIO], Awaitable[None]], what: str, ids: str) -> None:
        """
        L{Stage.download}, confirming the task with L{_confirm_task} the
        first time its output is missing.
        """

        async def fetch_or_confirm(to: BinaryIO) -> None:
            try:
                await fetch(to)
            except OutputMissing:
                await self._confirm_task(cuckoo, ids)
                raise

        await self.download(spool, fetch_or_confirm, f"{what} {ids}")

    async def _confirm_task(self, cuckoo: _Task, ids: str) -> None:
        """
        Tell a task gone from Cuckoo from one whose output is not written
        yet, once per delivery, when a report or dropped archive is
        missing: Cuckoo answers those alike (C{docs/peers.md#cuckoo-report},
        C{#cuckoo-dropped-archive}).  The work does not start with a view,
        as it used to: a task handed over by check_results is there in the
        common case, and the view is a request per task.

        A task can be gone for two reasons: an operator deleted it, or
        this message is a duplicate (at-least-once delivery: a redelivery
        after a lost ack, or a copy forked in check_results) of one whose
        cleanup already deleted it.  This stage cannot tell them apart, and
        doing the work would only wait for a report that never comes.  So
        it ends here, as a permanent failure: the overseer ends the CRITs
        analysis as error with the reason and dumps the message, and the
        analyst sees why instead of an analysis left "started" forever.
        For a duplicate, that marks an analysis whose results are already
        in CRITs as error, with this reason in its log.  Nothing is posted
        first: the report (or, without report parsers, the archive) is the
        first thing a delivery fetches, and it is missing for a gone task.

        @raise TaskGone: the task is not in Cuckoo.
        """
        if cuckoo.confirmed:
            return
        try:
            await retrying(self.clock, lambda: cuckoo.client.view(cuckoo.task_id), f"check {ids}")
        except TaskNotFound:
            raise TaskGone(
                f"Cuckoo task {cuckoo.task_id} no longer exists: it was deleted by hand, or this is a "
                "duplicate of a delivery that already finished (see the analysis log)"
            ) from None
        cuckoo.confirmed = True

    async def _submit_report(self, task: TaskMessage, cuckoo: _Task, crits: CritsClient, parsers: frozenset, ids: str, progress: dict[str, int]) -> None:
        cfg = self.stage_config
        with tempfile.TemporaryFile(prefix="cuckoodist-report-") as spool:
            metrics = self.context.metrics
            started = self.clock.seconds()
            await self._fetch(spool, cuckoo, lambda to: cuckoo.client.download_report(task.task_id, to, cfg.max_report_size), "report", ids)
            parsing = self.clock.seconds()
            metrics.report_fetch_seconds.labels(cuckoo.client.name).observe(parsing - started)
            size = spool.tell()
            metrics.report_bytes.observe(size)
            spool.seek(0)
            options = ExtractOptions(parsers=frozenset(parsers), api_calls_max=cfg.push_api_calls_max, task_id=task.task_id)
            # Set when the stage gives up waiting (shutdown past
            # grace_period): the parse thread checks it at every block, so
            # the thread pool's join at shutdown does not wait for a 1 GB parse.
            stop = threading.Event()
            extraction = await self.in_thread(extract_results, spool, options, stop, on_cancel=stop.set)
            metrics.report_parse_seconds.observe(self.clock.seconds() - parsing)
        self.log.info(
            "Parsed a {mb:.1f} MB Cuckoo {fmt} report into {rows} results ({ids})",
            mb=size / 1e6, fmt=extraction.format, rows=len(extraction.rows), bytes=size, ids=ids, event="parsed",
        )
        notes: list[Note] = []
        if "behavior" in parsers and extraction.api_calls_seen > cfg.push_api_calls_max:
            notes.append(Note(f"Pushed {cfg.push_api_calls_max} of {extraction.api_calls_seen} API calls (push_api_calls_max)."))
        if extraction.values_truncated or extraction.values_skipped or extraction.rows_dropped:
            # Counts only: the values themselves are the hostile part.
            bounded = (f"Report values bounded: {extraction.values_truncated} string(s) cut to "
                       f"{MAX_STRING} characters, {extraction.values_skipped} value(s) nested deeper "
                       f"than {MAX_NESTING} levels or too large left out, "
                       f"{extraction.rows_dropped} row(s) past the row budget left out.")
            self.log.warn("{note} ({ids})", note=bounded, ids=ids)
            notes.append(Note(bounded, "warning"))
        posting = self.clock.seconds()
        requests = await self._post_rows(crits, extraction.rows, notes, ids, progress, "report_requests")
        metrics.crits_submit_seconds.observe(self.clock.seconds() - posting)
        self.log.info(
            "Posted {n} results from a {mb:.1f} MB Cuckoo {fmt} report in {r} request(s) ({ids})",
            n=len(extraction.rows),
            mb=size / 1e6,
            fmt=extraction.format,
            r=requests,
            ids=ids,
            event="posted",
            posted="results",
            rows=len(extraction.rows),
        )

    async def _submit_dropped(self, task: TaskMessage, cuckoo: _Task, crits: CritsClient, ids: str, progress: dict[str, int]) -> None:
        cfg = self.stage_config
        source = task.crits.source
        rows: list[ResultRow] = []
        notes: list[Note] = []
        with tempfile.NamedTemporaryFile(prefix="cuckoodist-dropped-") as spool:
            try:
                await self._fetch(
                    spool, cuckoo, lambda to: cuckoo.client.download_dropped(task.task_id, to, cfg.max_dropped_bytes), "dropped files", ids
                )
                spool.flush()
                unpacking = unpacked(spool.name, max_files=cfg.max_dropped_files, max_total_bytes=cfg.max_dropped_bytes)
                files, skipped = await self.in_thread(unpacking.__enter__)
            except (ArchiveError, BodyTooLarge) as e:
                # The report's results stand; say in CRITs why the dropped
                # files are missing instead of failing the whole analysis.
                note = f"Dropped files not processed: {e.reason}"
                self.log.warn("{note} ({ids})", note=note, ids=ids)
                await self._post_rows(crits, [], [Note(note, "warning")], ids, progress, "dropped_requests")
                return
            try:
                if files and not source:
                    raise PermanentError("crits_data.source is empty; CRITs needs a source to store dropped files")
                unstored = 0
                for dropped in files:
                    try:
                        upload = await retrying(
                            self.clock,
                            lambda: crits.upload_sample(dropped.name, dropped.path, source),
                            f"upload dropped {dropped.name!r} {ids}",
                        )
                        if not upload.related and upload.not_related is None:
                            # An object CRITs relates otherwise in an upload.
                            sample_id = upload.sample_id
                            await retrying(self.clock, lambda: crits.relate(sample_id), f"relate {dropped.name!r} {ids}")
                    except PermanentError as e:
                        notes.append(Note(f"Dropped file {dropped.name!r} not stored: {e.reason}", "warning"))
                        unstored += 1
                        continue
                    if upload.not_related is not None:
                        # Stored all the same; a separate relationship
                        # request would miss the object too.
                        notes.append(Note(f"Dropped file {dropped.name!r} stored but not related: {upload.not_related}", "warning"))
                    rows.append(ResultRow("file_added", dropped.name, {"md5": upload.md5}))
            finally:
                await self.in_thread(unpacking.__exit__, None, None, None)
        notes += [Note(f"Skipped archive entry: {why}", "warning") for why in skipped[:20]]
        await self._post_rows(crits, rows, notes, ids, progress, "dropped_requests")
        self.log.info(
            "Stored {n} dropped file(s), {s} skipped ({ids})",
            n=len(rows), s=len(skipped) + unstored, ids=ids, event="posted", posted="dropped", rows=len(rows),
        )

    async def _post_rows(self, crits: CritsClient, rows: Sequence[ResultRow], notes: Sequence[Note], ids: str, progress: dict[str, int], step: str) -> int:
        """
        Post C{rows} and the step's C{notes} request by request, each
        retried on its own, skipping the requests an earlier delivery of
        this message already posted.  The notes ride on the last results
        request, or go alone when there are no rows
        (L{CritsClient.result_requests}).

        Batching is deterministic, so the same report gives the same
        requests: C{progress[step]} counts those posted, the one carrying
        the notes included, and is carried in the message if a later step
        fails.  What can still repeat is one request whose answer was lost
        (a timeout or a 5xx after CRITs stored it), and a delivery whose
        process died before its ack.

        @return: the number of requests.
        """
        count = 0
        for fields in crits.result_requests(rows, notes):
            count += 1
            if count <= progress.get(step, 0):
                continue
            await retrying(self.clock, lambda: crits.post_request(fields), f"results {ids}")
            progress[step] = count
        return count
