"""
The connection service against the real shared broker: failures are
reported once per change of state, in words, without the password and
without tracebacks; a good connection is reported once.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher, formatEvent
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import parse_amqp_url

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
