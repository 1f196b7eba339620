# -*- test-case-name: tests.test_ops_server -*-
"""
The operations listener: C{/metrics}, C{/healthz} and C{/readyz} on the
endpoint C{metrics.listen} names.

  - C{/metrics} is the daemon's own registry (L{cuckoodist.metrics}) in
    Prometheus' text format, or OpenMetrics when the scraper asks for it.
  - C{/healthz} answers 200 whenever it answers at all: the reactor that
    serves it is the one that runs the pipeline, so an answer proves the
    process is not wedged.  It checks nothing else on purpose; a broker
    outage is not a reason to restart the daemon (it reconnects).
  - C{/readyz} answers 200 when the daemon is connected and consuming
    (L{cuckoodist.readiness}), 503 otherwise, with the reasons, in JSON.

The listener matters less than the pipeline: when it cannot listen (the
port is taken, typically by another daemon on the same host left at the
default port) it logs one error line naming the key and the endpoint, and
the daemon runs on without it.

The root is a plain L{Resource}; the dashboard adds its pages to it with
C{putChild}.
"""

import gzip
import json
from typing import Any

from prometheus_client.exposition import choose_encoder, gzip_accepted
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from cuckoodist.metrics import Metrics
from cuckoodist.readiness import Readiness

__all__ = ["OpsService", "ops_root", "MetricsPage", "HealthPage", "ReadyPage"]

log = Logger()


def _no_store(request: Request, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    # Each answer describes one moment; a cache in between must not replay it.
    request.setHeader(b"Cache-Control", b"no-store")


class MetricsPage(Resource):
    """
    The registry of one daemon, rendered in the reactor's thread.

    Not C{prometheus_client.twisted.MetricsResource}: that one renders in
    the reactor's thread pool, which the stages fill with report parsing,
    so a scrape would wait behind minutes of parsing exactly when the
    figures matter; and importing it imports the global reactor, which
    would install the default reactor before twistd installs the chosen
    one.  Rendering a registry of a few dozen families takes about a
    millisecond.  The encoding is prometheus_client's own, chosen from the
    scraper's C{Accept} header, and gzipped when it accepts that.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._registry = metrics.registry

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self._registry)
        if gzip_accepted((request.getHeader(b"accept-encoding") or b"").decode("latin-1")):
            body = gzip.compress(body)
            request.setHeader(b"Content-Encoding", b"gzip")
        _no_store(request, content_type.encode("latin-1"))
        return body


class HealthPage(Resource):
    """
    C{/healthz}: alive.  The body carries the reactor's clock, which only
    a running reactor can read out to a client.
    """

    isLeaf = True

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def render_GET(self, request: Request) -> bytes:
        _no_store(request, b"application/json")
        return json.dumps({"status": "ok", "time": self._reactor.seconds()}).encode() + b"\n"


class ReadyPage(Resource):
    """
    C{/readyz}: 200 when ready, 503 when not, and the verdict in JSON
    (L{cuckoodist.readiness.Verdict.as_json}) either way.
    """

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        verdict = self._readiness.check()
        request.setResponseCode(200 if verdict.ready else 503)
        _no_store(request, b"application/json")
        return json.dumps(verdict.as_json(), indent=1).encode() + b"\n"


def ops_root(metrics: Metrics, readiness: Readiness, reactor: Any) -> Resource:
    """
    The operations listener's pages under one root.

    @param metrics: the daemon's metrics, served at C{/metrics}.
    @param readiness: asked at each C{/readyz}.
    @param reactor: the reactor serving them, whose clock C{/healthz} reads.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsPage(metrics))
    root.putChild(b"healthz", HealthPage(reactor))
    root.putChild(b"readyz", ReadyPage(readiness))
    return root


class _QuietSite(Site):
    """
    A L{Site} that writes no access log: a scraper and a health checker
    each asking every few seconds would fill the daemon's log with lines
    that say nothing.
    """

    noisy = False

    def log(self, request: Request) -> None:
        pass

    def logPrefix(self) -> str:
        """
        What the port's "starting on" and "closed" lines call it.
        """
        return "cuckoodist ops listener"


class OpsService(Service):
    """
    Serves C{root} on the endpoint C{listen} while the daemon runs.

    @param reactor: the reactor to listen with.
    @param listen: a Twisted server endpoint description (C{metrics.listen}).
    @param root: the resource tree, from L{ops_root}.
    @ivar root: as given: where more pages (the dashboard) are added.
    """

    def __init__(self, reactor: Any, listen: str, root: Resource) -> None:
        self.root = root
        self._reactor = reactor
        self._listen = listen
        self._site = _QuietSite(root)
        self._port: IListeningPort | None = None
        self._failure: Failure | None = None
        self._waiting: list[Deferred] = []
        self._starting: Deferred | None = None

    @property
    def listening(self) -> Deferred:
        """
        A new Deferred each time, firing with the L{IListeningPort} once
        the listener listens (read a C{tcp:0} port from its C{getHost()}),
        or failing with why it could not.
        """
        if self._port is not None:
            return succeed(self._port)
        if self._failure is not None:
            return fail(self._failure)
        waiter: Deferred = Deferred()
        self._waiting.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        self._failure = None
        try:
            starting = serverFromString(self._reactor, self._listen).listen(self._site)
        except Exception:
            starting = fail()
        self._starting = starting
        starting.addCallbacks(self._listened, self._refused)

    def _listened(self, port: IListeningPort) -> None:
        self._starting = None
        self._port = port
        address = port.getHost()
        log.info("Serving /metrics, /healthz and /readyz on {address}", address=_describe(address))
        self._settle(lambda waiter: waiter.callback(port))

    def _refused(self, reason: Failure) -> None:
        self._starting = None
        self._failure = reason
        if reason.check(CancelledError):
            # Stopped before it listened: nothing went wrong.
            self._settle(lambda waiter: waiter.errback(reason))
            return
        # One line, no traceback: the operator needs the key and the cause.
        log.error(
            "Cannot serve /metrics, /healthz and /readyz: metrics.listen {endpoint!r} failed: {why}; "
            "the pipeline runs on without them (give each daemon on a host its own port, or \"\" to turn them off)",
            endpoint=self._listen,
            why=reason.getErrorMessage(),
        )
        self._settle(lambda waiter: waiter.errback(reason))

    def _settle(self, fire: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            fire(waiter)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._starting is not None:
            self._starting.cancel()
        port, self._port = self._port, None
        if port is None:
            return None
        return port.stopListening()


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or address)
