# -*- test-case-name: tests.test_stages -*-
"""
parse_and_submit: turn a finished Cuckoo task into CRITs results.

The report is streamed to a temporary file (bounded by C{max_report_size})
and parsed incrementally in a worker thread, so neither memory nor the
reactor suffers from a 400 MB report.  Dropped files come as a tar archive,
unpacked entry by entry under hard caps, also in a thread.

Instances can be chained: one with the fast parsers forwards the task to
C{producer_queue}, where an instance with C{dropped} finishes the job.  Only
the last instance of a chain (no C{producer_queue}) finishes the CRITs
analysis; C{cuckoo_cleanup} then deletes the Cuckoo task.
"""

import tempfile
from typing import Any, BinaryIO, Sequence

from twisted.internet.threads import deferToThreadPool

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.archive import ArchiveError, unpacked
from cuckoodist.crits import CritsClient
from cuckoodist.cuckoo import CuckooClient, TaskNotFound
from cuckoodist.errors import CuckoodistError, PermanentError
from cuckoodist.http import BodyTooLarge
from cuckoodist.messages import TaskMessage
from cuckoodist.report.extract import ExtractOptions, extract_results
from cuckoodist.results import ResultRow
from cuckoodist.retry import retrying
from cuckoodist.stages.base import Stage, describe

__all__ = ["ParseAndSubmit", "REPORT_PARSERS"]

#: Parsers that read report.json; C{dropped} reads the archive instead.
REPORT_PARSERS = frozenset({"info", "signatures", "behavior", "network"})


