# -*- test-case-name: tests.test_stage_feed_cuckoo,tests.test_feed_capacity,tests.test_feed_upload,tests.test_request_budget -*-
"""
feed_cuckoo: upload a sample to one Cuckoo and hand the task on.

One instance feeds one Cuckoo; to add a Cuckoo, add a feed_cuckoo stage
for it, on the same queue.  An instance never sits on a request while its
Cuckoo is full: its consumer asks the L{CapacityGate} before each delivery,
and when there is no room it hands the delivery back and stops consuming,
so the broker gives the queue to the instances whose Cuckoo has room (and
no delivery outlives the broker's C{consumer_timeout}).  It consumes again
once a status probe finds room.  Admissions and the probe loop share the
gate's one status answer, so Cuckoo is asked at most once per
C{status_interval}, not once per upload.

An upload is made at most once per delivery: it is repeated here only when
it provably never reached Cuckoo.

A request by reference (C{file.md5}, no C{file.data}) is fetched from the
CRITs that the request names (through L{Stage.crits_client}, so only an
allowed CRITs, with its own credentials): the zip CRITs sends is streamed
to a private temporary directory, bounded by C{max_sample_size}, opened
with C{zip_password} in a worker thread (L{cuckoodist.sample_zip}), checked
against the md5 (and sha256), and streamed from the file to Cuckoo.  A
missing sample, a wrong password, a digest mismatch, an oversize sample or
an archive CRITs would not make is a permanent error: the overseer ends the
analysis with the reason and dumps the message.
"""

import os
import tempfile
import threading
from typing import Any, Mapping

import attrs
from twisted.internet.defer import CancelledError, Deferred

from cuckoodist.amqp.consumer import Delivery, Outbox
from cuckoodist.crits import CritsClient
from cuckoodist.node_status import node_board
from cuckoodist.errors import ConfigError
from cuckoodist.http import BodyTooLarge, NotSent
from cuckoodist.messages import AnalysisRequest, TaskMessage
from cuckoodist.retry import retrying
from cuckoodist.sample_context import identify
from cuckoodist.sample_zip import SampleTooLarge, extract_sample
from cuckoodist.settings import Path, boolean, integer, seconds, setting, text
from cuckoodist.stages.base import Stage, StageContext, describe
from cuckoodist.stages.capacity import CapacityGate
from cuckoodist.stages.keys import StageSettings, consumes, fails_to, prefetch, priorities, produces, stage_type

__all__ = ["FeedCuckoo", "FeedCuckooConfig"]


@attrs.frozen(kw_only=True)
class FeedCuckooConfig(StageSettings):
    """
    Settings of a stage that uploads samples to one Cuckoo.

    @ivar cuckoo: the name of an entry of L{Config.cuckoo}.
    @ivar max_pending: upload only while Cuckoo has fewer pending tasks.
    @ivar min_free_space: bytes of free disk Cuckoo must report when
        C{check_free_space} is set.
    @ivar status_interval: seconds a status answer is good for; also the
        time between probes while Cuckoo is full.
    @ivar max_sample_size: the largest sample accepted, in bytes, inline
        or fetched from CRITs (the download is bounded by it too).
    @ivar zip_password: the password of the zips CRITs sends (its
        C{zip7_password}); never logged.
    """

    type: str = stage_type("feed_cuckoo")
    consumer_queue: str = consumes("worker/feed_cuckoo")
    producer_queue: str = produces("worker/check_results")
    failed_queue: str = fails_to()
    prefetch_count: int = prefetch(1)
    max_priority: int = priorities()
    cuckoo: str = setting(check=text(empty=False))
    max_pending: int = setting(10, integer(1))
    check_free_space: bool = setting(False, boolean)
    min_free_space: int = setting(256 * 1024 * 1024, integer(0))
    status_interval: float = setting(10.0, seconds(zero=False))
    max_sample_size: int = setting(128 * 1024 * 1024, integer(1))
    zip_password: str = setting("infected", text(), repr=False)

    def check(self, path: Path, cuckoos: Mapping[str, Any]) -> None:
        if self.cuckoo not in cuckoos:
            known = ", ".join(sorted(cuckoos)) or "none are configured"
            raise ConfigError(f"unknown cuckoo {self.cuckoo!r} (known: {known})", path + ("cuckoo",))


