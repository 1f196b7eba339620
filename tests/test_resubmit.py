# -*- test-case-name: tests.test_resubmit -*-
"""
C{cuckoodist resubmit} against hostile dump files, through the real
shared broker.
"""

from __future__ import annotations

import io
import json
import os

import yaml
from automat import NoTransition
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist import cli
from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.commands.resubmit import ResubmitOptions, resubmit
from cuckoodist.messages import resubmittable
from cuckoodist.config import parse_config
from tests import harness


def write_dump(directory: str, name: str, queue: str, message: str, stage: str = "feed_cuckoo") -> str:
    """
    Write a dump file by hand, as ASCII JSON: a lone surrogate in C{queue}
    or C{message} is stored as the escape C{\\ud800}, as the overseer now
    writes it (and as a hostile file may hold anyway).
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    doc = {"version": 1, "stage": stage, "queue": queue, "reason": "boom", "message": message}
    with open(path, "w", encoding="ascii") as fp:
        json.dump(doc, fp)
    return path


class OptionsTests(SynchronousTestCase):
    """
    The command line accepts what the README shows, and refuses nonsense
    in one line.
    """

    def setUp(self) -> None:
        self.dump_dir = self.mktemp()
        os.makedirs(self.dump_dir)
        self.config = self.mktemp()
        with open(self.config, "w") as fp:
            yaml.safe_dump(
                {"stages": [{"type": "check_results", "consumer_queue": "mine/check"},
                            {"type": "overseer", "dump_dir": self.dump_dir}]},
                fp,
            )

    def parse(self, *argv: str) -> ResubmitOptions:
        options = ResubmitOptions()
        options.parseOptions(list(argv))
        return options

    def test_dump_dir_first_or_last(self) -> None:
        """
        C{DUMP_DIR} may come before the options (as the README shows),
        after them, or between them, with the same result.
        """
        orders = [
            [self.dump_dir, "--only-stage", "parse_and_submit", "-c", self.config],
            ["--only-stage", "parse_and_submit", "-c", self.config, self.dump_dir],
            ["--only-stage=parse_and_submit", self.dump_dir, "-c", self.config],
        ]
        for argv in orders:
            options = self.parse(*argv)
            self.assertEqual(options["dump_dir"], self.dump_dir)
            self.assertEqual(options["only-stage"], "parse_and_submit")
            self.assertEqual(options["allowed_queues"], frozenset({"mine/check", "worker/failed"}))

    def test_console_script_order(self) -> None:
        """
        Through the C{cuckoodist} console script too.
        """
        options = cli.Options()
        options.parseOptions(["resubmit", self.dump_dir, "--only-stage", "feed_cuckoo", "-c", self.config])
        self.assertEqual(options.subOptions["dump_dir"], self.dump_dir)
        self.assertEqual(options.subOptions["only-stage"], "feed_cuckoo")

    def test_any_queue(self) -> None:
        """
        C{--any-queue} lifts the configuration's queue list; without C{-c}
        there is no list, and the flag is refused as meaningless.
        """
        self.assertIsNone(self.parse(self.dump_dir, "-c", self.config, "--any-queue")["allowed_queues"])
        self.assertIsNone(self.parse(self.dump_dir)["allowed_queues"])
        self.assertRaises(usage.UsageError, self.parse, self.dump_dir, "--any-queue")

    def test_refusals(self) -> None:
        """
        Bad arguments are one-line usage errors.
        """
        for argv in [
            [],
            [self.dump_dir, self.dump_dir],
            [self.dump_dir, "--timeout", "0"],
            [self.dump_dir, "--timeout", "nan"],
            [self.dump_dir, "--timeout", "soon"],
            [self.dump_dir, "--bogus"],
            [os.path.join(self.dump_dir, "missing")],
            [self.dump_dir, "-c", self.config, "--amqp", harness.AMQP_URL],
        ]:
            with self.assertRaises(usage.UsageError, msg=argv) as caught:
                self.parse(*argv)
            self.assertNotIn("\n", str(caught.exception))

    def test_cli_exit_code(self) -> None:
        """
        The console script turns a usage error into exit code 2.
        """
        err = io.StringIO()
        self.patch(cli.sys, "stderr", err)
        self.assertEqual(cli.main(["resubmit", self.dump_dir, "--any-queue"]), 2)
        self.assertIn("--any-queue", err.getvalue())


class MessageBodyTests(SynchronousTestCase):
    """
    L{resubmittable} publishes what was received, and always valid UTF-8.
    """

    def test_exact_bytes(self) -> None:
        """
        A message without C{Retry} goes out byte for byte as it was
        received, spacing and non-ASCII text included; so does a JSON
        escape of a lone surrogate, and text that is not JSON.
        """
        for text in ['{ "a" : "\u00e9t\u00e9" }', '{"x":"\\ud800"}', "not json \u00e9", "[1, 2]"]:
            self.assertEqual(resubmittable(text), text.encode("utf-8"))

    def test_lone_surrogate_in_text(self) -> None:
        """
        Text holding a lone surrogate (no UTF-8 form) is sent with the
        surrogate as a JSON escape: valid UTF-8, and the same JSON.
        """
        text = '{"x":"a\ud800b","y":"\u00e9"}'
        body = resubmittable(text)
        self.assertEqual(body, b'{"x":"a\\ud800b","y":"\xc3\xa9"}')
        self.assertEqual(json.loads(body), json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")))

    def test_retry_cleared(self) -> None:
        """
        C{Retry} is removed, and a lone surrogate in another field stays an
        escape, so the body is ASCII.
        """
        body = resubmittable('{"Retry":{"attempts":3},"x":"\\ud800","y":"\u00e9"}')
        body.decode("ascii")
        self.assertEqual(json.loads(body), {"x": "\ud800", "y": "\u00e9"})

    def test_hostile_json(self) -> None:
        """
        JSON that Python cannot load (deep nesting, huge integers) is sent
        as it is instead of crashing.
        """
        for text in ["[" * 100000 + "]" * 100000, '{"Retry":1,"n":' + "9" * 5000 + "}"]:
            self.assertEqual(resubmittable(text), text.encode("ascii"))


class ResubmitBrokerTests(TestCase):
    """
    Resubmitting hostile dumps through the real broker: each file is
    published or reported, never a crash, never a hang.
    """

    timeout = 60

    def setUp(self) -> None:
        self.amqp = parse_config(
            {"amqp": harness.AMQP_URL, "stages": [{"type": "overseer", "dump_dir": "x"}]}
        ).amqp
        self.queue = f"{harness.prefix()}/feed_cuckoo"
        self.dump_dir = self.mktemp()
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.amqp, [self.queue])))

    async def receive(self, count: int) -> list[bytes]:
        """
        Consume C{count} bodies from the test queue.
        """
        received: list[bytes] = []
        got_all: Deferred[None] = Deferred()
        connection = AMQPConnectionService(reactor, self.amqp)

        async def handler(delivery, outbox) -> None:
            received.append(delivery.body)
            if len(received) == count:
                got_all.callback(None)

        consumer = QueueConsumer(connection, self.queue, 10, handler, reactor)
        connection.startService()
        consumer.startService()
        try:
            await got_all.addTimeout(20, reactor)
        finally:
            await consumer.stopService()
            await connection.stopService()
        return received

    async def test_hostile_dumps(self) -> None:
        """
        Lone surrogates in messages are resubmitted; invalid queue names
        (300 characters, NUL, lone surrogate, amq.*) and unreadable files
        are skipped with one line each, and stay on disk; everything else
        still goes, and the summary counts both.
        """
        good = [
            write_dump(self.dump_dir, "1-plain.json", self.queue, '{"n": 1, "Retry": {"attempts": 4}}'),
            write_dump(self.dump_dir, "2-raw-surrogate.json", self.queue, '{"n":2,"x":"\ud800"}'),
            write_dump(self.dump_dir, "3-escaped.json", self.queue, '{"n":3,"x":"\\udfff","Retry":{}}'),
        ]
        bad = {
            write_dump(self.dump_dir, "4-long.json", "q" * 300, "{}"): "at most 255 bytes",
            write_dump(self.dump_dir, "5-nul.json", "worker/\x00x", "{}"): "control characters",
            write_dump(self.dump_dir, "6-surrogate.json", "worker/\udc80", "{}"): "lone surrogate",
            write_dump(self.dump_dir, "7-amq.json", "amq.direct", "{}"): "reserved",
        }
        junk = os.path.join(self.dump_dir, "8-junk.json")
        with open(junk, "wb") as fp:
            fp.write(b"\xff\xfe not json")
        out = io.StringIO()

        done, skipped = await resubmit(reactor, self.amqp, self.dump_dir, None, out, timeout=30)

        lines = out.getvalue().splitlines()
        self.assertEqual((done, skipped), (3, 5))
        self.assertEqual(lines[-1], "resubmitted 3, skipped 5")
        for path, reason in bad.items():
            [line] = [l for l in lines if l.startswith(f"skipped {path}: ")]
            self.assertIn(reason, line)
        self.assertTrue(any(l.startswith(f"skipped {junk}: ") for l in lines))
        self.assertNotIn("q" * 300, out.getvalue())
        self.assertEqual(sorted(os.listdir(self.dump_dir)), sorted(os.path.basename(p) for p in [*bad, junk]))
        for path in good:
            self.assertFalse(os.path.exists(path))

        bodies = {json.loads(b)["n"]: b for b in await self.receive(3)}
        self.assertEqual(bodies[1], b'{"n":1}')
        self.assertEqual(bodies[2], b'{"n":2,"x":"\\ud800"}')
        self.assertEqual(json.loads(bodies[3]), {"n": 3, "x": "\udfff"})

    async def test_allowed_queues(self) -> None:
        """
        With a configuration's queue list, a dump naming another queue is
        skipped (naming the option that lifts the rule) and kept.
        """
        mine = write_dump(self.dump_dir, "1-mine.json", self.queue, '{"n":1}')
        other = write_dump(self.dump_dir, "2-other.json", self.queue + "-other", '{"n":2}')
        out = io.StringIO()
        done, skipped = await resubmit(
            reactor, self.amqp, self.dump_dir, None, out, allowed_queues=frozenset({self.queue}), timeout=30
        )
        self.assertEqual((done, skipped), (1, 1))
        self.assertIn(f"skipped {other}: queue {self.queue}-other is not consumed", out.getvalue())
        self.assertIn("--any-queue", out.getvalue())
        self.assertFalse(os.path.exists(mine))
        self.assertTrue(os.path.exists(other))
        self.assertEqual(await self.receive(1), [b'{"n":1}'])


class _Silent(Protocol):
    """
    A server that accepts connections and never says a word: the broker
    that hangs.  C{gone} fires when the client has closed the connection.
    """

    def __init__(self) -> None:
        self.gone: Deferred[None] = Deferred()

    def connectionLost(self, reason: object) -> None:
        self.gone.callback(None)


class ResubmitTimeoutTests(TestCase):
    """
    A broker that never answers, or is not there, makes resubmit fail in
    bounded time, with every file kept.
    """

    timeout = 30

    async def assertGivesUp(self, port: int) -> None:
        """
        Resubmitting one dump to a broker at C{port} fails after the
        timeout: the summary line is printed, the error says what
        happened, and the file stays.
        """
        amqp = parse_config(
            {"amqp": f"amqp://guest:guest@127.0.0.1:{port}/", "stages": [{"type": "overseer", "dump_dir": "x"}]}
        ).amqp
        dump_dir = self.mktemp()
        path = write_dump(dump_dir, "1.json", "worker/feed_cuckoo", '{"n":1}')
        out = io.StringIO()
        started = reactor.seconds()
        with self.assertRaises(TimeoutError) as caught:
            await resubmit(reactor, amqp, dump_dir, None, out, timeout=1)
        self.assertLess(reactor.seconds() - started, 15)
        self.assertIn("did not confirm every message within 1 s", str(caught.exception))
        self.assertIn("1 file(s) kept", str(caught.exception))
        self.assertEqual(out.getvalue().splitlines()[-1], "resubmitted 0, skipped 0")
        self.assertTrue(os.path.exists(path))

    async def test_silent_broker(self) -> None:
        """
        A server that accepts the connection and never answers the AMQP
        handshake.
        """
        servers: list[_Silent] = []
        factory = Factory()
        factory.buildProtocol = lambda addr: servers.append(_Silent()) or servers[-1]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await self.assertGivesUp(port.getHost().port)
        self.assertEqual(len(servers), 1)
        await servers[0].gone.addTimeout(5, reactor)
        # Known defect outside this command: when AMQPConnectionService is
        # stopped during its login, the client connection closes only after
        # ClientService reached Stopped, and automat logs NoTransition.
        self.flushLoggedErrors(NoTransition)

    async def test_no_broker(self) -> None:
        """
        Nothing listening: the connection service retries with backoff
        until the timeout ends the run.
        """
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        await self.assertGivesUp(number)