class ParseAndSubmit(Stage):
    kind = "parse_and_submit"

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        task = TaskMessage.decode(delivery.body)
        cfg = self.stage_config
        crits = self.crits_client(task.crits, cfg.crits_max_body)
        cuckoo = self.cuckoo_client(task.cuckoo_url)
        ids = describe(task.crits, task.task_id)
        if cfg.cuckoo_cleanup and not cfg.producer_queue and await self._already_cleaned_up(task, cuckoo, crits, ids):
            return
        parsers = REPORT_PARSERS.intersection(cfg.enabled_parsers)
        if parsers:
            await self._submit_report(task, cuckoo, crits, parsers, ids)
        if "dropped" in cfg.enabled_parsers:
            await self._submit_dropped(task, cuckoo, crits, ids)
        if cfg.producer_queue:
            await outbox.publish(cfg.producer_queue, task.encode())
            self.log.info("Parsed {ids}; forwarded to {queue}", ids=ids, queue=cfg.producer_queue)
            return
        await retrying(self.clock, lambda: crits.finish(), f"finish {ids}")
        self.log.info("Finished CRITs analysis {ids}", ids=ids)
        if cfg.cuckoo_cleanup:
            try:
                await retrying(self.clock, lambda: cuckoo.delete(task.task_id), f"delete {ids}")
            except CuckoodistError as e:
                # The results are in CRITs; a leftover task only costs disk.
                self.log.warn("Could not delete Cuckoo task {ids}: {why}", ids=ids, why=e.reason)

    async def _already_cleaned_up(self, task: TaskMessage, cuckoo: CuckooClient, crits: CritsClient, ids: str) -> bool:
        """
        Whether the task is gone from Cuckoo, so this message is a
        duplicate of one that finished.

        At-least-once delivery means duplicates: a redelivery after a lost
        ack, or a second copy of the task forked in check_results when it
        died between publishing and acking.  If an earlier copy finished
        the analysis, its cleanup deleted the task; doing the work again
        would wait for a report that never comes and end with the overseer
        marking a completed analysis as failed.  CRITs is told too: a
        duplicate adds a harmless line to a completed analysis, and a task
        deleted by hand before it was parsed leaves the analyst a reason.
        """
        try:
            await retrying(self.clock, lambda: cuckoo.view(task.task_id), f"check {ids}")
        except TaskNotFound:
            self.log.warn("Task is gone from Cuckoo: a duplicate of a delivery that finished and cleaned it up; dropping it ({ids})", ids=ids)
            note = f"Cuckoo task {task.task_id} no longer exists; nothing (more) to parse."
            await retrying(self.clock, lambda: crits.log(note, "warning"), f"log {ids}")
            return True
        return False

    async def _submit_report(self, task: TaskMessage, cuckoo: CuckooClient, crits: CritsClient, parsers: frozenset, ids: str) -> None:
        cfg = self.stage_config
        with tempfile.TemporaryFile(prefix="cuckoodist-report-") as spool:
            await self._download(spool, cuckoo.download_report, task.task_id, cfg.max_report_size, f"report {ids}")
            size = spool.tell()
            spool.seek(0)
            options = ExtractOptions(parsers=frozenset(parsers), api_calls_max=cfg.push_api_calls_max, task_id=task.task_id)
            extraction = await self._in_thread(extract_results, spool, options)
        requests = await self._post_rows(crits, extraction.rows, ids)
        self.log.info(
            "Posted {n} results from a {mb:.1f} MB Cuckoo {fmt} report in {r} request(s) ({ids})",
            n=len(extraction.rows),
            mb=size / 1e6,
            fmt=extraction.format,
            r=requests,
            ids=ids,
        )
        if "behavior" in parsers and extraction.api_calls_seen > cfg.push_api_calls_max:
            note = f"Pushed {cfg.push_api_calls_max} of {extraction.api_calls_seen} API calls (push_api_calls_max)."
            await retrying(self.clock, lambda: crits.log(note), f"log {ids}")

    async def _submit_dropped(self, task: TaskMessage, cuckoo: CuckooClient, crits: CritsClient, ids: str) -> None:
        cfg = self.stage_config
        source = task.crits.source
        rows: list[ResultRow] = []
        notes: list[str] = []
        with tempfile.NamedTemporaryFile(prefix="cuckoodist-dropped-") as spool:
            try:
                await self._download(spool, cuckoo.download_dropped, task.task_id, cfg.max_dropped_bytes, f"dropped files {ids}")
                spool.flush()
                unpacking = unpacked(spool.name, max_files=cfg.max_dropped_files, max_total_bytes=cfg.max_dropped_bytes)
                files, skipped = await self._in_thread(unpacking.__enter__)
            except (ArchiveError, BodyTooLarge) as e:
                # The report's results stand; say in CRITs why the dropped
                # files are missing instead of failing the whole analysis.
                note = f"Dropped files not processed: {e.reason}"
                self.log.warn("{note} ({ids})", note=note, ids=ids)
                await retrying(self.clock, lambda: crits.log(note, "warning"), f"log {ids}")
                return
            try:
                if files and not source:
                    raise PermanentError("crits_data.source is empty; CRITs needs a source to store dropped files")
                for dropped in files:
                    try:
                        sample_id, md5 = await retrying(
                            self.clock,
                            lambda: crits.upload_sample(dropped.name, dropped.path, source),
                            f"upload dropped {dropped.name!r} {ids}",
                        )
                        await retrying(self.clock, lambda: crits.relate(sample_id), f"relate {dropped.name!r} {ids}")
                    except PermanentError as e:
                        notes.append(f"Dropped file {dropped.name!r} not stored: {e.reason}")
                        continue
                    rows.append(ResultRow("file_added", dropped.name, {"md5": md5}))
            finally:
                await self._in_thread(unpacking.__exit__, None, None, None)
        await self._post_rows(crits, rows, ids)
        for note in notes + [f"Skipped archive entry: {why}" for why in skipped[:20]]:
            await retrying(self.clock, lambda: crits.log(note, "warning"), f"log {ids}")
        self.log.info("Stored {n} dropped file(s), {s} skipped ({ids})", n=len(rows), s=len(skipped) + len(notes), ids=ids)

    async def _download(self, spool: BinaryIO, fetch: Any, task_id: int, limit: int, what: str) -> None:
        """
        Stream one Cuckoo download into C{spool}, starting over on each
        retry: a report still being written answers 404 for a while.
        """

        async def attempt() -> None:
            spool.seek(0)
            spool.truncate()
            await fetch(task_id, spool, limit)

        await retrying(self.clock, attempt, what, attempts=6, base_delay=2.0)

    async def _post_rows(self, crits: CritsClient, rows: Sequence[ResultRow], ids: str) -> int:
        """
        Post C{rows} request by request, each retried on its own.

        @return: the number of requests.
        """
        count = 0
        for fields in crits.result_requests(rows):
            await retrying(self.clock, lambda: crits.post_request(fields), f"results {ids}")
            count += 1
        return count

    def _in_thread(self, f: Any, *args: Any) -> Any:
        reactor = self.context.reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
