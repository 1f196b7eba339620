# -*- test-case-name: tests.test_demo -*-
"""
C{cuckoodist demo}: publish synthetic samples as the CRITs-side service
would, then watch them arrive in the simulated CRITs.

This is what the README's demo runs.  It plays the part of the CRITs
service: it publishes Go-format analysis requests to the feed queue and
polls the CRITs simulator's C{/_sim/state} until every analysis finished
or was dumped.  When samples fail it says why, from the simulated CRITs'
analysis log and the overseer's dump records.  With C{--run-daemon} it
also runs the configured stages itself, so that it can stop them and
delete the queues the run created.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import uuid
from typing import IO, Any, Sequence

import treq
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool
from twisted.logger import Logger
from twisted.python import usage

from cuckoodist.commands.arguments import exit_status, positive_seconds
from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.protocol import ChannelClosed, Closed, describe_close
from cuckoodist.config import Config, load_config
from cuckoodist.stages.parse_and_submit import cleanup_queue
from cuckoodist.dump import DumpStore
from cuckoodist.errors import ConfigError
from cuckoodist.publish import publish_confirmed

__all__ = ["DemoOptions", "DemoError", "demo", "pipeline_queues", "run"]

#: Seconds an HTTP request to the CRITs simulator may take.
_HTTP_TIMEOUT = 10.0
#: Seconds closing a connection or draining the daemon may take before we
#: stop waiting.
_CLOSE_TIMEOUT = 10.0


def _stay_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 86400:
        raise ValueError(f"--stay takes 0 to 86400 seconds, not {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 10000:
        raise ValueError(f"--count takes a number from 1 to 10000, not {value!r}")
    return number


class DemoOptions(usage.Options):
    """
    Command line of C{cuckoodist demo}.
    """

    synopsis = ("-c CONFIG [--count N] [--timeout SECONDS] [--broker-timeout SECONDS] [--run-daemon [--stay SECONDS]] "
                "[--keep-queues]")
    longdesc = (
        "Publish N synthetic samples to the first feed_cuckoo queue of CONFIG, as the CRITs-side "
        "service would, and follow them in the CRITs simulator of 'cuckoodist simulate' (CONFIG's "
        "crits.url must be that simulator) until each analysis completed, failed or was dumped by "
        "the overseer. For every sample that failed it prints the reason, from the simulated "
        "CRITs' analysis log and the dump directory of CONFIG's overseer. With --run-daemon the "
        "configured stages run in this process too (no separate 'twistd cuckoodist' needed; their "
        "log goes to CONFIG's log_file) and are stopped at the end, or --stay seconds after it, while "
        "the dashboard (whose address it prints) is looked at. Unless --keep-queues is given, "
        "the queues of CONFIG's stages that did not exist when the demo started are deleted at "
        "the end, with their '.cleanup' queues; queues a running daemon already declared are kept. "
        "Exit status: 0 when every sample completed, 1 otherwise.")
    examples = (
        "cuckoodist simulate &",
        "cuckoodist demo -c etc/cuckoodist.yaml --count 3 --run-daemon",
    )
    optParameters = [
        ["config", "c", None, "The daemon's configuration: AMQP URL, feed queue, CRITs simulator URL, dump_dir."],
        ["count", "n", 10, "How many samples to publish (1..10000).", _count],
        ["timeout", None, 300.0, "Seconds to wait for every analysis to finish.", positive_seconds("--timeout")],
        ["broker-timeout", None, 30.0, "Seconds to wait for the broker to take the samples.", positive_seconds("--broker-timeout")],
        ["stay", None, 0.0, "With --run-daemon: seconds the daemon and its dashboard stay up after the samples.", _stay_seconds],
    ]
    optFlags = [
        ["run-daemon", None, "Also run CONFIG's stages in this process, and stop them at the end."],
        ["keep-queues", None, "Do not delete the queues this demo created."],
    ]

    def postOptions(self) -> None:
        """
        @raise usage.UsageError: one line, for a missing or unusable
            configuration.
        """
        if not self["config"]:
            raise usage.UsageError("-c/--config is required")
        try:
            self["parsed"] = load_config(self["config"])
            if self["run-daemon"]:
                from cuckoodist.preflight import preflight

                preflight(self["parsed"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        feeds = [s for s in self["parsed"].stages if s.type == "feed_cuckoo"]
        if not feeds or self["parsed"].crits is None:
            raise usage.UsageError("the configuration needs a feed_cuckoo stage and a crits section")
        self["feed_queue"] = feeds[0].consumer_queue

    def __repr__(self) -> str:
        # Options is a dict holding the parsed configuration, secrets included.
        return "<DemoOptions>"


class DemoError(Exception):
    """
    The demo cannot go on; the message is one line for the user.
    """


def pipeline_queues(config: Config) -> list[str]:
    """
    The queues the configured stages consume and publish to, with the
    C{.cleanup} queue of each parse_and_submit stage that cleans up, in a
    stable order.  The shared C{cuckoodist.delay.*} queues are not among
    them: other daemons on the broker may be using them.
    """
    names: list[str] = []
    for stage in config.stages:
        candidates = [stage.consumer_queue, getattr(stage, "producer_queue", ""), getattr(stage, "failed_queue", "")]
        if getattr(stage, "cuckoo_cleanup", False):
            candidates.append(cleanup_queue(stage.consumer_queue))
        names.extend(name for name in candidates if name and name not in names)
    return names


def _request(i: int, source: str, now: float) -> tuple[str, bytes]:
    data = b"MZ\x90\x00cuckoodist demo sample %d " % i + os.urandom(32)
    md5 = hashlib.md5(data).hexdigest()
    analysis_id = str(uuid.uuid4())
    body = {
        "payload": {"package": "exe", "options": "procmemdump=yes"},
        "file": {"name": f"demo-{i}.exe", "data": base64.b64encode(data).decode()},
        "crits_data": {
            "analysis_id": analysis_id, "object_type": "Sample", "object_id": md5[:24],
            "md5": md5, "source": source,
        },
        "requested_at": now,
    }
    return analysis_id, json.dumps(body).encode()


class _LastWhy:
    """
    A log observer keeping the last reason the connection gave for failing,
    so a broker that never answers can be reported in one line.
    """

    def __init__(self) -> None:
        self.why: str | None = None

    def __call__(self, event: dict) -> None:
        if event.get("why"):
            self.why = str(event["why"])


async def _existing_queues(connection: AMQPConnectionService, names: Sequence[str]) -> set[str]:
    """
    Which of C{names} exist on the broker (a passive declare each; a
    missing queue closes its channel, so each gets a channel of its own).
    """
    client = await connection.whenConnected()
    found = set()
    for name in names:
        channel = await client.open_channel()
        try:
            await channel.queue_declare(queue=name, passive=True)
        except (ChannelClosed, Closed):
            continue
        found.add(name)
        await channel.channel_close()
    return found


async def _delete_queues(connection: AMQPConnectionService, names: Sequence[str]) -> None:
    client = await connection.whenConnected()
    channel = await client.open_channel()
    for name in names:
        await channel.queue_delete(queue=name)
    await channel.channel_close()


async def _bounded(reactor: Any, d: Deferred, seconds: float) -> Any:
    return await d.addTimeout(seconds, reactor)


async def _crits_state(reactor: Any, url: str, pool: HTTPConnectionPool) -> dict:
    """
    The simulated CRITs' C{/_sim/state}.

    @raise DemoError: it cannot be read, or C{url} is no simulator.
    """
    try:
        response = await treq.get(url, timeout=_HTTP_TIMEOUT, reactor=reactor, pool=pool)
        if response.code != 200:
            await response.content()
            raise DemoError(f"{url} answered HTTP {response.code}: CONFIG's crits.url must be the "
                            "simulator of 'cuckoodist simulate'")
        state = json.loads(await response.content())
    except DemoError:
        raise
    except ValueError:
        raise DemoError(f"{url} did not answer JSON: CONFIG's crits.url must be the simulator "
                        "of 'cuckoodist simulate'") from None
    except Exception as e:
        raise DemoError(f"cannot reach the CRITs simulator at {url}: {describe_close(e)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("analyses"), dict):
        raise DemoError(f"{url} is not the CRITs simulator of 'cuckoodist simulate'")
    return state


def _dumped(dump_dirs: Sequence[str], wanted: set[str]) -> dict[str, str]:
    """
    The reason each of the C{wanted} analyses was dumped, from the dump
    records the overseer wrote (unreadable files are passed over).
    """
    reasons: dict[str, str] = {}
    for directory in dump_dirs:
        for _path, record, _problem in DumpStore(directory):
            if record is not None and record.analysis_id in wanted:
                attempts = f" after {record.attempts} attempt(s)" if record.attempts else ""
                reasons[record.analysis_id] = f"dumped by {record.stage}{attempts}: {record.reason}"
    return reasons


def _crits_reason(analysis: dict) -> str | None:
    """
    The last error line of a simulated CRITs analysis log, if any.
    """
    lines = [entry for entry in analysis.get("log", []) if isinstance(entry, dict)]
    errors = [entry for entry in lines if entry.get("level") == "error"] or lines
    return str(errors[-1].get("message")) if errors else None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def demo(reactor: Any, options: DemoOptions, out: IO[str] = sys.stdout) -> int:
    """
    Run the demo.

    @return: 0 when every sample completed, else 1.
    @raise DemoError: the broker or the CRITs simulator could not be used.
    """
    config: Config = options["parsed"]
    state_url = config.crits.url.rstrip("/") + "/_sim/state"
    pool = HTTPConnectionPool(reactor, persistent=False)
    await _crits_state(reactor, state_url, pool)
    requests = [_request(i, "demo", reactor.seconds()) for i in range(options["count"])]
    wanted = {analysis_id for analysis_id, _ in requests}
    queues = pipeline_queues(config)
    dump_dirs = [s.dump_dir for s in config.stages if s.type == "overseer"]
    why = _LastWhy()
    connection = AMQPConnectionService(reactor, config.amqp, log=Logger(observer=why))
    connection.startService()
    daemon = None
    ended: Deferred | None = None
    created: list[str] = []
    try:
        try:
            existing = await _bounded(
                reactor, Deferred.fromCoroutine(_existing_queues(connection, queues)), options["broker-timeout"])
            created = [name for name in queues if name not in existing]
            if options["run-daemon"]:
                from cuckoodist.tap import build_daemon

                daemon = build_daemon(config, reactor)
                daemon.startService()
                url = await _dashboard_url(daemon)
                if url:
                    print(f"dashboard: {url}", file=out)
            await _bounded(
                reactor,
                Deferred.fromCoroutine(
                    publish_confirmed(connection, [(options["feed_queue"], body) for _, body in requests])),
                options["broker-timeout"])
        except DeferredTimeout:
            raise DemoError(
                f"the broker at {config.amqp.host}:{config.amqp.port} did not take the samples within "
                f"{options['broker-timeout']:g} s" + (f" ({why.why})" if why.why else "")) from None
        print(f"published {len(requests)} analysis requests to {options['feed_queue']}", file=out)
        outcome = await _watch(reactor, options, wanted, state_url, pool, dump_dirs, out)
        if daemon is not None and options["stay"]:
            print(f"the daemon stays up for {options['stay']:g} s (Ctrl-C ends it sooner)", file=out, flush=True)
            ended = Deferred()
            await _stay(reactor, options["stay"], ended)
        return outcome
    finally:
        if daemon is not None:
            try:
                await _bounded(reactor, daemon.stopService(), config.grace_period + _CLOSE_TIMEOUT)
            except DeferredTimeout:
                print("the daemon did not stop in time", file=out)
        if created and not options["keep-queues"] and connection.running:
            try:
                await _bounded(reactor, Deferred.fromCoroutine(_delete_queues(connection, created)),
                               options["broker-timeout"])
                print(f"deleted the {len(created)} queue(s) this demo created", file=out)
            except (DeferredTimeout, Closed, ChannelClosed) as e:
                print(f"could not delete the queues this demo created: {describe_close(e)}", file=out)
        try:
            await _bounded(reactor, connection.stopService(), _CLOSE_TIMEOUT)
        except DeferredTimeout:
            pass
        if ended is not None:
            ended.callback(None)


async def _stay(reactor: Any, seconds: float, ended: Deferred) -> None:
    """
    Keep the daemon up for C{seconds}.  Ctrl-C (the reactor shutting
    down) ends the stay, and the shutdown waits for C{ended}: the demo's
    clean-up (stopping the daemon, deleting its queues) still runs.
    """
    staying = deferLater(reactor, seconds)

    def shutting_down() -> Deferred:
        staying.cancel()
        return ended

    trigger = reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    try:
        await staying
    except CancelledError:
        pass
    else:
        reactor.removeSystemEventTrigger(trigger)


async def _dashboard_url(daemon: Any) -> str | None:
    """
    Where the daemon's dashboard answers, once its listener listens
    (C{metrics.listen}); C{None} when it has none, or none reachable by
    URL (a UNIX socket), or it could not listen (the listener logged why).
    """
    try:
        ops = daemon.getServiceNamed("ops")
    except KeyError:
        return None
    try:
        port = await ops.listening
    except Exception:
        return None
    address = port.getHost()
    host, number = getattr(address, "host", None), getattr(address, "port", None)
    if not isinstance(host, str) or number is None:
        return None
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{number}/dashboard/"


async def _watch(reactor: Any, options: DemoOptions, wanted: set[str], state_url: str,
                 pool: HTTPConnectionPool, dump_dirs: list[str], out: IO[str]) -> int:
    """
    Follow the analyses until each completed, failed or was dumped, print
    progress lines as they change, and the reason of every failure.
    """
    last = None
    deadline = reactor.seconds() + options["timeout"]
    while True:
        state = await _crits_state(reactor, state_url, pool)
        analyses = {k: v for k, v in state["analyses"].items() if k in wanted and isinstance(v, dict)}
        dumped = _dumped(dump_dirs, wanted)
        completed = {k for k, a in analyses.items() if a.get("status") == "completed"}
        failed = {k for k, a in analyses.items() if a.get("status") == "error"}
        lost = set(dumped) - completed - failed
        results = sum(len(a.get("results", [])) for a in analyses.values())
        pending = len(wanted) - len(completed) - len(failed) - len(lost)
        line = f"CRITs: {len(completed)} completed, {len(failed)} failed, {pending} in progress, {results} results"
        if lost:
            line += f"; {len(lost)} dumped before reaching CRITs"
        if line != last:
            print(line, file=out)
            last = line
        finished = pending == 0
        if finished or reactor.seconds() >= deadline:
            break
        await deferLater(reactor, 0.5, lambda: None)
    if not finished:
        print(f"timed out after {options['timeout']:g} s waiting for {pending} analysis(es)", file=out)
    if finished and failed - set(dumped):
        # The overseer tells CRITs before it writes the dump: give it a moment.
        for _ in range(6):
            await deferLater(reactor, 0.5, lambda: None)
            dumped = _dumped(dump_dirs, wanted)
            if not failed - set(dumped):
                break
    not_done = sorted(wanted - completed)
    for analysis_id in not_done:
        reasons = []
        analysis = analyses.get(analysis_id)
        if analysis is not None and (crits := _crits_reason(analysis)):
            reasons.append(f"CRITs log: {crits}")
        if analysis_id in dumped:
            reasons.append(dumped[analysis_id])
        if not reasons:
            status = analysis.get("status") if analysis is not None else "not yet known to CRITs"
            where = " or ".join(dump_dirs) if dump_dirs else "no dump_dir (CONFIG has no overseer)"
            reasons.append(f"{status}; no dump record in {where}")
        print(f"  {analysis_id}: " + _one_line("; ".join(reasons)), file=out)
    return 0 if not not_done else 1


def run(options: DemoOptions) -> int:
    """
    Run C{cuckoodist demo}: errors are one line on stderr and exit status 1.
    """

    async def main(reactor: Any) -> int:
        try:
            return await demo(reactor, options)
        except DemoError as e:
            print(f"cuckoodist demo: {e}", file=sys.stderr)
            return 1

    return exit_status(main)
