# -*- test-case-name: tests.test_status -*-
"""
C{cuckoodist status -c CONFIG}: what the broker, the disk and the daemon
say about one configuration's pipeline, at a glance.

For each configured stage: its queue's depth and consumer count (and its
C{.cleanup} queue's, for a parse_and_submit that cleans up); the delay
queues this configuration can publish through that exist, with their
depths; each overseer's dump directory, its file count and oldest entry;
and the daemon's readiness, from its operations listener's C{/readyz}.

Looking must change nothing: queues are asked by passive declare
(L{cuckoodist.amqp.queue_depth}), so a missing queue is reported as
missing, never created with arguments that are not its consumer's; dump
files are counted by name, never opened.  A broker that cannot be
reached is the one thing a user trying a configuration most needs to
hear about, so it ends the command with one line naming the node and
the reason, and exit status 1.  A daemon whose listener does not answer
is a state to show (it may simply not run here), not an error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any, Sequence

import attrs
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, _parseServer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from cuckoodist.commands.arguments import exit_status, positive_seconds
from cuckoodist.amqp.connection import AMQPConnectionService, where
from cuckoodist.amqp.connection_log import why_connect_failed
from cuckoodist.amqp.protocol import describe_close
from cuckoodist.amqp.queue_depth import QueueDepth, queue_depths
from cuckoodist.amqp.topology import delay_name
from cuckoodist.config import Config, load_config
from cuckoodist.errors import ConfigError

__all__ = [
    "StatusOptions",
    "Status",
    "BrokerUnreachable",
    "close_broker",
    "configured_delays",
    "connect_broker",
    "gather_status",
    "render_table",
    "render_json",
    "run",
]

#: Seconds the broker may take, connecting included, by default.
DEFAULT_TIMEOUT = 10.0
#: Seconds the daemon's C{/readyz} may take: a listener that takes longer
#: is as good as not answering for someone looking at a status.
READY_TIMEOUT = 3.0
#: Seconds closing the connection may take before we stop waiting.
_CLOSE_TIMEOUT = 5.0


class StatusOptions(usage.Options):
    """
    Command line of C{cuckoodist status}.
    """

    synopsis = "[-c CONFIG] [--json] [--timeout SECONDS]"
    longdesc = (
        "Show, for each stage of CONFIG, its queue's depth and consumer count, the delay queues "
        "CONFIG's stages publish through (those that exist) with their depths, each overseer's "
        "dump directory (how many files, the oldest), and whether the daemon is ready, from its "
        "metrics listener's /readyz. Queues are asked by passive declare: nothing is created, "
        "and a queue that does not exist is shown as missing. Exit status: 0 when everything "
        "could be read (missing queues included), 1 when the configuration is bad, the broker "
        "cannot be reached or a dump directory cannot be read, 2 for bad usage.")
    examples = (
        "cuckoodist status -c etc/cuckoodist.yaml",
        "cuckoodist status -c /etc/cuckoodist/cuckoodist.yaml --json",
    )
    optParameters = [
        ["config", "c", "/etc/cuckoodist/cuckoodist.yaml", "The daemon's configuration."],
        ["timeout", None, DEFAULT_TIMEOUT, "Seconds to wait for the broker, connecting included.", positive_seconds("--timeout")],
    ]
    optFlags = [
        ["json", None, "Print one JSON document instead of tables."],
    ]


class BrokerUnreachable(Exception):
    """
    No node of the configuration's broker could be logged in to; the
    message is one line naming each node tried (never a password) and why.
    """


@attrs.frozen
class QueueRow:
    """
    One queue of a stage.

    @ivar stage: the stage's index in C{stages}.
    @ivar kind: the stage's type.
    @ivar role: C{consumer} for the queue the stage consumes, C{cleanup}
        for a parse_and_submit's clean-up queue.
    @ivar depth: what the broker says, C{None} for a missing queue.
    """

    stage: int
    kind: str
    role: str
    queue: str
    depth: QueueDepth | None


@attrs.frozen
class DelayRow:
    """
    A delay queue that exists.

    @ivar delay: seconds it holds a message.
    """

    queue: str
    delay: float
    depth: QueueDepth


@attrs.frozen
class DumpRow:
    """
    An overseer's dump directory.

    @ivar state: C{ok}, C{missing} (nothing dumped yet), or C{error}
        (C{error} says why it cannot be read).
    @ivar oldest: the name of the oldest dump file, C{None} when empty.
    @ivar oldest_age: seconds since that file was dumped.
    """

    stage: int
    path: str
    state: str
    count: int = 0
    oldest: str | None = None
    oldest_age: float | None = None
    error: str | None = None


@attrs.frozen
class Readiness:
    """
    What the daemon's operations listener says.

    @ivar state: C{ready}, C{not ready}, C{not answering}, C{off} (no
        listener configured) or C{unknown} (a listener that cannot be asked
        from here, e.g. on port 0).
    @ivar url: what was asked, if anything.
    @ivar reasons: why it is not ready, as it says, or why it could not
        be asked.
    """

    state: str
    url: str | None = None
    reasons: tuple[str, ...] = ()


@attrs.frozen
class Status:
    """
    Everything C{status} found.

    @ivar broker: C{host:port/vhost} of the node that answered.
    @ivar missing_delays: how many delays this configuration can use whose
        queues do not exist (yet).
    """

    config_path: str
    broker: str
    queues: tuple[QueueRow, ...]
    delays: tuple[DelayRow, ...]
    missing_delays: int
    dumps: tuple[DumpRow, ...]
    readiness: Readiness

    @property
    def complete(self) -> bool:
        """
        Whether everything could be read (missing queues are an answer).
        """
        return all(row.state != "error" for row in self.dumps)


def stage_queues(config: Config) -> list[tuple[int, str, str, str]]:
    """
    C{(stage index, type, role, queue)} of every queue the stages consume.
    """
    from cuckoodist.stages.parse_and_submit import cleanup_queue

    rows = []
    for index, stage in enumerate(config.stages):
        rows.append((index, stage.type, "consumer", stage.consumer_queue))
        if getattr(stage, "cuckoo_cleanup", False):
            rows.append((index, stage.type, "cleanup", cleanup_queue(stage.consumer_queue)))
    return rows


def configured_delays(config: Config) -> dict[str, float]:
    """
    The delay queues (L{delay_name}) this configuration's stages can
    publish through, each with its delay in seconds, shortest first:
    check_results' ladder (L{cuckoodist.stages.check_results.delay_step})
    for its C{wait_between_requests}, the overseer's retries
    (C{retry_delay} doubling for each of C{max_retries}) and a cleaning
    parse_and_submit's C{cleanup_delay}.  Other daemons on the broker may
    use others; these are the ones whose depth concerns this pipeline.
    """
    from cuckoodist.stages import check_results, overseer, parse_and_submit

    delays: set[float] = set()
    for stage in config.stages:
        if stage.type == "check_results":
            # Every step of the ladder, found by asking delay_step itself
            # for waits 2^(1/16) apart, closer than any two steps.
            wait = stage.wait_between_requests
            wanted = wait
            while wanted <= 2 * check_results.MAX_HOP * wait:
                delays.add(check_results.delay_step(wanted, wait))
                wanted *= 2 ** (1 / 16)
        elif stage.type == "overseer":
            delays.update(
                min(stage.retry_delay * 2 ** (n - 1), overseer.MAX_RETRY_DELAY) for n in range(1, stage.max_retries + 1)
            )
        elif stage.type == "parse_and_submit" and stage.cuckoo_cleanup:
            delays.add(min(stage.cleanup_delay, parse_and_submit._MAX_CLEANUP_DELAY))
    named: dict[str, float] = {}
    for delay in sorted(delays):
        named.setdefault(delay_name(delay, config.queue_type), delay)
    return named


def dump_status(stage: int, path: str, now: float) -> DumpRow:
    """
    Count the dump files of one directory by name, as L{DumpStore} lists
    them, without opening any: a dump holds a hostile message, and there
    may be thousands.  The oldest is the one dumped first, by the time its
    name starts with (its modification time for a file not named so).
    """
    count = 0
    oldest: tuple[float, str] | None = None
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                count += 1
                head = entry.name.split("-", 1)[0]
                when = float(head) if head.isdigit() and head.isascii() else entry.stat().st_mtime
                if oldest is None or (when, entry.name) < oldest:
                    oldest = (when, entry.name)
    except FileNotFoundError:
        return DumpRow(stage, path, "missing")
    except OSError as e:
        return DumpRow(stage, path, "error", error=e.strerror or str(e))
    if oldest is None:
        return DumpRow(stage, path, "ok", count)
    return DumpRow(stage, path, "ok", count, oldest[1], max(0.0, now - oldest[0]))


def _ready_endpoint(reactor: Any, listen: str) -> tuple[Any, str] | str:
    """
    A client endpoint to the daemon's listener, and the URL to show; or
    why it cannot be asked.
    """
    kind, args, kwargs = _parseServer(listen, None)
    if kind == "TCP":
        port, host = args[0], kwargs.get("interface") or "127.0.0.1"
    elif kind == "UNIX":
        return UNIXClientEndpoint(reactor, args[0]), f"unix:{args[0]} /readyz"
    elif hasattr(kind, "parseStreamServer") and "port" in kwargs:  # tcp6
        port, host = int(kwargs["port"]), kwargs.get("interface") or "::1"
    else:
        return "a listener other than tcp or unix cannot be asked from here"
    if int(port) == 0:
        return "the listener's port (0) is chosen when the daemon starts"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return HostnameEndpoint(reactor, host, int(port)), f"http://{shown}:{port}/readyz"


class _ToEndpoint:
    """
    Sends every request of an L{Agent} to one endpoint (the listener may be
    a UNIX socket, which a URL cannot name).
    """

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


async def readiness(reactor: Any, config: Config, timeout: float = READY_TIMEOUT) -> Readiness:
    """
    Ask the daemon's operations listener (C{metrics.listen}) for
    C{/readyz}: 200 means ready, 503 not ready, with the daemon's reasons.
    Nothing answering within C{timeout} is C{not answering}.
    """
    listen = config.metrics.listen
    if not listen:
        return Readiness("off", reasons=("metrics.listen is empty: the daemon has no listener to ask",))
    target = _ready_endpoint(reactor, listen)
    if isinstance(target, str):
        return Readiness("unknown", reasons=(target,))
    endpoint, url = target
    agent = Agent.usingEndpointFactory(reactor, _ToEndpoint(endpoint))
    try:
        response = await agent.request(b"GET", b"http://localhost/readyz", Headers({})).addTimeout(timeout, reactor)
        body = await readBody(response).addTimeout(timeout, reactor)
    except DeferredTimeout:
        return Readiness("not answering", url, (f"no answer within {timeout:g} s",))
    except Exception as e:
        return Readiness("not answering", url, (_one_line(why_connect_failed(e, handshake_started=False)),))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    reasons = doc.get("reasons") if isinstance(doc, dict) else None
    reasons = tuple(_one_line(str(r)) for r in reasons) if isinstance(reasons, list) else ()
    if response.code == 200:
        return Readiness("ready", url, reasons)
    if response.code == 503:
        return Readiness("not ready", url, reasons)
    return Readiness("not answering", url, (f"answered HTTP {response.code}",))


class _Reasons:
    """
    A log observer keeping the reason the connection gave for each node
    that failed, as L{cuckoodist.amqp.connection_log} words it.
    """

    def __init__(self) -> None:
        self.by_node: dict[str, str] = {}

    def __call__(self, event: dict) -> None:
        if event.get("why") and event.get("where"):
            self.by_node[str(event["where"])] = str(event["why"])


async def connect_broker(reactor: Any, config: Config, timeout: float) -> tuple[AMQPConnectionService, Any]:
    """
    Log in to the first node of C{config}'s broker that lets us, trying
    each once (a tool must answer, not retry for ever as the daemon does).

    @raise BrokerUnreachable: none did within C{timeout}; the connection
        service is stopped.
    """
    nodes = config.amqp_nodes
    reasons = _Reasons()
    try:
        connection = AMQPConnectionService(reactor, nodes, retry_policy=lambda attempt: 0.1,
                                           log=Logger(observer=reasons), queue_type=config.queue_type)
    except ConfigError as e:  # a TLS file that cannot be read
        raise BrokerUnreachable(f"cannot connect to the broker: {e}") from None
    connection.startService()
    try:
        client = await connection.whenConnected(failAfterFailures=len(nodes)).addTimeout(timeout, reactor)
    except DeferredTimeout:
        await close_broker(reactor, connection)
        tried = "; ".join(f"{w}: {why}" for w, why in reasons.by_node.items())
        raise BrokerUnreachable(
            f"cannot reach the broker at {_nodes(nodes)}: no answer within {timeout:g} s"
            + (f" ({tried})" if tried else "")
        ) from None
    except Exception as e:
        await close_broker(reactor, connection)
        reasons.by_node.setdefault(where(nodes[-1]), why_connect_failed(e, handshake_started=True))
        if len(reasons.by_node) == 1:
            [(node, why)] = reasons.by_node.items()
            raise BrokerUnreachable(f"cannot reach the broker at {node}: {why}") from None
        tried = "; ".join(f"{w}: {why}" for w, why in reasons.by_node.items())
        raise BrokerUnreachable(f"cannot reach the broker: {tried}") from None
    return connection, client


def _nodes(nodes: Sequence[Any]) -> str:
    return ", ".join(where(node) for node in nodes)


async def close_broker(reactor: Any, connection: AMQPConnectionService) -> None:
    """
    Stop a connection from L{connect_broker}, waiting a bounded time.
    """
    # A failed whenConnected fires inside the service's state machine,
    # which refuses to be stopped from there: stop on the next turn.
    await deferLater(reactor, 0, lambda: None)
    try:
        await connection.stopService().addTimeout(_CLOSE_TIMEOUT, reactor)
    except DeferredTimeout:
        pass


async def gather_status(reactor: Any, config: Config, config_path: str = "", timeout: float = DEFAULT_TIMEOUT) -> Status:
    """
    Read everything C{status} shows; the broker first, since nothing else
    is worth showing to someone whose broker cannot be reached.

    @raise BrokerUnreachable: as its name says.
    """
    connection, client = await connect_broker(reactor, config, timeout)
    broker = connection.connected_to or _nodes(config.amqp_nodes)
    queues = stage_queues(config)
    delays = configured_delays(config)
    try:
        asking = Deferred.fromCoroutine(queue_depths(client, [q for *_, q in queues] + list(delays)))
        depths = await asking.addTimeout(timeout, reactor)
    except DeferredTimeout:
        raise BrokerUnreachable(f"the broker at {broker} did not answer within {timeout:g} s") from None
    except Exception as e:
        raise BrokerUnreachable(f"the broker at {broker} refused the questions: {describe_close(e)}") from None
    finally:
        await close_broker(reactor, connection)
    now = reactor.seconds()
    dumps = tuple(
        dump_status(index, stage.dump_dir, now)
        for index, stage in enumerate(config.stages) if getattr(stage, "dump_dir", None)
    )
    return Status(
        config_path=config_path,
        broker=broker,
        queues=tuple(QueueRow(index, kind, role, name, depths[name]) for index, kind, role, name in queues),
        delays=tuple(DelayRow(name, delay, depths[name]) for name, delay in delays.items() if depths[name] is not None),
        missing_delays=sum(1 for name in delays if depths[name] is None),
        dumps=dumps,
        readiness=await readiness(reactor, config),
    )


# Rendering.


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(text: str) -> str:
    return text if text.isprintable() else ascii(text)


def _duration(seconds: float) -> str:
    """
    A duration for people: C{45 s}, C{12 min}, C{3 h 5 min}, C{2 d 4 h}.
    """
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> list[str]:
    """
    Columns aligned, numbers (the C{numeric} columns) to the right.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).rjust(width) if index in numeric else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def render_table(status: Status) -> str:
    """
    The status as aligned tables, for a terminal.
    """
    lines = [f"Broker: {status.broker}", ""]
    rows = []
    for row in status.queues:
        stage = f"{row.stage} {row.kind}" if row.role == "consumer" else f"  {row.role}"
        if row.depth is None:
            rows.append([stage, _shown(row.queue), "missing", ""])
        else:
            rows.append([stage, _shown(row.queue), str(row.depth.messages), str(row.depth.consumers)])
    lines += _table(["STAGE", "QUEUE", "MESSAGES", "CONSUMERS"], rows, numeric=(2, 3))
    lines.append("")
    if status.delays:
        rows = [[row.queue, f"{row.delay:g} s", str(row.depth.messages), str(row.depth.consumers)] for row in status.delays]
        lines += _table(["DELAY QUEUE", "DELAY", "MESSAGES", "CONSUMERS"], rows, numeric=(1, 2, 3))
    else:
        lines.append("Delay queues: none of this configuration's exists yet")
    if status.missing_delays and status.delays:
        lines.append(f"({status.missing_delays} other delay queue(s) this configuration can use do not exist yet)")
    lines.append("")
    if status.dumps:
        rows = []
        for dump in status.dumps:
            if dump.state == "missing":
                rows.append([_shown(dump.path), "0", "(no directory yet: nothing dumped)"])
            elif dump.state == "error":
                rows.append([_shown(dump.path), "?", f"cannot be read: {dump.error}"])
            elif dump.oldest is None:
                rows.append([_shown(dump.path), "0", "-"])
            else:
                rows.append([_shown(dump.path), str(dump.count),
                             f"{_shown(dump.oldest)} ({_duration(dump.oldest_age or 0)} ago)"])
        lines += _table(["DUMP DIRECTORY", "FILES", "OLDEST"], rows, numeric=(1,))
    else:
        lines.append("Dump directories: none (no overseer stage)")
    lines.append("")
    ready = status.readiness
    where_asked = f" ({ready.url})" if ready.url else ""
    reasons = f": {'; '.join(ready.reasons)}" if ready.reasons else ""
    lines.append(f"Daemon{where_asked}: {ready.state}{reasons}")
    return "\n".join(lines) + "\n"


