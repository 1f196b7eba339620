"""
Machinery for the fault-injection tests: daemons as twistd processes that
can be killed, the broker's control tool, and the tally of what became of
every sample (delivered, duplicated, dumped, lost).
"""

import json
import os
import shutil
import signal
from collections import Counter
from typing import Any, Iterator

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.dump import DumpStore
from cuckoodist.simulators.crits import CritsSimulator
from tests import harness


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


async def queue_depths(prefix: str) -> dict[str, int]:
    """
    Messages ready or unacked in each broker queue named under C{prefix}.
    """
    listing = await rabbitmqctl("list_queues", "--no-table-headers", "name", "messages")
    depths = {}
    for line in listing.splitlines():
        name, _, count = line.rpartition("\t")
        if name.startswith(prefix + "/"):
            depths[name] = int(count)
    return depths


async def quiet(peers: harness.Peers, finishes: Counter, prefix: str, seconds: float = 4.0, timeout: float = 90.0) -> None:
    """
    Wait until the test's queues hold nothing (ready or unacked) and
    neither simulator has seen a new task or finish for C{seconds}, so
    that late duplicates are counted too.  Messages held in the shared
    delay queues show up within C{seconds} when they are no longer than it.

    @raise AssertionError: the pipeline did not settle within C{timeout}.
    """
    start = reactor.seconds()
    last, since = None, start
    while True:
        depths = await queue_depths(prefix)
        now = (len(peers.cuckoo.state()["tasks"]), sum(finishes.values()), sum(depths.values()))
        moment = reactor.seconds()
        if now != last or now[2]:
            last, since = now, moment
        elif moment - since >= seconds:
            return
        if moment - start > timeout:
            raise AssertionError(f"the pipeline did not settle in {timeout:g} s: {depths}")
        await deferLater(reactor, 0.5, lambda: None)


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


async def rabbitmqctl(*args: str) -> str:
    """
    Run C{rabbitmqctl} on the local broker.

    @raise RuntimeError: it exited non-zero.
    """
    path = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    out, err, code = await getProcessOutputAndValue(path, ("-q",) + args, env=dict(os.environ))
    if code != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} exited {code}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace").strip()


async def get_rabbit_env(key: str) -> str | None:
    """
    The broker's C{rabbit} application setting C{key} as an Erlang term,
    or C{None} when unset.
    """
    answer = await rabbitmqctl("eval", f"application:get_env(rabbit, {key}).")
    if answer == "undefined":
        return None
    if not (answer.startswith("{ok,") and answer.endswith("}")):
        raise RuntimeError(f"unexpected answer for {key}: {answer!r}")
    return answer[len("{ok,"):-1]


async def set_rabbit_env(key: str, term: str | None) -> None:
    """
    Set (or with C{None}, unset) the broker's C{rabbit} setting C{key}.
    """
    if term is None:
        await rabbitmqctl("eval", f"application:unset_env(rabbit, {key}).")
    else:
        await rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {term}).")


async def close_connection_from(local_port: int, why: str) -> str:
    """
    Have the broker close the client connection coming from C{local_port}
    (as C{rabbitmqctl close_all_connections} would, but sparing other
    users of a shared broker).

    @return: the broker's name for the closed connection.
    """
    listing = await rabbitmqctl("list_connections", "--no-table-headers", "pid", "name", "peer_port")
    for line in listing.splitlines():
        pid, name, port = (line.split("\t") + ["", ""])[:3]
        if port.strip() == str(local_port):
            await rabbitmqctl("close_connection", pid, why)
            return name
    raise LookupError(f"no broker connection from port {local_port} in {listing!r}")


__all__ = [
    "DaemonProcess", "Tally", "close_connection_from", "connection_of", "consumers", "count_finishes",
    "dump_records", "get_rabbit_env", "publish_samples", "queue_depths", "quiet", "rabbitmqctl", "set_rabbit_env", "tally",
    "write_config",
]
