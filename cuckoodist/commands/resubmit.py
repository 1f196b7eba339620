# -*- test-case-name: tests.test_resubmit -*-
"""
C{cuckoodist resubmit DUMP_DIR}: put dumped messages back on their queues.

Each file is removed only after the broker confirmed its message, so an
interrupted resubmit can simply be run again (at worst a message goes
twice).  The C{Retry} count is cleared: a resubmitted message gets the
full number of retries again.

Dump files hold messages the pipeline could not handle, so they are
hostile by construction.  Every file is judged on its own: one that
cannot be read, names a queue the broker could not take (or, with
C{-c}, a queue no configured stage consumes), is skipped with a reason
on one line, and the rest still go.  Every wait on the broker is bounded
by C{--timeout}.  Progress goes to stderr (L{cuckoodist.commands.progress}).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Iterable

import attrs
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.task import react
from twisted.python import usage

from cuckoodist.commands.arguments import OptionsAnywhere
from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.commands.progress import Progress
from cuckoodist.config import DEFAULT_AMQP_URL, load_config, parse_amqp_url
from cuckoodist.dump import DumpRecord, DumpStore
from cuckoodist.errors import ConfigError
from cuckoodist.messages import resubmittable
from cuckoodist.publish import publish_confirmed, with_connection

__all__ = ["ResubmitOptions", "plan_resubmit", "run", "resubmit"]

#: Seconds the whole publish (connecting included) may take by default.
DEFAULT_TIMEOUT = 60.0


class ResubmitOptions(OptionsAnywhere):
    """
    Command line of C{cuckoodist resubmit}.  C{DUMP_DIR} may come before or
    after the options, as with GNU tools: the README shows it first.
    """

    synopsis = "DUMP_DIR [--only-stage STAGE] [-c CONFIG | --amqp URL] [--any-queue] [--timeout SECONDS] [--no-progress]"
    longdesc = (
        "Publish the messages the overseer dumped in DUMP_DIR back to the queues they failed on, "
        "with their retry count cleared, and delete each file once the broker confirmed its "
        "message, so an interrupted run can simply be repeated. A file that cannot be read or "
        "names an unusable queue (with -c: a queue no stage of CONFIG consumes, unless "
        "--any-queue) is skipped with its reason on one line; the rest still go. A progress bar "
        "goes to stderr on a terminal, a line every few seconds otherwise. The broker is "
        "that of CONFIG, or --amqp, or a local RabbitMQ as guest. Exit status: 0 when done, 1 "
        "when the broker did not confirm everything within --timeout (the unconfirmed files are "
        "kept), 2 for bad usage.")
    examples = (
        "cuckoodist resubmit dump -c etc/cuckoodist.yaml",
        "cuckoodist resubmit /var/lib/cuckoodist/dump --only-stage parse_and_submit -c /etc/cuckoodist/cuckoodist.yaml",
    )
    optParameters = [
        ["config", "c", None, "Take the AMQP URL and the allowed queues from this configuration file."],
        ["amqp", None, None, "AMQP URL (default: amqp://guest:guest@127.0.0.1:5672/)."],
        ["only-stage", None, None, "Resubmit only messages that failed in this stage (e.g. parse_and_submit)."],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for the broker before giving up.", float],
    ]
    optFlags = [
        ["any-queue", None, "With -c, also resubmit to queues that configuration does not consume."],
        ["no-progress", None, "Show no progress on stderr."],
    ]

    def parseArgs(self, dump_dir: str) -> None:
        self["dump_dir"] = dump_dir

    def postOptions(self) -> None:
        if self["config"] and self["amqp"]:
            raise usage.UsageError("give -c/--config or --amqp, not both")
        if self["any-queue"] and not self["config"]:
            raise usage.UsageError("--any-queue only makes sense with -c/--config")
        if not 0 < self["timeout"] < float("inf"):
            raise usage.UsageError("--timeout must be a positive number of seconds")
        if not os.path.isdir(self["dump_dir"]):
            raise usage.UsageError(f"{_shown(self['dump_dir'])} is not a directory")
        self["allowed_queues"] = None
        self["queue_type"] = None
        try:
            if self["config"]:
                config = load_config(self["config"])
                if not self["any-queue"]:
                    self["allowed_queues"] = frozenset(s.consumer_queue for s in config.stages)
                self["amqp_config"] = config.amqp_nodes
                self["queue_type"] = config.queue_type
            else:
                self["amqp_config"] = parse_amqp_url(self["amqp"] or DEFAULT_AMQP_URL, ("--amqp",))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _shown(text: str) -> str:
    """
    Text from a dump file or a file name, fit for one terminal line: quoted
    with escapes unless it is plainly printable.
    """
    return text if text.isprintable() else ascii(text)


@attrs.frozen
class _Plan:
    """
    What a run will publish, and what it skips and why.

    @ivar chosen: C{(path, queue, body)} for each file to resubmit.
    @ivar skipped: C{(path, reason)}; the reason is C{""} for files of
        other stages, which are not worth a line each.
    """

    chosen: list[tuple[str, str, bytes]]
    skipped: list[tuple[str, str]]


def plan_resubmit(
    entries: Iterable[tuple[str, DumpRecord | None, str]],
    only_stage: str | None,
    allowed_queues: frozenset[str] | None,
) -> _Plan:
    """
    Judge each dump file on its own: what goes back to which queue, with
    its retry count cleared, and what is skipped and why.  This command
    and the dashboard's resubmit button (L{cuckoodist.dashboard.resubmit})
    both decide here.

    @param entries: C{(path, record, problem)} as L{DumpStore} yields them.
    """
    chosen: list[tuple[str, str, bytes]] = []
    skipped: list[tuple[str, str]] = []
    for path, record, problem in entries:
        if record is None:
            skipped.append((path, problem or "unreadable"))
        elif only_stage and record.stage != only_stage:
            skipped.append((path, ""))
        elif not record.queue:
            skipped.append((path, "it names no queue"))
        elif (why := queue_name_problem(record.queue)) is not None:
            skipped.append((path, f"invalid queue: {why}"))
        elif allowed_queues is not None and record.queue not in allowed_queues:
            skipped.append(
                (path, f"queue {_shown(record.queue)} is not consumed by any configured stage (see --any-queue)")
            )
        else:
            chosen.append((path, record.queue, resubmittable(record.message)))
    return _Plan(chosen, skipped)


async def resubmit(
    reactor: Any,
    amqp: Any,
    dump_dir: str,
    only_stage: str | None,
    out: IO[str] = sys.stdout,
    *,
    allowed_queues: frozenset[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress_stream: IO[str] | None = None,
    queue_type: str | None = None,
) -> tuple[int, int]:
    """
    Resubmit the dump files in C{dump_dir}.

    @param allowed_queues: the only queues messages may go to, or C{None}
        for any valid queue name.
    @param timeout: seconds the publish may take, connecting included;
        files not confirmed by then stay for the next run.
    @param progress_stream: where to show progress (a bar on a terminal,
        plain lines otherwise); C{None} for none.
    @param queue_type: the configuration's C{queue_type}: the type of a
        queue that has to be created.
    @param amqp: an L{AmqpConfig}, or the nodes of a cluster.
    @return: C{(resubmitted, skipped)}.
    @raise TimeoutError: when the broker did not confirm everything in
        time (after the summary line is printed).
    """
    plan = plan_resubmit(DumpStore(dump_dir), only_stage, allowed_queues)
    for path, reason in plan.skipped:
        if reason:
            print(f"skipped {_shown(path)}: {reason}", file=out)
    total = len(plan.chosen)
    done = 0
    progress = Progress(total, "resubmitted", reactor.seconds, progress_stream, enabled=progress_stream is not None)

    def confirmed(index: int) -> None:
        nonlocal done
        os.unlink(plan.chosen[index][0])
        done += 1
        progress.advance()
        if done == total:
            progress.echo(f"resubmitted {done}/{total}", out)

    failure: str | None = None
    if plan.chosen:
        messages = [(queue, body) for _, queue, body in plan.chosen]
        try:
            await with_connection(
                reactor, amqp, lambda connection: publish_confirmed(connection, messages, confirmed), timeout, queue_type
            )
        except DeferredTimeout:
            failure = (
                f"the broker did not confirm every message within {timeout:g} s; "
                f"{total - done} file(s) kept for the next run"
            )
    progress.finish()
    print(f"resubmitted {done}, skipped {len(plan.skipped)}", file=out)
    if failure is not None:
        raise TimeoutError(failure)
    return done, len(plan.skipped)


def run(options: ResubmitOptions) -> int:
    """
    Run C{cuckoodist resubmit}; exit 1 when the broker timed out.
    """

    async def main(reactor: Any) -> None:
        try:
            await resubmit(
                reactor,
                options["amqp_config"],
                options["dump_dir"],
                options["only-stage"],
                allowed_queues=options["allowed_queues"],
                timeout=options["timeout"],
                progress_stream=None if options["no-progress"] else sys.stderr,
                queue_type=options["queue_type"],
            )
        except TimeoutError as e:
            print(f"cuckoodist resubmit: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        return e.code or 0
    return 0
