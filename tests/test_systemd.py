"""
sd_notify on a real unix datagram socket: the notifier on its own (a path,
the abstract namespace, a socket that is gone), and a real daemon, in
this process and as C{twistd -n cuckoodist}, that says READY=1 once it
consumes and STOPPING=1 as soon as it begins to stop, and says nothing at
all without C{$NOTIFY_SOCKET}.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cuckoodist.config import parse_config
from cuckoodist.systemd import Notifier, notify_address
from cuckoodist.tap import build_daemon
from tests import harness


class Listener:
    """
    The receiving end of C{$NOTIFY_SOCKET}, as systemd holds it.

    @ivar env: the value of C{NOTIFY_SOCKET} that names it.
    """

    def __init__(self, testcase: Any, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        if abstract:
            name = f"cuckoodist-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env = "@" + name
        else:
            # Short: a socket's path must fit in 108 bytes, and trial's may not.
            directory = tempfile.mkdtemp(prefix="cuckoodist-notify-")
            testcase.addCleanup(shutil.rmtree, directory, True)
            self.env = os.path.join(directory, "notify")
            self.sock.bind(self.env)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def drain(self) -> list[list[str]]:
        """
        Read every datagram waiting.

        @return: all messages so far, each as its lines.
        """
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode("utf-8").split("\n"))

    def assignments(self) -> list[str]:
        return [line for message in self.drain() for line in message]


class NotifierTests(SynchronousTestCase):
    def test_path(self) -> None:
        """
        A message goes to the socket C{$NOTIFY_SOCKET} names, as one
        datagram of newline-separated assignments.
        """
        listener = Listener(self)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.env})
        self.assertTrue(notifier.notify("READY=1", "STATUS=two\nlines"))
        self.assertEqual(listener.drain(), [["READY=1", "STATUS=two lines"]])

    def test_abstract(self) -> None:
        """
        A leading C{@} names a socket in Linux's abstract namespace.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("the abstract socket namespace is Linux's")
        listener = Listener(self, abstract=True)
        self.assertEqual(notify_address({"NOTIFY_SOCKET": listener.env}), b"\0" + listener.env[1:].encode())
        self.assertTrue(Notifier.from_environ({"NOTIFY_SOCKET": listener.env}).notify("STOPPING=1"))
        self.assertEqual(listener.drain(), [["STOPPING=1"]])

    def test_unset(self) -> None:
        """
        Without C{$NOTIFY_SOCKET} (or with it empty) there is no notifier.
        """
        self.assertIsNone(Notifier.from_environ({}))
        self.assertIsNone(Notifier.from_environ({"NOTIFY_SOCKET": ""}))

    def test_gone(self) -> None:
        """
        A socket that is not there costs one warning, never an exception.
        """
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        notifier = Notifier(os.path.abspath(self.mktemp()))
        self.assertFalse(notifier.notify("READY=1"))
        self.assertFalse(notifier.notify("STOPPING=1"))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "NOTIFY_SOCKET" in e["log_format"]]
        self.assertEqual(len(warnings), 1)


class DaemonNotifyTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.peers = harness.Peers()
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        doc = harness.config_doc(self.peers, self.prefix, os.path.abspath(self.mktemp()), ["check_results", "overseer"])
        self.config = parse_config(doc)
        queues = [f"{self.prefix}/check_results", f"{self.prefix}/parse_and_submit", f"{self.prefix}/failed"]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))

    def start(self, environ: dict) -> Any:
        daemon = build_daemon(self.config, reactor, environ)
        daemon.startService()
        self.stopped = False

        async def stop() -> None:
            if not self.stopped:
                await daemon.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return daemon

    async def ready_then_stopping(self, abstract: bool) -> None:
        listener = Listener(self, abstract=abstract)
        daemon = self.start({"NOTIFY_SOCKET": listener.env, "PATH": "/usr/bin"})
        await harness.wait_until(lambda: "READY=1" in listener.assignments(), 15, "READY=1")
        consumers = [stage.consumer for stage in daemon if hasattr(stage, "consumer")]
        self.assertEqual(len(consumers), 2)
        self.assertTrue(all(c.consuming for c in consumers))
        [ready] = [m for m in listener.messages if "READY=1" in m]
        [status] = [line for line in ready if line.startswith("STATUS=")]
        self.assertTrue(status.startswith("STATUS=Ready: connected to 127.0.0.1:5672/, 2 consumer(s)"), status)
        self.assertNotIn("STOPPING=1", listener.assignments())

        connection = daemon.getServiceNamed("amqp")
        stopping = daemon.stopService()
        self.stopped = True
        # Already sent, before the stages drained and the connection closed.
        self.assertIn("STOPPING=1", listener.assignments())
        self.assertIsNotNone(connection.connected_to)
        await stopping
        self.assertEqual(listener.assignments().count("READY=1"), 1)

    async def test_ready_then_stopping_path(self) -> None:
        """
        Under systemd (C{$NOTIFY_SOCKET} a path), the daemon sends READY=1
        with a STATUS= line once every consumer consumes, once, and
        STOPPING=1 the moment it begins to stop.
        """
        await self.ready_then_stopping(abstract=False)

    async def test_ready_then_stopping_abstract(self) -> None:
        """
        The same with C{$NOTIFY_SOCKET} in the abstract namespace.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("the abstract socket namespace is Linux's")
        await self.ready_then_stopping(abstract=True)

    async def test_not_under_systemd(self) -> None:
        """
        Without C{$NOTIFY_SOCKET} the daemon has no notifier and runs and
        stops as before.
        """
        daemon = self.start({"PATH": "/usr/bin"})
        self.assertNotIn("systemd", [service.name for service in daemon])
        consumers = [stage.consumer for stage in daemon if hasattr(stage, "consumer")]
        await harness.wait_until(lambda: all(c.consuming for c in consumers), 15, "the consumers")
        self.stopped = True
        await daemon.stopService()


class _Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


class TwistdNotifyTests(TestCase):
    timeout = 60

    async def test_twistd_under_systemd(self) -> None:
        """
        C{twistd -n cuckoodist}, as the unit runs it, reads
        C{$NOTIFY_SOCKET} from its environment: READY=1 once it consumes,
        STOPPING=1 on SIGTERM, before it shuts down cleanly.
        """
        listener = Listener(self)
        queue = f"{harness.prefix()}/failed"
        config = os.path.abspath(self.mktemp() + ".yaml")
        log = os.path.abspath(self.mktemp() + ".log")
        doc = {
            "amqp": harness.AMQP_URL,
            "metrics": {"listen": ""},
            "stages": [{"type": "overseer", "consumer_queue": queue, "dump_dir": os.path.abspath(self.mktemp())}],
        }
        with open(config, "w", encoding="utf-8") as fp:
            json.dump(doc, fp)
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(parse_config(doc).amqp, [queue])))
        command = harness.twistd_command(config, log)
        env = {**os.environ, "PYTHONPATH": harness.REPO, "NOTIFY_SOCKET": listener.env}
        process = _Ended()
        transport = reactor.spawnProcess(process, command[0], command, env=env, path=harness.REPO)

        def kill() -> Deferred:
            if not process.ended.called:
                transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill)
        await harness.wait_until(lambda: "READY=1" in listener.assignments(), 30, "READY=1")
        self.assertNotIn("STOPPING=1", listener.assignments())
        transport.signalProcess("TERM")
        await process.ended
        self.assertIn("STOPPING=1", listener.assignments())
        with open(log, encoding="utf-8") as fp:
            self.assertIn("Server Shut Down.", fp.read())
