"""
Shared machinery for the end-to-end tests: simulators on real loopback
sockets, a configuration with queue names no other run uses, Go-format
analysis requests, and clean-up of the broker afterwards.
"""

import base64
import hashlib
import os
import sys
import uuid
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import Config, parse_config  # noqa: F401 (re-exported for tests)
from cuckoodist.simulators.crits import DEFAULT_API_KEY, CritsSimulator
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer

AMQP_URL = os.environ.get("CUCKOODIST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAIL_MARKER = b"CUCKOODIST-FAIL-ANALYSIS"


class Peers:
    """
    A Cuckoo and a CRITs simulator listening on free loopback ports.
    """

    def __init__(self, **cuckoo_options: Any) -> None:
        self.cuckoo = CuckooSimulator(reactor, **cuckoo_options)
        self.crits = CritsSimulator(reactor)
        self.cuckoo_server = SimulatorServer(reactor, self.cuckoo.resource)
        self.crits_server = SimulatorServer(reactor, self.crits.resource)

    def start(self) -> None:
        self.cuckoo_server.start_listening()
        self.crits_server.start_listening()

    def stop(self) -> Deferred:
        from twisted.internet.defer import gatherResults

        return gatherResults([self.cuckoo_server.close(), self.crits_server.close()])


def prefix() -> str:
    """
    A queue-name prefix unique to one test.
    """
    return f"test.{uuid.uuid4().hex[:10]}"


def config_doc(peers: Peers, p: str, dump_dir: str, stages: list[str] | None = None, **overrides: Any) -> dict:
    """
    A configuration document wiring the given stages to the simulators on
    queues under prefix C{p}.
    """
    queues = {
        "feed": f"{p}/feed_cuckoo",
        "check": f"{p}/check_results",
        "parse": f"{p}/parse_and_submit",
        "failed": f"{p}/failed",
    }
    all_stages = {
        "feed_cuckoo": {
            "type": "feed_cuckoo", "cuckoo": "sim", "consumer_queue": queues["feed"],
            "producer_queue": queues["check"], "failed_queue": queues["failed"],
            "prefetch_count": 4, "max_pending": 20, "check_free_space": True, "status_interval": 0.5,
        },
        "check_results": {
            "type": "check_results", "consumer_queue": queues["check"], "producer_queue": queues["parse"],
            "failed_queue": queues["failed"], "prefetch_count": 50, "wait_between_requests": 0.5,
            # Simulated analyses take seconds: check from 1 s after submission.
            "default_timeout": 1,
        },
        "parse_and_submit": {
            "type": "parse_and_submit", "consumer_queue": queues["parse"], "producer_queue": "",
            "failed_queue": queues["failed"], "prefetch_count": 8, "cuckoo_cleanup": True, "cleanup_delay": 0.5,
        },
        "overseer": {
            "type": "overseer", "consumer_queue": queues["failed"], "dump_dir": dump_dir,
            "max_retries": 3, "retry_delay": 0.2,
        },
    }
    chosen = stages or list(all_stages)
    doc = {
        "amqp": AMQP_URL,
        "grace_period": 5,
        "http_timeout": 20,
        "crits": {"url": peers.crits_server.url, "username": "analyst", "api_key": DEFAULT_API_KEY, "verify_ssl": True},
        "cuckoo": {"sim": {"url": peers.cuckoo_server.url}},
        "stages": [all_stages[name] for name in chosen],
        # No operations listener: tests run in parallel and would fight over
        # the default port.  A test that wants one overrides this (tcp:0).
        "metrics": {"listen": ""},
    }
    doc.update(overrides)
    return doc


def config(peers: Peers, p: str, dump_dir: str, stages: list[str] | None = None) -> Config:
    return parse_config(config_doc(peers, p, dump_dir, stages))


def sample(i: int, fail: bool = False) -> bytes:
    body = b"MZ\x90\x00cuckoodist test sample %d\x00" % i + os.urandom(16)
    return body + (FAIL_MARKER if fail else b"")


def request(i: int, data: bytes, with_credentials: bool = False) -> tuple[str, bytes]:
    """
    An analysis request in the Go version's format.

    @return: C{(analysis_id, body)}
    """
    import json

    analysis_id = str(uuid.uuid4())
    crits = {
        "analysis_id": analysis_id,
        "object_type": "Sample",
        "object_id": hashlib.md5(data).hexdigest()[:24],
        "md5": hashlib.md5(data).hexdigest(),
        "source": "cuckoodist-test",
    }
    if with_credentials:
        crits.update(username="analyst", api_key=DEFAULT_API_KEY)
    body = {
        # A timeout as long as a simulated analysis (Peers' default): check_results
        # checks first at submission + timeout.
        "payload": {"package": "exe", "options": "procmemdump=yes", "timeout": "5"},
        "file": {"name": f"sample-{i}.exe", "data": base64.b64encode(data).decode()},
        "crits_data": crits,
    }
    return analysis_id, json.dumps(body).encode()


def requests(queue: str, count: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """
    C{count} Go-format requests for C{queue}; every other one carries its
    own CRITs credentials, the rest rely on the configured CRITs.

    @return: the C{(queue, body)} messages, and analysis id -> sample md5.
    """
    messages, expected = [], {}
    for i in range(count):
        data = sample(i)
        analysis_id, body = request(i, data, with_credentials=i % 2 == 0)
        expected[analysis_id] = hashlib.md5(data).hexdigest()
        messages.append((queue, body))
    return messages, expected


async def publish(amqp: Any, messages: list[tuple[str, bytes]]) -> None:
    """
    Publish C{messages} as the CRITs-side service would: persistent and
    confirmed, on a connection of their own.
    """
    from cuckoodist.publish import publish_confirmed

    connection = AMQPConnectionService(reactor, amqp)
    connection.startService()
    try:
        await publish_confirmed(connection, messages)
    finally:
        await connection.stopService()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """
    Poll C{predicate} until it holds.

    @raise AssertionError: after C{timeout} seconds, naming C{what}.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)
        waited += interval


def start_daemon(testcase: Any, config: Config) -> list[dict]:
    """
    Run a daemon of C{config} in this process for the rest of C{testcase},
    deleting its queues afterwards.

    @return: every log event from now on, for the test to look at.
    """
    return run_daemon(testcase, config)[1]


def run_daemon(testcase: Any, config: Config) -> tuple[Any, list[dict]]:
    """
    L{start_daemon}, for a test that needs the daemon's services too (its
    C{ops} listener, its connection).

    @return: the running daemon, and every log event from now on.
    """
    from twisted.logger import globalLogPublisher

    from cuckoodist.tap import build_daemon

    # The queues it publishes to as well: with only some stages running, a
    # producer creates its next queue, which no stage here consumes.
    named = [(s.consumer_queue, getattr(s, "producer_queue", ""), getattr(s, "failed_queue", "")) for s in config.stages]
    queues = sorted({q for names in named for q in names if q})
    testcase.addCleanup(lambda: Deferred.fromCoroutine(delete_queues(config.amqp, queues)))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    daemon = build_daemon(config, reactor)
    daemon.startService()
    testcase.addCleanup(daemon.stopService)
    return daemon, events


async def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """
    L{wait_until} for conditions that settle within moments, checked often.
    """
    await wait_until(predicate, seconds, "the condition", interval=0.02)


async def delete_queues(amqp: Any, names: list[str]) -> None:
    """
    Remove a test's queues from the broker, and the clean-up queue that
    goes with each (deleting a queue that does not exist is no error).
    """
    from cuckoodist.stages.parse_and_submit import cleanup_queue

    connection = AMQPConnectionService(reactor, amqp)
    connection.startService()
    try:
        client = await connection.whenConnected(failAfterFailures=3)
        channel = await client.open_channel()
        for name in names:
            await channel.queue_delete(queue=name)
            if not name.endswith(".cleanup"):
                await channel.queue_delete(queue=cleanup_queue(name))
    finally:
        await connection.stopService()


def twistd_command(config_path: str, log_path: str) -> list[str]:
    """
    The command line of one daemon process, as a user would run it.
    """
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "-l", log_path, "cuckoodist", "-c", config_path,
    ]
