"""
The operations listener of a real daemon, over real HTTP: C{/healthz},
C{/readyz} against the real broker (ready) and against a port nothing
listens on (not ready, with the reason), C{/metrics}, and a listen that
fails without taking the pipeline down.
"""

import gzip
import json
import os
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from cuckoodist.config import parse_config
from cuckoodist.tap import build_daemon
from tests import harness


async def get(port: int, path: str, **headers: str) -> tuple[int, dict, bytes]:
    """
    GET C{path} from the listener on C{port}, undecoded.

    @return: the status code, the headers (lower-case name -> last value)
        and the body.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(
        f"http://127.0.0.1:{port}{path}", pool=pool, headers={k.replace("_", "-"): [v] for k, v in headers.items()}
    )
    body = await treq.content(response)
    found = {name.decode().lower(): values[-1].decode() for name, values in response.headers.getAllRawHeaders()}
    return response.code, found, body


async def ops_port(daemon: Any) -> int:
    return (await daemon.getServiceNamed("ops").listening).getHost().port


def closed_port() -> int:
    """
    A loopback port nothing listens on (one that was free a moment ago).
    """
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    port.stopListening()
    return number


class OpsListenerTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.peers = harness.Peers()
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())

    def daemon(self, amqp: str = harness.AMQP_URL, listen: str = "tcp:0:interface=127.0.0.1") -> tuple[Any, list]:
        doc = harness.config_doc(
            self.peers, self.prefix, self.dump_dir, ["check_results", "overseer"], amqp=amqp, metrics={"listen": listen}
        )
        return harness.run_daemon(self, parse_config(doc))

    async def test_ready_when_connected_and_consuming(self) -> None:
        """
        Once connected and consuming, C{/readyz} answers 200 with every
        consumer listed as consuming and the node it is connected to;
        C{/healthz} answers 200 "ok".
        """
        daemon, _ = self.daemon()
        port = await ops_port(daemon)
        answers: list = []

        async def ready() -> bool:
            answers.append(await get(port, "/readyz"))
            return answers[-1][0] == 200

        await wait_async(ready, 15, "/readyz to answer 200")
        code, headers, body = answers[-1]
        verdict = json.loads(body)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(verdict["ready"], True)
        self.assertEqual(verdict["reasons"], [])
        self.assertEqual(verdict["amqp"], {"connected": True, "node": "127.0.0.1:5672/"})
        self.assertEqual(
            verdict["stages"],
            {
                f"check_results:{self.prefix}/check_results": {"state": "consuming"},
                f"overseer:{self.prefix}/failed": {"state": "consuming"},
            },
        )
        code, _, body = await get(port, "/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["status"], "ok")

    async def test_not_ready_without_broker(self) -> None:
        """
        With nothing listening where the broker should be, C{/readyz}
        answers 503 naming the connection's last error and each consumer
        not consuming; C{/healthz} still answers 200, for the process is
        alive and will connect once the broker is there.
        """
        amqp = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
        doc = harness.config_doc(
            self.peers, self.prefix, self.dump_dir, ["check_results", "overseer"], amqp=amqp,
            metrics={"listen": "tcp:0:interface=127.0.0.1"},
        )
        # Not run_daemon: there is no broker to delete queues from.
        daemon = build_daemon(parse_config(doc), reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        port = await ops_port(daemon)
        await harness.wait_until(lambda: daemon.getServiceNamed("amqp").last_error is not None, 15, "a failed attempt")
        code, _, body = await get(port, "/readyz")
        self.assertEqual(code, 503)
        verdict = json.loads(body)
        self.assertEqual(verdict["ready"], False)
        self.assertEqual(
            verdict["reasons"],
            [
                "amqp: not connected (last error: connection refused)",
                f"check_results:{self.prefix}/check_results: not consuming",
                f"overseer:{self.prefix}/failed: not consuming",
            ],
        )
        self.assertEqual(verdict["amqp"], {"connected": False, "reason": "last error: connection refused"})
        self.assertEqual(verdict["stages"][f"overseer:{self.prefix}/failed"]["state"], "not consuming")
        code, _, _ = await get(port, "/healthz")
        self.assertEqual(code, 200)

    async def test_metrics(self) -> None:
        """
        C{/metrics} serves the daemon's own registry in Prometheus' text
        format, OpenMetrics to a scraper that asks for it, gzipped to one
        that accepts it.
        """
        daemon, _ = self.daemon()
        port = await ops_port(daemon)
        code, headers, body = await get(port, "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"), headers)
        self.assertIn(b"# TYPE cuckoodist_messages_received_total counter", body)
        self.assertIn(b"cuckoodist_amqp_connected", body)
        # Not prometheus_client's global registry.
        self.assertNotIn(b"python_gc_objects_collected_total", body)

        code, headers, body = await get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
        self.assertTrue(headers["content-type"].startswith("application/openmetrics-text"), headers)
        self.assertTrue(body.endswith(b"# EOF\n"))

        # treq would ask for gzip itself and decode it out of sight.
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = await agent.request(
            b"GET", f"http://127.0.0.1:{port}/metrics".encode(), Headers({b"accept-encoding": [b"gzip"]})
        )
        body = await readBody(response)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIn(b"cuckoodist_messages_received_total", gzip.decompress(body))

    async def test_unknown_path_and_method(self) -> None:
        """
        Other paths are 404, and the pages are read-only.
        """
        daemon, _ = self.daemon()
        port = await ops_port(daemon)
        code, _, _ = await get(port, "/nope")
        self.assertEqual(code, 404)
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(f"http://127.0.0.1:{port}/readyz", b"", pool=pool)
        await treq.content(response)
        self.assertEqual(response.code, 405)

    async def test_listen_failure_is_logged_not_fatal(self) -> None:
        """
        When the port is taken, the daemon logs one error line naming
        C{metrics.listen} and the endpoint, C{listening} fails, and the
        pipeline runs regardless: its consumers come up.
        """
        taken = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        endpoint = f"tcp:{taken.getHost().port}:interface=127.0.0.1"
        daemon, events = self.daemon(listen=endpoint)
        with self.assertRaises(Exception):
            await daemon.getServiceNamed("ops").listening
        errors = [e for e in events if e.get("log_level") == LogLevel.error and "metrics.listen" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1, errors)
        self.assertEqual(errors[0]["endpoint"], endpoint)
        self.assertNotIn("log_failure", errors[0])
        consumers = [stage.consumer for stage in daemon if hasattr(stage, "consumer")]
        self.assertEqual(len(consumers), 2)
        await harness.wait_until(lambda: all(c.consuming for c in consumers), 15, "the consumers")

    async def test_unix_socket(self) -> None:
        """
        Any server endpoint works: on a unix socket (the only way to keep
        the pages to local users) C{/healthz} answers there.
        """
        import shutil
        import tempfile

        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web.iweb import IAgentEndpointFactory
        from zope.interface import implementer

        # Short: a socket's path must fit in 108 bytes, and trial's may not.
        directory = tempfile.mkdtemp(prefix="cuckoodist-ops-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "ops.sock")
        daemon, _ = self.daemon(listen=f"unix:{path}:lockfile=1")
        address = (await daemon.getServiceNamed("ops").listening).getHost()
        self.assertEqual(address.name, path.encode())

        @implementer(IAgentEndpointFactory)
        class ToSocket:
            def endpointForURI(self, uri: Any) -> Any:
                return UNIXClientEndpoint(reactor, path)

        agent = Agent.usingEndpointFactory(reactor, ToSocket(), pool=HTTPConnectionPool(reactor, persistent=False))
        response = await agent.request(b"GET", b"http://localhost/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await readBody(response))["status"], "ok")

    async def test_disabled(self) -> None:
        """
        C{metrics.listen: ""} builds no listener at all.
        """
        daemon, _ = self.daemon(listen="")
        self.assertNotIn("ops", [service.name for service in daemon])

    async def test_stops_listening(self) -> None:
        """
        Once the listener has stopped, nothing listens on its port any more.
        """
        daemon, _ = self.daemon()
        port = await ops_port(daemon)
        await daemon.getServiceNamed("ops").stopService()
        with self.assertRaises(Exception):
            await get(port, "/healthz")


async def wait_async(check: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    """
    L{harness.wait_until} for a check that must itself wait (an HTTP call).
    """
    from twisted.internet.task import deferLater

    waited = 0.0
    while not await check():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)
        waited += interval
