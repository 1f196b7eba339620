# -*- test-case-name: tests.test_amqp_connection -*-
"""
The daemon's single connection to RabbitMQ, kept alive with backoff.

L{AMQPConnectionService} is a L{ClientService}: when the broker goes away it
reconnects with exponential backoff and jitter, forever.  Stages never hold
the protocol across a reconnect; they ask L{whenConnected} again and rebuild
their channel, so the topology is re-declared on every new connection.

Logging in happens in C{prepareConnection}.  A connection the broker drops
during the login (a refused password, an unknown vhost, a failed TLS
handshake) must count as one failed attempt, not also as a lost
connection: L{ClientService} has no transition for a disconnection while it
is still connecting and would log an Automat C{NoTransition} traceback on
every retry.  L{_LoginGate} therefore tells the service about a lost
connection only once the login has succeeded.  What happened is reported by
L{ConnectionLog}, once per change of state.

A cluster is only worth having if the daemon can leave a node that died.
Given the URLs of several nodes (the C{amqp} key as a list), the service
tries the next node on every attempt, round robin (L{_NodeRotation}): a
lost node costs one reconnect, to the next one, and a node that stays down
costs one refused attempt per round, still within the backoff.  The nodes
are expected to share users and the vhost, as a cluster's nodes do; each
keeps its own host, port and TLS settings.  The log names the node the
daemon is connected to, never a password.
"""

import os
from typing import Any, Callable, Sequence

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.spec import load as load_spec
from zope.interface import implementer

from cuckoodist.amqp.connection_log import ConnectionLog, why_connect_failed
from cuckoodist.amqp.protocol import AMQPClient, Closed, ConfirmingDelegate, describe_close
from cuckoodist.amqp.tls import client_tls_options
from cuckoodist.amqp.topology import CLASSIC, QUEUE_TYPES
from cuckoodist.metrics import Metrics

__all__ = ["AMQPConnectionService", "SPEC_PATH", "load_amqp_spec"]

log = Logger()

#: The longest wait between connection attempts: the time the daemon may
#: stay idle after its broker is back.
_MAX_RECONNECT_DELAY = 5.0

SPEC_PATH = os.path.join(os.path.dirname(__file__), "spec", "amqp0-9-1-rabbitmq.xml")

#: Seconds from TCP connect to an open vhost; a peer that is not a broker
#: (a wrong port) would otherwise hold the attempt for ever.
HANDSHAKE_TIMEOUT = 15.0


def load_amqp_spec() -> Any:
    """
    Load the project's AMQP 0-9-1 spec (txAMQP ships none).
    """
    return load_spec(SPEC_PATH)


class _ClientFactory(Factory):
    """
    Builds L{AMQPClient}s for the vhost and heartbeat of the node being
    connected to, and one clock.

    @param node: returns the C{AmqpConfig} of the current attempt's node.
    """

    noisy = False

    def __init__(self, spec: Any, node: Callable[[], Any], clock: IReactorTime) -> None:
        self._spec = spec
        self._node = node
        self._clock = clock

    def buildProtocol(self, addr: Any) -> AMQPClient:
        node = self._node()
        return AMQPClient(
            ConfirmingDelegate(),
            vhost=node.vhost,
            spec=self._spec,
            heartbeat=node.heartbeat,
            clock=self._clock,
        )


@implementer(IStreamClientEndpoint)
class _NodeRotation:
    """
    Connects to one node per attempt, the next one each time, round robin.
    L{ClientService} makes one attempt at a time, so L{current} is the
    node of the attempt under way (or of the connection it made).

    @param endpoints: one endpoint per node, in the configured order.
    @ivar current: the index of the node of the latest attempt.
    """

    def __init__(self, endpoints: Sequence[Any]) -> None:
        self._endpoints = tuple(endpoints)
        self._next = 0
        self.current = 0

    def connect(self, factory: Any) -> Deferred:
        self.current, self._next = self._next, (self._next + 1) % len(self._endpoints)
        return self._endpoints[self.current].connect(factory)