class FeedCuckoo(Stage):
    config_class = FeedCuckooConfig

    def __init__(self, context: StageContext, stage_config: Any) -> None:
        super().__init__(context, stage_config)
        instance = context.config.cuckoo[stage_config.cuckoo]
        self.cuckoo = self.cuckoo_client(instance.url)
        self.gate = CapacityGate(
            self.cuckoo,
            context.reactor,
            stage_config.max_pending,
            stage_config.min_free_space if stage_config.check_free_space else None,
            stage_config.status_interval,
            on_status=node_board(context).reporter(stage_config.cuckoo),
        )
        self._room_watch: Deferred | None = None
        self.consumer.admit_with(self._admit)

    def stopService(self) -> Deferred:
        self.gate.stop()
        return super().stopService()

    async def _admit(self, delivery: Delivery) -> bool:
        """
        Whether Cuckoo has room for this request now.  A refusal makes the
        consumer hand the delivery back and pause; it resumes when the gate
        finds room again.
        """
        if await self.gate.admit():
            return True
        if self._room_watch is None:
            self._room_watch = self.gate.when_room()
            self._room_watch.addCallbacks(self._room_again, lambda f: f.trap(CancelledError))
        return False

    def _room_again(self, _: object) -> None:
        self._room_watch = None
        self.consumer.resume()

    async def process(self, delivery: Delivery, outbox: Outbox) -> None:
        request = AnalysisRequest.decode(delivery.body)
        self.received(request.crits.analysis_id, cuckoo=self.cuckoo.name, sample_name=request.file_name)
        # Fail early, before using sandbox time, when results could not be delivered.
        crits = self.crits_client(request.crits)
        ids = describe(request.crits)
        limit = self.stage_config.max_sample_size
        if request.file_data is not None:
            if len(request.file_data) > limit:
                raise SampleTooLarge(f"the sample is {len(request.file_data)} bytes, over max_sample_size ({limit} bytes)")
            size = len(request.file_data)
            task_id = await self._upload(request, request.file_data, ids)
        else:
            with tempfile.TemporaryDirectory(prefix="cuckoodist-sample-") as work:
                path = await self._fetch(request, crits, work, ids)
                size = os.path.getsize(path)
                task_id = await self._upload(request, path, ids)
        identify(task_id=task_id)
        self.log.info(
            "Submitted {name} ({size} bytes{how}) as task {task} on {url} for analysis={analysis}",
            name=request.file_name,
            size=size,
            how=", fetched from CRITs" if request.by_reference else "",
            task=task_id,
            url=self.cuckoo.url,
            analysis=request.crits.analysis_id,
            event="uploaded",
            cuckoo=self.cuckoo.name,
            task_id=task_id,
            bytes=size,
        )
        submitted_at = self.clock.seconds()
        # check_results asks Cuckoo first when the analysis should be over;
        # without a timeout here it counts Cuckoo's default.
        timeout = self.cuckoo.timeout_of(request.payload)
        task = TaskMessage(
            task_id=task_id,
            cuckoo_url=self.cuckoo.url,
            crits=request.crits,
            submitted_at=submitted_at,
            requested_at=request.requested_at,
            priority=request.priority,
            expected_end=submitted_at + timeout if timeout is not None else None,
        )
        await outbox.publish(self.stage_config.producer_queue, task.encode(), priority=task.priority)

    async def _upload(self, request: AnalysisRequest, sample: "bytes | str", ids: str) -> int:
        # After a timeout or a 5xx, Cuckoo may well have created the task:
        # uploading again at once could analyse the sample twice and leave
        # a task nobody deletes.  Such failures go to the overseer, whose
        # retry comes minutes later; only an upload that never left is
        # repeated here.
        started = self.clock.seconds()
        task_id = await retrying(
            self.clock,
            lambda: self.cuckoo.submit(request.file_name, sample, request.payload, request.priority),
            f"upload {ids}",
            retry_on=NotSent,
        )
        # Successful uploads only, waits for the node's request cap included.
        self.context.metrics.upload_seconds.labels(self.cuckoo.name).observe(self.clock.seconds() - started)
        return task_id

    async def _fetch(self, request: AnalysisRequest, crits: CritsClient, work: str, ids: str) -> str:
        """
        Download the sample's zip from CRITs into C{work}, extract and
        verify it there.

        @return: the path of the verified sample.
        @raise SampleRefused: missing, wrong password, digest mismatch,
            oversize, or not an archive CRITs makes.
        """
        cfg = self.stage_config
        archive = os.path.join(work, "sample.zip")
        with open(archive, "wb") as spool:
            try:
                await self.download(
                    spool, lambda to: crits.download_sample(request.md5, to, cfg.max_sample_size + _ZIP_OVERHEAD), f"download sample {ids}"
                )
            except BodyTooLarge:
                raise SampleTooLarge(
                    f"CRITs' archive of sample {request.md5} is larger than max_sample_size ({cfg.max_sample_size} bytes) allows"
                ) from None
        sample = os.path.join(work, request.md5)
        stop = threading.Event()
        with open(sample, "wb") as sink:
            await self.in_thread(
                lambda: extract_sample(archive, sink, request.md5, cfg.zip_password, cfg.max_sample_size, request.sha256, stop),
                on_cancel=stop.set,
            )
        os.unlink(archive)
        return sample


#: What a zip adds to a sample it stores: headers, the member name, the
#: 12-byte ZipCrypto header; deflate can only add a little to data it
#: cannot compress, and zip stores such data instead.
_ZIP_OVERHEAD = 64 * 1024
