"""
Machinery for the fault-injection tests: daemons as twistd processes that
can be killed, control of a private broker node, and the tally of what
became of every sample (delivered, duplicated, dumped, lost).

Nothing here runs C{rabbitmqctl} against the shared broker: its queues are
read over AMQP (a passive C{queue.declare}), and whatever changes or
closes things on a broker takes a private L{tests.rabbitnode.RabbitNode}.
"""

import json
import os
import signal
import time
from collections import Counter
from typing import Any, Iterator

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from txamqp.client import ChannelClosed

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.amqp.protocol import describe_close
from cuckoodist.config import Config
from cuckoodist.dump import DumpStore
from cuckoodist.simulators.crits import CritsSimulator
from cuckoodist.stages.parse_and_submit import cleanup_queue
from tests import harness
from tests.rabbitnode import RabbitNode


class _Exit(ProcessProtocol):
    """
    Fires C{ended} with the exit code (C{None} when killed by a signal).
    """

    def __init__(self) -> None:
        self.ended: Deferred = Deferred()
        self.code: int | None = None
        self.signal: int | None = None

    def processEnded(self, reason: Any) -> None:
        self.code = reason.value.exitCode
        self.signal = reason.value.signal
        self.ended.callback(self.code)


class DaemonProcess:
    """
    One C{twistd cuckoodist} process, started as a user would start it.

    @ivar ended: fires once the process is gone (awaiting it consumes its
        result; read L{exit_code} instead).
    """

    def __init__(self, config_path: str, log_path: str) -> None:
        command = harness.twistd_command(config_path, log_path)
        self._exit = _Exit()
        self.ended = self._exit.ended
        self.log_path = log_path
        self.process = reactor.spawnProcess(
            self._exit,
            command[0],
            command,
            env={**os.environ, "PYTHONPATH": harness.REPO},
            path=harness.REPO,
        )

    @property
    def exited(self) -> bool:
        return self.ended.called

    @property
    def exit_code(self) -> int | None:
        """
        The exit code, C{None} while running or when killed by a signal.
        """
        return self._exit.code

    @property
    def exit_signal(self) -> int | None:
        """
        The signal that ended the process, if one did.
        """
        return self._exit.signal

    def clean_exit(self) -> bool:
        """
        Whether the process exited 0, or (as twistd does after a signal
        asked it to stop) re-raised SIGTERM on itself after its services
        stopped and it logged C{Server Shut Down}.
        """
        if self.exit_code == 0:
            return True
        with open(self.log_path, encoding="utf-8", errors="replace") as fp:
            shut_down = "Server Shut Down." in fp.read()
        return self.exit_signal == signal.SIGTERM and shut_down

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"KILL"}, C{"TERM"}) unless the process ended.
        """
        if not self.ended.called:
            self.process.signalProcess(name)

    def stop(self) -> Deferred:
        """
        Clean-up: SIGTERM, and SIGKILL if that has not worked in 15 s.
        """
        if self.ended.called:
            return self.ended
        self.signal("TERM")
        timer = reactor.callLater(15, self.signal, "KILL")
        return self.ended.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])


def watch_consumers(testcase: Any, consumers: list[QueueConsumer], up_after: str = "down") -> dict[str, float]:
    """
    Watch C{consumers} every 20 ms: the returned dict gets C{"down"} when
    they first stop all consuming, and C{"up"} when all consume again once
    the key C{up_after} is in it (the test may set its own marks, such as
    when the broker answered again).  Stopped at the test's clean-up.
    """
    marks: dict[str, float] = {}

    def watch() -> None:
        up = all(c.consuming for c in consumers)
        if not up and "down" not in marks:
            marks["down"] = time.monotonic()
        elif up and up_after in marks and "up" not in marks:
            marks["up"] = time.monotonic()

    watcher = LoopingCall(watch)
    watcher.clock = reactor
    watcher.start(0.02)
    testcase.addCleanup(lambda: watcher.running and watcher.stop())
    return marks


def write_config(path: str, doc: dict) -> str:
    """
    Write C{doc} where a daemon can read it (JSON is YAML).
    """
    with open(path, "w") as fp:
        json.dump(doc, fp)
    return path


async def publish_samples(amqp: Any, queue: str, count: int, fail_every: int = 0) -> dict[str, str]:
    """
    Publish C{count} Go-format analysis requests, confirmed.

    @return: analysis id -> md5 of the sample.
    """
    messages, expected = harness.requests(queue, count)
    await harness.publish(amqp, messages)
    return expected


def count_finishes(crits: CritsSimulator) -> Counter:
    """
    Count the accepted C{finish} requests per analysis id that the CRITs
    simulator answers from now on; a second one for an analysis is a
    duplicate delivery.
    """
    finishes: Counter = Counter()
    answer_service = crits.post_service

    def post_service(d: Any) -> dict:
        answer = answer_service(d)
        if d.get("finish") and answer.get("return_code") == 0:
            finishes[str(d.get("analysis_id"))] += 1
        return answer

    crits.post_service = post_service
    return finishes


@attrs.frozen
class Tally:
    """
    What became of the samples of one run.

    @ivar duplicated: samples that were uploaded to Cuckoo or finished in
        CRITs more than once.
    @ivar extra_uploads: Cuckoo tasks beyond one per sample.
    @ivar extra_finishes: CRITs finish requests beyond one per analysis.
    @ivar lost: analysis ids neither completed in CRITs nor dumped.
    """

    sent: int
    delivered: int
    duplicated: int
    extra_uploads: int
    extra_finishes: int
    dumped: int
    lost: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} duplicated={self.duplicated} "
            f"(extra Cuckoo uploads={self.extra_uploads}, extra CRITs finishes={self.extra_finishes}) "
            f"dumped={self.dumped} lost={len(self.lost)}"
        )


def dump_records(dump_dir: str) -> list:
    """
    The readable records in C{dump_dir}.
    """
    if not os.path.isdir(dump_dir):
        return []
    return [record for _, record, _ in DumpStore(dump_dir) if record is not None]


def tally(expected: dict[str, str], peers: harness.Peers, finishes: Counter, dump_dir: str) -> Tally:
    """
    Count, for the samples in C{expected}, how each one ended.
    """
    analyses = peers.crits.state()["analyses"]
    completed = {a for a in expected if analyses.get(a, {}).get("status") == "completed"}
    dumped = {r.analysis_id for r in dump_records(dump_dir) if r.reason} & expected.keys()
    uploads = Counter(t["md5"] for t in peers.cuckoo.state()["tasks"].values())
    md5s = set(expected.values())
    extra_uploads = sum(n - 1 for md5, n in uploads.items() if md5 in md5s and n > 1)
    extra_finishes = sum(n - 1 for a, n in finishes.items() if a in expected and n > 1)
    duplicated = sum(1 for a, md5 in expected.items() if uploads[md5] > 1 or finishes[a] > 1)
    return Tally(
        sent=len(expected),
        delivered=len(completed),
        duplicated=duplicated,
        extra_uploads=extra_uploads,
        extra_finishes=extra_finishes,
        dumped=len(dumped - completed),
        lost=tuple(sorted(expected.keys() - completed - dumped)),
    )


def work_queues(config: Config) -> list[str]:
    """
    The queues a daemon with C{config} consumes: each stage's queue, and
    the clean-up queue of a parse_and_submit stage that deletes tasks.
    """
    names = []
    for stage in config.stages:
        names.append(stage.consumer_queue)
        if getattr(stage, "cuckoo_cleanup", False) and not getattr(stage, "producer_queue", ""):
            names.append(cleanup_queue(stage.consumer_queue))
    return names


async def queue_depths(connection: AMQPConnectionService, queues: list[str]) -> dict[str, int]:
    """
    Messages ready in each of C{queues}, by a passive C{queue.declare} on
    a channel of our own (no C{rabbitmqctl}, so the broker may be anywhere).
    Unacknowledged messages are not counted: AMQP does not tell them.  A
    queue that does not exist counts as empty.
    """
    client = await connection.whenConnected(failAfterFailures=3)
    depths = {}
    for name in queues:
        channel = await client.open_channel()
        try:
            reply = await channel.queue_declare(queue=name, passive=True)
        except ChannelClosed as e:
            if not describe_close(e).startswith("404 "):
                raise
            depths[name] = 0  # the broker closed this channel: no such queue
            continue
        depths[name] = reply.message_count
        await channel.channel_close()
    return depths


async def quiet(
    peers: harness.Peers,
    finishes: Counter,
    config: Config,
    seconds: float = 4.0,
    timeout: float = 90.0,
) -> None:
    """
    Wait until the queues of C{config}'s stages hold no ready message and
    neither simulator has seen a new task or finish for C{seconds}, so
    that late duplicates are counted too.  A message a stage holds unacked
    is still being worked on, so it shows up as a task or a finish within
    C{seconds}; messages held in the delay queues show up within
    C{seconds} when they are no longer than it.

    @raise AssertionError: the pipeline did not settle within C{timeout}.
    """
    connection = AMQPConnectionService(reactor, config.amqp)
    connection.startService()
    try:
        queues = work_queues(config)
        start = reactor.seconds()
        last, since = None, start
        while True:
            depths = await queue_depths(connection, queues)
            now = (len(peers.cuckoo.state()["tasks"]), sum(finishes.values()), sum(depths.values()))
            moment = reactor.seconds()
            if now != last or now[2]:
                last, since = now, moment
            elif moment - since >= seconds:
                return
            if moment - start > timeout:
                raise AssertionError(f"the pipeline did not settle in {timeout:g} s: {depths}")
            await deferLater(reactor, 0.5, lambda: None)
    finally:
        await connection.stopService()


def consumers(service: IService) -> Iterator[QueueConsumer]:
    """
    Every L{QueueConsumer} below C{service} (a daemon from C{build_daemon}).
    """
    for child in service:
        if isinstance(child, QueueConsumer):
            yield child
        elif isinstance(child, MultiService):
            yield from consumers(child)


def connection_of(service: MultiService) -> AMQPConnectionService:
    """
    The daemon's AMQP connection service.
    """
    for child in service:
        if isinstance(child, AMQPConnectionService):
            return child
    raise LookupError("the daemon has no AMQP connection service")


async def node_ctl(node: RabbitNode, *args: str) -> str:
    """
    Run C{rabbitmqctl} against a private node, in a thread so that the
    reactor (and a daemon running in it) keeps going meanwhile.

    @raise tests.rabbitnode.RabbitNodeError: it failed.
    """
    return await deferToThread(node.ctl, *args)


async def set_rabbit_env(node: RabbitNode, key: str, term: str) -> None:
    """
    Set the private node's C{rabbit} application setting C{key} to the
    Erlang term C{term}, for settings C{rabbitmq.conf} cannot express
    (C{channel_tick_interval}).  Channels opened afterwards use it.
    """
    await node_ctl(node, "eval", f"application:set_env(rabbit, {key}, {term}).")
    answer = (await node_ctl(node, "eval", f"application:get_env(rabbit, {key}).")).strip()
    if answer != f"{{ok,{term}}}":
        raise RuntimeError(f"{key} is {answer!r} after setting it to {term}")


async def close_connection_from(node: RabbitNode, local_port: int, why: str) -> str:
    """
    Have the private node close the client connection coming from
    C{local_port}, as an operator's C{rabbitmqctl close_connection} would.

    @return: the broker's name for the closed connection.
    """
    listing = await node_ctl(node, "list_connections", "--no-table-headers", "pid", "name", "peer_port")
    for line in listing.splitlines():
        pid, name, port = (line.split("\t") + ["", ""])[:3]
        if port.strip() == str(local_port):
            await node_ctl(node, "close_connection", pid, why)
            return name
    raise LookupError(f"no broker connection from port {local_port} in {listing!r}")


__all__ = [
    "DaemonProcess", "Tally", "close_connection_from", "connection_of", "consumers", "count_finishes",
    "dump_records", "node_ctl", "publish_samples", "queue_depths", "quiet", "set_rabbit_env", "tally",
    "work_queues", "write_config",
]