class _LoginGate(Protocol):
    """
    Sits between the transport and L{ClientService}'s protocol proxy and
    hides a connection lost before the login completed from the service
    (the client itself is still told, so that the login fails).

    @ivar proxy: the service's proxy around the L{AMQPClient}; attribute
        lookups on it reach the client.
    """

    def __init__(self, proxy: Any, lost: Callable[[Failure], None]) -> None:
        self.proxy = proxy
        self._lost = lost

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.proxy.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.proxy.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self.proxy.logged_in:
            said = getattr(self.proxy, "closed_by_broker", None)
            # The broker's own reason (320 CONNECTION_FORCED ...), as txAMQP
            # wraps it, rather than the clean close of the socket after it.
            self._lost(Failure(Closed(said)) if said is not None else reason)
            self.proxy.connectionLost(reason)
        else:
            self.proxy.lost_during_login(reason)


class _GateFactory(Factory):
    noisy = False

    def __init__(self, wrapped: Any, lost: Callable[[Failure], None]) -> None:
        self._wrapped = wrapped
        self._lost = lost

    def buildProtocol(self, addr: Any) -> _LoginGate | None:
        proxy = self._wrapped.buildProtocol(addr)
        return None if proxy is None else _LoginGate(proxy, self._lost)


@implementer(IStreamClientEndpoint)
class _GatedEndpoint:
    """
    Connects through C{endpoint} with a L{_LoginGate} in front of each
    protocol, and reports failed connection attempts.
    """

    def __init__(self, endpoint: Any, failed: Callable[[Failure], None], lost: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed
        self._lost = lost

    def connect(self, factory: Any) -> Deferred:
        def failed(reason: Failure) -> Failure:
            self._failed(reason)
            return reason

        connecting = self._endpoint.connect(_GateFactory(factory, self._lost))
        return connecting.addCallbacks(lambda gate: gate.proxy, failed)


def where(amqp: Any) -> str:
    """
    A node as the log names it, C{host:port/vhost}: never the password.
    """
    return f"{amqp.host}:{amqp.port}{'' if amqp.vhost.startswith('/') else '/'}{amqp.vhost}"


class AMQPConnectionService(ClientService):
    """
    Keeps one authenticated AMQP connection open, to one node of a list.

    @param reactor: the reactor to connect with and to time retries on.
    @param amqp: the C{amqp} section of the configuration (an
        C{AmqpConfig}), or a sequence of them, one per node of a cluster
        (C{Config.amqp_nodes}): each attempt goes to the next one.
    @param retry_policy: seconds to wait after N failed attempts; the
        default backs off from 1 s to 5 s with jitter, so the daemon is
        consuming again within seconds of a broker coming back, however
        long it was away (a refused connection costs the broker nothing).
        Delays are rounded to tenths of a second.
    @param log: where connection state changes go.
    @param queue_type: the type (C{classic} or C{quorum}) of every queue
        declared over this connection; consumers and producers read it
        here (see L{cuckoodist.amqp.consumer}).
    @param metrics: the daemon's L{Metrics}, to export whether the
        connection is up (read at each scrape), the reconnects, and the
        publishes awaiting a confirm; C{None} (tools, tests) for none.
    @raise ConfigError: a TLS file cannot be read or parsed.

    @ivar queue_type: as given.
    @ivar connected_to: C{host:port/vhost} of the node of the current
        connection, C{None} while there is none.
    @ivar connections: how many times the service has logged in, the
        first connection included.
    @ivar last_error: why the latest attempt failed or the latest
        connection was lost, in the log's words; C{None} before any
        failure.  Kept after a reconnection: read it only while
        L{connected_to} is C{None} (the readiness check does).
    """

    def __init__(
        self,
        reactor: Any,
        amqp: Any,
        retry_policy: Callable[[int], float] | None = None,
        log: Logger | None = None,
        queue_type: str = CLASSIC,
        metrics: Metrics | None = None,
    ) -> None:
        nodes = tuple(amqp) if isinstance(amqp, (list, tuple)) else (amqp,)
        if not nodes:
            raise ValueError("at least one broker node is needed")
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"unknown queue type {queue_type!r}")
        self._nodes = nodes
        self.queue_type = queue_type
        self.connected_to: str | None = None
        self.connections = 0
        self._report = ConnectionLog(where(nodes[0]), log)
        self._why: str | None = None
        self.last_error: str | None = None
        policy = retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=_MAX_RECONNECT_DELAY)
        endpoints = []
        for node in nodes:
            endpoint = HostnameEndpoint(reactor, node.host, node.port, timeout=15)
            if node.tls:
                endpoint = wrapClientTLS(client_tls_options(node), endpoint)
            endpoints.append(endpoint)
        self._rotation = _NodeRotation(endpoints)
        endpoint = _GatedEndpoint(self._rotation, self._connect_failed, self._connection_lost)
        factory = _ClientFactory(load_amqp_spec(), lambda: self._node, reactor)
        super().__init__(
            endpoint,
            factory,
            retryPolicy=lambda attempt: self._next_delay(policy, attempt),
            clock=reactor,
            prepareConnection=self._login,
        )
        self._clock = reactor
        self._client: AMQPClient | None = None
        self._stopping = False
        self._metrics = metrics
        if metrics is not None:
            metrics.amqp_connected.set_function(lambda: 1.0 if self.connected_to is not None else 0.0)
            metrics.amqp_confirms_pending.set_function(self._confirms_pending)

    def _confirms_pending(self) -> float:
        """
        Publishes on the current connection the broker has not confirmed:
        read from the channels at each scrape, so it can never drift.
        """
        client = self._client
        if client is None or self.connected_to is None:
            return 0.0
        return float(client.confirms_pending)

    @property
    def _node(self) -> Any:
        """
        The C{AmqpConfig} of the node of the latest attempt.
        """
        return self._nodes[self._rotation.current]

    @property
    def _where(self) -> str:
        return where(self._node)

    def _next_delay(self, policy: Callable[[int], float], attempt: int) -> float:
        """
        The retry policy: called once per failed attempt, just after the
        failure, which makes it the place to report that failure.
        """
        delay = round(policy(attempt), 1)
        why, self._why = self._why, None
        if why is not None and not self._stopping:
            self.last_error = why
            self._report.failed(why, delay, self._where)
        return delay

    def _connect_failed(self, reason: Failure) -> None:
        self._why = why_connect_failed(reason, handshake_started=False)

    def _connection_lost(self, reason: Failure) -> None:
        lost_from, self.connected_to = self.connected_to or self._where, None
        if self._stopping:
            log.info("Closed the RabbitMQ connection to {where}", where=lost_from)
        else:
            self.last_error = describe_close(reason)
            self._report.lost(self.last_error, lost_from)

    def _login(self, client: AMQPClient) -> Deferred:
        """
        Authenticate with SASL PLAIN and open the vhost.  A failure here
        counts as a failed connection attempt and is retried with backoff.
        """

        node = self._node

        async def login() -> None:
            await client.authenticate(node.username, node.password, mechanism="PLAIN")

        def succeeded(_: object) -> None:
            client.mark_logged_in()
            self._client = client
            self.connected_to = where(node)
            self.connections += 1
            if self._metrics is not None and self.connections > 1:
                self._metrics.amqp_reconnects.inc()
            self._report.connected(self.connected_to)

        def failed(reason: Failure) -> Failure:
            self._why = why_connect_failed(reason, handshake_started=True)
            if client.transport is not None:
                client.transport.abortConnection()
            return reason

        attempt = Deferred.fromCoroutine(login()).addTimeout(HANDSHAKE_TIMEOUT, self._clock)
        return attempt.addCallbacks(succeeded, failed)

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
