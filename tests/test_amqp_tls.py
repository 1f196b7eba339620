"""
amqps:// against a private RabbitMQ node with a TLS listener and
certificates made for the test: verification on by default, a wrong CA
refused with a clear reason, client certificates.
"""

import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.topology import declare_queue
from cuckoodist.config import parse_amqp_url
from tests.rabbitnode import SKIP_REASON, TestPKI, private_node


class AmqpsTests(TestCase):
    skip = SKIP_REASON
    timeout = 90

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    async def attempt(self, url: str) -> AMQPConnectionService:
        """
        Start a service for C{url}; return it once connected or after three
        failed attempts (then stopped).
        """
        failures = []
        service = AMQPConnectionService(
            reactor, parse_amqp_url(url, ("amqp",)), retry_policy=lambda n: failures.append(n) or 0.05
        )
        service.startService()
        self.addCleanup(service.stopService)
        for _ in range(500):
            if len(failures) >= 3 or service._client is not None:
                break
            await deferLater(reactor, 0.02, lambda: None)
        return service

    async def round_trip(self, service: AMQPConnectionService) -> None:
        client = await service.whenConnected()
        channel = await client.open_channel()
        await channel.enable_confirms()
        await declare_queue(channel, "tls.check")
        await channel.publish("tls.check", b"over tls")
        reply = await channel.basic_get(queue="tls.check", no_ack=True)
        self.assertEqual(reply.content.body, b"over tls")

    def test_verified_round_trip(self) -> Deferred:
        """
        With the test CA as cacertfile, the connection verifies the
        broker's certificate and host name, and a message goes through.
        """
        node = private_node(self, tls=True)

        async def go() -> None:
            service = await self.attempt(node.amqps_url(cacertfile=node.pki.ca))
            await self.round_trip(service)
            self.assertEqual(self.warnings(), [])
        return Deferred.fromCoroutine(go())

    def test_wrong_ca_refused(self) -> Deferred:
        """
        A broker certificate from another CA fails the handshake, logged
        once with the reason; the system trust store (no cacertfile)
        refuses it too.
        """
        node = private_node(self, tls=True)
        other = TestPKI(tempfile.mkdtemp(dir=node.base), name="other")

        async def go() -> None:
            service = await self.attempt(node.amqps_url(cacertfile=other.ca))
            self.assertIsNone(service._client)
            warnings = self.warnings()
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn(f"localhost:{node.amqps_port}/: TLS handshake failed (certificate verify failed)",
                          warnings[0])
            del self.events[:]
            service = await self.attempt(node.amqps_url())
            self.assertIsNone(service._client)
            self.assertIn("TLS handshake failed (certificate verify failed)", " ".join(self.warnings()))
        return Deferred.fromCoroutine(go())

    def test_client_certificate(self) -> Deferred:
        """
        A node that requires client certificates refuses a client without
        one and accepts the test client certificate.
        """
        node = private_node(self, tls=True, require_client_cert=True)

        async def go() -> None:
            service = await self.attempt(node.amqps_url(cacertfile=node.pki.ca))
            self.assertIsNone(service._client)
            warnings = self.warnings()
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn("TLS handshake failed", warnings[0])
            service = await self.attempt(node.amqps_url(
                cacertfile=node.pki.ca, certfile=node.pki.client_cert, keyfile=node.pki.client_key))
            await self.round_trip(service)
        return Deferred.fromCoroutine(go())