def _depth_json(depth: QueueDepth | None) -> dict[str, Any]:
    if depth is None:
        return {"exists": False, "messages": None, "consumers": None}
    return {"exists": True, "messages": depth.messages, "consumers": depth.consumers}


def render_json(status: Status) -> dict[str, Any]:
    """
    The status as one JSON document, for scripts and monitoring.
    """
    stages: list[dict[str, Any]] = []
    for row in status.queues:
        if row.role == "consumer":
            stages.append({"index": row.stage, "type": row.kind, "queues": []})
        stages[-1]["queues"].append({"role": row.role, "queue": row.queue, **_depth_json(row.depth)})
    return {
        "config": status.config_path,
        "broker": status.broker,
        "stages": stages,
        "delay_queues": [
            {"queue": row.queue, "delay_seconds": row.delay, **_depth_json(row.depth)} for row in status.delays
        ],
        "missing_delay_queues": status.missing_delays,
        "dump_dirs": [
            {
                "stage_index": dump.stage, "path": dump.path, "state": dump.state, "count": dump.count,
                "oldest": None if dump.oldest is None else {"name": dump.oldest, "age_seconds": dump.oldest_age},
                "error": dump.error,
            }
            for dump in status.dumps
        ],
        "readiness": {
            "state": status.readiness.state,
            "ready": {"ready": True, "not ready": False}.get(status.readiness.state),
            "url": status.readiness.url,
            "reasons": list(status.readiness.reasons),
        },
    }


async def status(reactor: Any, options: StatusOptions, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """
    Run C{cuckoodist status}: print the status, or one line saying why it
    cannot be had.

    @return: the exit status.
    """
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        print(f"cuckoodist status: {e}", file=err)
        return 1
    try:
        found = await gather_status(reactor, config, options["config"], options["timeout"])
    except BrokerUnreachable as e:
        print(f"cuckoodist status: {e}", file=err)
        return 1
    if options["json"]:
        print(json.dumps(render_json(found), indent=1), file=out)
    else:
        print(render_table(found), end="", file=out)
    for dump in found.dumps:
        if dump.state == "error":
            print(f"cuckoodist status: cannot read the dump directory {_shown(dump.path)}: {dump.error}", file=err)
    return 0 if found.complete else 1


def run(options: StatusOptions) -> int:
    """
    Run C{cuckoodist status} on the global reactor.
    """

    async def main(reactor: Any) -> int:
        try:
            return await status(reactor, options)
        except Exception as e:  # a bug of ours: still one line, not a traceback
            print(f"cuckoodist status: failed: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
            return 1

    return exit_status(main)
