"""
The connection service against the real shared broker: failures are
reported once per change of state, in words, without the password and
without tracebacks; a good connection is reported once.
"""

import os
import socket

import attrs

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher, formatEvent
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import parse_amqp_url
from tests.harness import wait_for

AMQP_URL = os.environ.get("CUCKOODIST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
SECRET = "not-the-password-4711"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConnectionReportTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    async def run_service(self, url: str, attempts: int) -> AMQPConnectionService:
        """
        Run a connection service with fast retries until it has failed
        C{attempts} times (or connected), then stop it.
        """
        failures = []

        def policy(n: int) -> float:
            failures.append(n)
            return 0.05

        service = AMQPConnectionService(reactor, parse_amqp_url(url, ("amqp",)), retry_policy=policy)
        service.startService()
        try:
            for _ in range(400):
                if len(failures) >= attempts or service._client is not None:
                    break
                await deferLater(reactor, 0.025, lambda: None)
        finally:
            await service.stopService()
        return service

    def assert_one_warning(self, expected: str, where: str) -> None:
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(f"Cannot connect to RabbitMQ at {where}: {expected}", warnings[0])
        everything = " ".join(self.lines())
        self.assertNotIn(SECRET, everything)
        self.assertNotIn("NoTransition", everything)
        self.assertNotIn("Traceback", everything)
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None], [])

    def test_wrong_password(self) -> Deferred:
        """
        Three refused logins give one warning that says the broker refused
        authentication, and never the password.
        """
        async def go() -> None:
            await self.run_service(f"amqp://guest:{SECRET}@127.0.0.1:5672/?heartbeat=0", 3)
            self.assert_one_warning("authentication refused (403 ACCESS_REFUSED", "127.0.0.1:5672/")
        return Deferred.fromCoroutine(go())

    def test_unknown_vhost(self) -> Deferred:
        """
        A vhost the broker does not have is reported as such.
        """
        async def go() -> None:
            await self.run_service("amqp://guest:guest@127.0.0.1:5672/no-such-vhost-cd", 3)
            self.assert_one_warning("virtual host refused, unknown or not permitted (530 NOT_ALLOWED",
                                    "127.0.0.1:5672/no-such-vhost-cd")
        return Deferred.fromCoroutine(go())

    def test_closed_port(self) -> Deferred:
        """
        A port nobody listens on is reported as a refused connection, with
        a rounded retry delay.
        """
        port = closed_port()

        async def go() -> None:
            await self.run_service(f"amqp://guest:guest@127.0.0.1:{port}/", 3)
            self.assert_one_warning("connection refused; retrying with backoff, next in 0.1 s",
                                    f"127.0.0.1:{port}/")
        return Deferred.fromCoroutine(go())

    def test_connected_once(self) -> Deferred:
        """
        A good connection is reported once, at info level, with no warning.
        """
        async def go() -> None:
            await self.run_service(AMQP_URL, 1)
            infos = [line for line in self.lines(LogLevel.info) if "Connected to RabbitMQ" in line]
            self.assertEqual(infos, ["Connected to RabbitMQ at 127.0.0.1:5672/"])
            self.assertEqual(self.lines(LogLevel.warn), [])
        return Deferred.fromCoroutine(go())


class FailoverTests(TestCase):
    """
    Several nodes: each attempt goes to the next one, and the log names
    the node the daemon is connected to, never the password.
    """

    timeout = 60

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.dead = closed_port()
        good = parse_amqp_url(AMQP_URL, ("amqp",))
        # A node of the same cluster (same user, vhost) that is down.
        self.nodes = (attrs.evolve(good, host="127.0.0.1", port=self.dead), good)
        self.where = f"{good.host}:{good.port}{'' if good.vhost.startswith('/') else '/'}{good.vhost}"

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    def service(self, nodes) -> AMQPConnectionService:
        service = AMQPConnectionService(reactor, nodes, retry_policy=lambda n: 0.05)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_next_node_after_a_refusal(self) -> Deferred:
        """
        The first node refuses; the service connects to the second, says
        which, and warns once about the first.
        """
        async def go() -> None:
            service = self.service(self.nodes)
            await service.whenConnected()
            good = self.where
            self.assertEqual(service.connected_to, good)
            self.assertEqual(service.connections, 1)
            warnings = self.lines(LogLevel.warn)
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn(f"Cannot connect to RabbitMQ at 127.0.0.1:{self.dead}/: connection refused", warnings[0])
            self.assertEqual([line for line in self.lines(LogLevel.info) if "RabbitMQ at" in line],
                             [f"Connected to RabbitMQ at {good}"])
            self.assert_no_password()
        return Deferred.fromCoroutine(go())

    def assert_no_password(self) -> None:
        everything = " ".join(self.lines())
        self.assertNotIn(f":{self.nodes[1].password}@", everything)
        self.assertNotIn(self.nodes[1].url, everything)

    def test_next_node_after_a_loss(self) -> Deferred:
        """
        A lost connection is followed by an attempt at the next node; when
        that one refuses, the one after it (round robin, the first again)
        takes over, and the log says where the daemon is connected again.
        """
        async def go() -> None:
            service = self.service((self.nodes[1], self.nodes[0]))
            first = await service.whenConnected()
            good = self.where
            # Leave whenConnected's callbacks before asking it again.
            await (await first.open_channel()).channel_close()
            first.transport.loseConnection()
            await wait_for(lambda: service.connections == 2, 10)
            self.assertEqual(service.connected_to, good)
            warnings = self.lines(LogLevel.warn)
            self.assertEqual(len(warnings), 2, warnings)
            self.assertIn(f"Lost the RabbitMQ connection to {good}", warnings[0])
            self.assertIn(f"Cannot connect to RabbitMQ at 127.0.0.1:{self.dead}/: connection refused", warnings[1])
            self.assertEqual(
                [line for line in self.lines(LogLevel.info) if "RabbitMQ at" in line],
                [f"Connected to RabbitMQ at {good}", f"Reconnected to RabbitMQ at {good}"],
            )
            self.assert_no_password()
        return Deferred.fromCoroutine(go())

    def test_one_node_as_before(self) -> None:
        """
        One C{AmqpConfig}, as every caller passed before lists existed,
        is a list of one node; an empty list or an unknown queue type is a
        programming error.
        """
        service = AMQPConnectionService(reactor, self.nodes[1])
        self.assertEqual(service.queue_type, "classic")
        self.assertIsNone(service.connected_to)
        self.assertRaises(ValueError, AMQPConnectionService, reactor, ())
        self.assertRaises(ValueError, AMQPConnectionService, reactor, self.nodes, queue_type="stream")
