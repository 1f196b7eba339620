# -*- test-case-name: tests.test_amqp -*-
"""
The daemon's single connection to RabbitMQ, kept alive with backoff.

L{AMQPConnectionService} is a L{ClientService}: when the broker goes away it
reconnects with exponential backoff and jitter, forever.  Stages never hold
the protocol across a reconnect; they ask L{whenConnected} again and rebuild
their channel, so the topology is re-declared on every new connection.
"""

import os
from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from txamqp.spec import load as load_spec

from cuckoodist.amqp.protocol import AMQPClient, ConfirmingDelegate, describe_close

__all__ = ["AMQPConnectionService", "SPEC_PATH", "load_amqp_spec"]

log = Logger()

SPEC_PATH = os.path.join(os.path.dirname(__file__), "spec", "amqp0-9-1-rabbitmq.xml")


def load_amqp_spec() -> Any:
    """
    Load the project's AMQP 0-9-1 spec (txAMQP ships none).
    """
    return load_spec(SPEC_PATH)


class _ClientFactory(Factory):
    """
    Builds L{AMQPClient}s for one vhost, heartbeat and clock.
    """

    noisy = False

    def __init__(self, spec: Any, vhost: str, heartbeat: int, clock: IReactorTime) -> None:
        self._spec = spec
        self._vhost = vhost
        self._heartbeat = heartbeat
        self._clock = clock

    def buildProtocol(self, addr: Any) -> AMQPClient:
        return AMQPClient(
            ConfirmingDelegate(),
            vhost=self._vhost,
            spec=self._spec,
            heartbeat=self._heartbeat,
            clock=self._clock,
        )


class AMQPConnectionService(ClientService):
    """
    Keeps one authenticated AMQP connection open.

    @param reactor: the reactor to connect with and to time retries on.
    @param amqp: the C{amqp} section of the configuration.
    @param retry_policy: seconds to wait after N failed attempts; the
        default backs off from 1 s to 30 s with jitter.
    """

    def __init__(
        self,
        reactor: Any,
        amqp: Any,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        endpoint = HostnameEndpoint(reactor, amqp.host, amqp.port, timeout=15)
        if amqp.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(amqp.host), endpoint)
        factory = _ClientFactory(load_amqp_spec(), amqp.vhost, amqp.heartbeat, reactor)
        super().__init__(
            endpoint,
            factory,
            retryPolicy=retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=30.0),
            clock=reactor,
            prepareConnection=self._login,
        )
        self._amqp = amqp
        self._where = f"{amqp.host}:{amqp.port}{amqp.vhost}"
        self._client: AMQPClient | None = None
        self._stopping = False

    def _login(self, client: AMQPClient) -> Deferred:
        """
        Authenticate with SASL PLAIN and open the vhost.  A failure here
        counts as a failed connection attempt and is retried with backoff.
        """

        async def login() -> None:
            try:
                await client.authenticate(self._amqp.username, self._amqp.password, mechanism="PLAIN")
            except Exception as e:
                log.error(
                    "AMQP login to {where} as {user} failed: {why}",
                    where=self._where,
                    user=self._amqp.username,
                    why=describe_close(e),
                )
                client.transport.loseConnection()
                raise
            log.info("Connected to RabbitMQ at {where}", where=self._where)
            self._client = client
            client.disconnected.wait().addCallback(self._lost)

        return Deferred.fromCoroutine(login())

    def _lost(self, _: object) -> None:
        if not self._stopping:
            log.warn("Lost the RabbitMQ connection to {where}; reconnecting", where=self._where)
        else:
            log.info("Closed the RabbitMQ connection to {where}", where=self._where)

    def stopService(self) -> Deferred:
        """
        Close the connection with a proper C{connection.close}, so that the
        broker requeues unacked deliveries at once, then stop reconnecting.
        """

        self._stopping = True

        async def close_then_stop() -> None:
            client, self._client = self._client, None
            if client is not None and not client.closed:
                try:
                    await client.close(within=2)
                except Exception as e:
                    log.info("AMQP close was not clean: {why}", why=describe_close(e))
            await ClientService.stopService(self)

        return Deferred.fromCoroutine(close_then_stop())
