# -*- test-case-name: tests.test_submit -*-
"""
C{cuckoodist submit FILE...}: publish analysis requests for sample files,
as the CRITs-side service does, for an operator or a script.

Each file becomes one inline request (L{AnalysisRequest}, built and then
decoded by the same code feed_cuckoo decodes with, so a request this
command sends is one feed_cuckoo takes), published persistent and
confirmed to the feed_cuckoo stage's queue.  Every file is judged on its
own: one that cannot be read, is empty or is larger than a request may
carry is refused with its reason on one line, and the others still go.
Stdout has one line per file, C{submitted ANALYSIS_ID FILE} once the
broker confirmed it (or C{refused FILE: REASON}), so that a script can
follow each analysis with C{cuckoodist trace ANALYSIS_ID}, and a last
line starting C{done:} with the counts.

Results go to a CRITs analysis: the pipeline's last stage posts every
task's results to the analysis its request names and finishes it there;
there is no path through the pipeline that ends elsewhere.  So a request
needs the CRITs object it analyses (C{--object-id}, one per file) and
the source dropped files are stored under (C{--source}); the analysis id
is a fresh UUID per file unless given (C{--analysis-id}, one per file).
A real CRITs keeps results only for an analysis it created (an unknown
id loses them, and refuses the log line, so the analysis ends dumped):
give the ids CRITs made.  The request names no CRITs URL and carries no
key, so the daemon posts to its configured CRITs with its own
credentials, and no secret passes through the broker.  C{--no-crits} is
therefore a dry run: every file is read, checked and built into the
request it would be, and nothing is published.

Samples travel base64 in the message, so large files are bounded twice:
by C{max_sample_size} of the feed stage that consumes the queue, and by
L{MAX_INLINE_BYTES}, what a message can carry through a broker that
refuses messages over 128 MiB (RabbitMQ's default C{max_message_size}).
Files are read and published in batches of at most L{BATCH_BYTES} of
messages, so memory does not grow with the number of files.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from typing import IO, Any

import attrs
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.threads import deferToThreadPool
from twisted.python import usage

from cuckoodist.commands.progress import Progress
from cuckoodist.commands.arguments import OptionsAnywhere, exit_status, positive_seconds
from cuckoodist.config import DEFAULT_AMQP_URL, load_config, parse_amqp_url
from cuckoodist.errors import ConfigError, InvalidMessage
from cuckoodist.messages import PRIORITIES, AnalysisRequest, CritsData
from cuckoodist.publish import publish_confirmed, with_connection
from cuckoodist.stages.keys import max_priorities

__all__ = ["BATCH_BYTES", "MAX_INLINE_BYTES", "SubmitOptions", "run", "submit"]

#: RabbitMQ refuses messages over 128 MiB by default, and base64 adds a
#: third: the largest sample one inline request carries (as the CRITs
#: service's own bound).
MAX_INLINE_BYTES = 96 * 1024 * 1024
#: Bytes of messages read and held at once before they are published.
BATCH_BYTES = 64 * 1024 * 1024
#: Seconds the whole publish (connecting included) may take by default.
DEFAULT_BROKER_TIMEOUT = 300.0


def _priority(value: str) -> int:
    if value.strip() not in {str(p) for p in PRIORITIES}:
        raise ValueError(f"--priority takes 1, 2 or 3, not {value!r}")
    return int(value)


def _analysis_timeout(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 10**7:
        raise ValueError(f"--analysis-timeout takes a whole number of seconds, not {value!r}")
    return int(value)


class SubmitOptions(OptionsAnywhere):
    """
    Command line of C{cuckoodist submit}.  Files and options may come in
    any order, as with GNU tools.
    """

    synopsis = (
        "FILE... (-c CONFIG | --amqp URL --queue QUEUE) (--object-id ID... --source SOURCE | --no-crits) "
        "[--analysis-id ID...] [--object-type TYPE] [--package P] [--options O] [--priority 1-3] "
        "[--analysis-timeout SECONDS] [--machine M] [--tags T] [--broker-timeout SECONDS] [--no-progress]"
    )
    longdesc = (
        "Publish one analysis request per FILE to the feed_cuckoo stage's queue of CONFIG (or "
        "--queue), as the CRITs service does: persistent, with publisher confirms, the sample "
        "inline. Each confirmed file prints 'submitted ANALYSIS_ID FILE' on stdout; follow it with "
        "'cuckoodist trace ANALYSIS_ID'. The results go to the CRITs the daemon is configured "
        "with, into the analysis ANALYSIS_ID of the object --object-id (given once per file, in "
        "the files' order); the analysis ids are fresh UUIDs unless --analysis-id gives one per "
        "file. A real CRITs keeps results only for analyses it created, so give the ids it made. "
        "--no-crits is a dry run: the pipeline always ends by posting to a CRITs analysis, so "
        "without one each file is only checked and built into its request, and nothing is "
        "published. A file that cannot be read, is empty, or is larger than the feed stage's "
        "max_sample_size or the 96 MiB an inline request carries is refused with its reason on "
        "one line; the others still go. A progress bar goes to stderr on a terminal, a line "
        "every few seconds otherwise. Exit status: 0 when every file was submitted (or checked), "
        "1 when a file was refused or the broker did not confirm everything within "
        "--broker-timeout, 2 for bad usage.")
    examples = (
        "cuckoodist submit sample.exe -c etc/cuckoodist.yaml --object-id 5f1c... --source analysts",
        "cuckoodist submit a.doc b.doc -c etc/cuckoodist.yaml --package doc --priority 3 "
        "--object-id ID_A --object-id ID_B --source analysts",
        "cuckoodist submit samples/* -c etc/cuckoodist.yaml --no-crits",
    )
    optParameters = [
        ["config", "c", None, "The daemon's configuration: the broker, the feed_cuckoo queue and its limits."],
        ["amqp", None, None, "AMQP URL, without -c (default: amqp://guest:guest@127.0.0.1:5672/)."],
        ["queue", None, None, "Publish to this queue instead of the first feed_cuckoo stage's of CONFIG."],
        ["object-type", None, "Sample", "The CRITs type of the analysed objects."],
        ["source", None, None, "The CRITs source dropped files are stored under."],
        ["package", None, None, "Cuckoo's analysis package (exe, doc, pdf, ...)."],
        ["options", None, None, "Cuckoo's options, e.g. procmemdump=yes,route=none."],
        ["machine", None, None, "The Cuckoo machine to use."],
        ["tags", None, None, "Cuckoo machine tags, comma-separated."],
        ["analysis-timeout", None, None, "Seconds Cuckoo lets each analysis run.", _analysis_timeout],
        ["priority", None, None, "Cuckoo's task priority, 1 to 3; also the messages' AMQP priority.", _priority],
        ["broker-timeout", None, DEFAULT_BROKER_TIMEOUT, "Seconds the broker may take to confirm everything.", positive_seconds("--broker-timeout")],
    ]
    optFlags = [
        ["no-crits", None, "Dry run: check and build each request, publish nothing."],
        ["no-progress", None, "Show no progress on stderr."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["object-ids"] = []
        self["analysis-ids"] = []

    def opt_object_id(self, value: str) -> None:
        """
        The CRITs object a file is the sample of; once per file, in order.
        """
        self["object-ids"].append(value)

    def opt_analysis_id(self, value: str) -> None:
        """
        The CRITs analysis for a file's results; once per file, in order (default: a new UUID each).
        """
        self["analysis-ids"].append(value)

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("name at least one FILE to submit")
        self["files"] = list(files)

    def postOptions(self) -> None:
        files = self["files"]
        if self["config"] and self["amqp"]:
            raise usage.UsageError("give -c/--config or --amqp, not both")
        if self["no-crits"]:
            if self["object-ids"] or self["source"]:
                raise usage.UsageError("--no-crits is a dry run: it takes no --object-id or --source")
        else:
            if len(self["object-ids"]) != len(files):
                raise usage.UsageError(
                    f"give --object-id once per file ({len(files)} file(s), {len(self['object-ids'])} "
                    "--object-id), or --no-crits for a dry run")
            if not self["source"]:
                raise usage.UsageError("--source is required: CRITs stores dropped files under a source")
        ids = self["analysis-ids"]
        if ids and len(ids) != len(files):
            raise usage.UsageError(f"give --analysis-id once per file ({len(files)} file(s), {len(ids)} --analysis-id) or not at all")
        if len(set(ids)) != len(ids):
            raise usage.UsageError("each --analysis-id must be different")
        self["queue_type"] = None
        self["max_priorities"] = {}
        self["max_sample_size"] = MAX_INLINE_BYTES
        self["limit_name"] = None
        try:
            if self["config"]:
                self._from_config(load_config(self["config"]))
            else:
                self["amqp_config"] = parse_amqp_url(self["amqp"] or DEFAULT_AMQP_URL, ("--amqp",))
                if not self["queue"]:
                    raise usage.UsageError("without -c/--config, --queue names the feed_cuckoo queue")
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _from_config(self, config: Any) -> None:
        """
        Take the broker, the queue and its feed stage's limits from the
        daemon's configuration.
        """
        feeds = [s for s in config.stages if s.type == "feed_cuckoo"]
        if not self["queue"]:
            if not feeds:
                raise usage.UsageError("the configuration has no feed_cuckoo stage: name its queue with --queue")
            self["queue"] = feeds[0].consumer_queue
        if not self["no-crits"] and config.crits is None:
            raise usage.UsageError(
                "the configuration has no crits section: the requests name no CRITs, so the daemon "
                "would have nowhere to post the results")
        feed = next((s for s in feeds if s.consumer_queue == self["queue"]), None)
        if feed is not None:
            self["max_sample_size"] = min(MAX_INLINE_BYTES, feed.max_sample_size)
            self["limit_name"] = f"max_sample_size of the feed_cuckoo stage on {self['queue']}"
        self["amqp_config"] = config.amqp_nodes
        self["queue_type"] = config.queue_type
        self["max_priorities"] = max_priorities(config)

    def __repr__(self) -> str:
        return "<SubmitOptions>"


@attrs.frozen
class _File:
    """
    One file to submit, and the CRITs analysis it goes to.
    """

    path: str
    analysis_id: str
    object_id: str


class _Refused(Exception):
    """
    A file that cannot be submitted; the message is the reason.
    """


def _shown(path: str) -> str:
    return path if path.isprintable() else ascii(path)


def _size_problem(size: int, options: SubmitOptions) -> str | None:
    limit = options["max_sample_size"]
    if size == 0:
        return "the file is empty"
    if size > limit:
        why = options["limit_name"] if limit < MAX_INLINE_BYTES else None
        return (f"{size} bytes, over the {limit} bytes " +
                (f"allowed by {why}" if why else "a request carries inline (the broker refuses messages over 128 MiB)"))
    return None


def _request(item: _File, options: SubmitOptions, now: float) -> bytes:
    """
    Read one file and build its request, checked as feed_cuckoo will
    check it, stamped C{requested_at} C{now}.  Runs in a worker thread.

    @raise _Refused: the file cannot be read or sent.
    """
    try:
        with open(item.path, "rb") as fp:
            data = fp.read(options["max_sample_size"] + 1)
    except OSError as e:
        raise _Refused(f"cannot read it: {e.strerror or e}") from None
    problem = _size_problem(len(data), options)
    if problem is not None:
        raise _Refused(problem)
    md5 = hashlib.md5(data).hexdigest()
    payload = {key: str(options[key]) for key in ("package", "options", "machine", "tags") if options[key]}
    if options["analysis-timeout"]:
        payload["timeout"] = str(options["analysis-timeout"])
    request = AnalysisRequest(
        payload=payload,
        file_name=os.fsencode(os.path.basename(item.path)).decode("utf-8", "replace"),
        file_data=data,
        crits=CritsData(
            analysis_id=item.analysis_id,
            object_type=options["object-type"],
            object_id=item.object_id,
            md5=md5,
            source=options["source"] or "",
        ),
        md5=md5,
        sha256=hashlib.sha256(data).hexdigest(),
        priority=options["priority"],
        requested_at=now,
    )
    body = request.encode()
    try:
        AnalysisRequest.decode(body)
    except InvalidMessage as e:
        raise _Refused(f"the request would be refused: {e}") from None
    return body


async def submit(reactor: Any, options: SubmitOptions, out: IO[str] = sys.stdout, progress_stream: IO[str] | None = None) -> int:
    """
    Submit (or, with C{--no-crits}, check) every file of C{options}.

    @param progress_stream: where to show progress; C{None} for none.
    @return: 0 when every file went, else 1.
    """
    files = options["files"]
    analysis_ids = options["analysis-ids"] or [str(uuid.uuid4()) for _ in files]
    object_ids = options["object-ids"] or ["dry-run"] * len(files)
    items = [_File(path, analysis_id, object_id) for path, analysis_id, object_id in zip(files, analysis_ids, object_ids)]
    dry = options["no-crits"]
    progress = Progress(len(items), "files", reactor.seconds, progress_stream,
                        enabled=progress_stream is not None)
    refused = 0
    sent = 0

    def refuse(item: _File, why: str) -> None:
        nonlocal refused
        refused += 1
        progress.advance()
        progress.echo(f"refused {_shown(item.path)}: {why}", out)

    # Refuse what is plainly too large before reading anything.
    chosen: list[_File] = []
    for item in items:
        try:
            problem = _size_problem(os.stat(item.path).st_size, options)
        except OSError as e:
            problem = f"cannot read it: {e.strerror or e}"
        if problem is None:
            chosen.append(item)
        else:
            refuse(item, problem)

    async def built(batch: list[_File]) -> list[tuple[_File, bytes]]:
        bodies = []
        for item in batch:
            try:
                bodies.append((item, await deferToThreadPool(reactor, reactor.getThreadPool(), _request, item, options, reactor.seconds())))
            except _Refused as e:
                refuse(item, str(e))
        return bodies

    async def publish_all(connection: Any) -> None:
        for batch in _batches(chosen, options["max_sample_size"]):
            bodies = await built(batch)

            def confirmed(index: int) -> None:
                nonlocal sent
                item = bodies[index][0]
                sent += 1
                progress.advance()
                progress.echo(f"submitted {item.analysis_id} {_shown(item.path)}", out)

            await publish_confirmed(
                connection, [(options["queue"], body) for _, body in bodies], confirmed,
                max_priorities=options["max_priorities"], priorities=[options["priority"]] * len(bodies))

    failure: str | None = None
    if dry:
        for item, _body in await built(chosen):
            sent += 1
            progress.advance()
            progress.echo(f"checked {item.analysis_id} {_shown(item.path)}", out)
    elif chosen:
        try:
            await with_connection(reactor, options["amqp_config"], publish_all, options["broker-timeout"],
                                  queue_type=options["queue_type"])
        except DeferredTimeout:
            failure = (f"the broker did not confirm every request within {options['broker-timeout']:g} s; "
                       f"{len(chosen) - sent} file(s) not confirmed (they may still arrive)")
    progress.finish()
    if dry:
        print(f"done: {sent} of {len(items)} file(s) checked, {refused} refused; nothing published (--no-crits)", file=out)
    else:
        print(f"done: {sent} of {len(items)} file(s) submitted to {_shown(options['queue'])}, {refused} refused", file=out)
    if failure is not None:
        print(f"cuckoodist submit: {failure}", file=sys.stderr)
    return 0 if sent == len(items) else 1


def _batches(items: list[_File], max_size: int) -> list[list[_File]]:
    """
    C{items} in groups whose messages together stay near L{BATCH_BYTES},
    by file size (a message is about 4/3 of its file), one file at least.
    """
    batches: list[list[_File]] = []
    current: list[_File] = []
    size = 0
    for item in items:
        try:
            cost = min(os.stat(item.path).st_size, max_size) * 4 // 3 + 1024
        except OSError:
            cost = 1024
        if current and size + cost > BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += cost
    if current:
        batches.append(current)
    return batches


def run(options: SubmitOptions) -> int:
    """
    Run C{cuckoodist submit}.
    """
    return exit_status(
        lambda reactor: submit(reactor, options, progress_stream=None if options["no-progress"] else sys.stderr)
    )
