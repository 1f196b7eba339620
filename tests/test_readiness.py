"""
Readiness as C{/readyz} reports it, on real daemons: it flips to not
ready when the broker closes the daemon's connection and back once the
daemon has reconnected on its own; a stage paused on purpose stays ready.
"""

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cuckoodist.config import parse_amqp_url, parse_config
from cuckoodist.readiness import Readiness
from tests import faults, harness
from tests.rabbitnode import SKIP_REASON, private_node
from tests.test_ops_server import get, ops_port, wait_async


class ReadinessTestCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.peers = harness.Peers()
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())

    def daemon(self, amqp: str, stages: list[str]) -> Any:
        doc = harness.config_doc(
            self.peers, self.prefix, self.dump_dir, stages, amqp=amqp, metrics={"listen": "tcp:0:interface=127.0.0.1"}
        )
        daemon, _ = harness.run_daemon(self, parse_config(doc))
        return daemon

    async def readyz_until(self, port: int, code: int, timeout: float, what: str) -> dict:
        """
        Ask C{/readyz} often until it answers C{code}.

        @return: that answer's verdict.
        """
        seen: list = []

        async def answered() -> bool:
            seen.append(await get(port, "/readyz"))
            return seen[-1][0] == code

        await wait_async(answered, timeout, what, interval=0.02)
        return json.loads(seen[-1][2])


class BrokerConnectionTests(ReadinessTestCase):
    """
    On a private node: closing a client's connection takes C{rabbitmqctl},
    which no test may run against the shared broker.
    """

    skip = SKIP_REASON

    async def test_flips_with_the_connection(self) -> None:
        """
        C{/readyz} answers 200 once the daemon consumes, 503 with an
        C{amqp:} reason (the broker's close reason) once RabbitMQ closes
        the daemon's connection, and 200 again after the daemon reconnected
        by itself.
        """
        node = private_node(self)
        daemon = self.daemon(node.amqp_url(), ["check_results", "overseer"])
        port = await ops_port(daemon)
        await self.readyz_until(port, 200, 30, "ready at first")
        connection = daemon.getServiceNamed("amqp")
        client = await connection.whenConnected()
        await faults.close_connection_from(node, client.transport.getHost().port, "readiness test")

        verdict = await self.readyz_until(port, 503, 30, "not ready after the close")
        self.assertFalse(verdict["ready"])
        amqp_reasons = [r for r in verdict["reasons"] if r.startswith("amqp: not connected (last error: ")]
        self.assertEqual(len(amqp_reasons), 1, verdict)
        # The broker's own reason, not the clean TCP close after it.
        self.assertIn("320", amqp_reasons[0])
        self.assertIn("CONNECTION_FORCED", amqp_reasons[0])
        self.assertEqual(verdict["amqp"]["connected"], False)

        verdict = await self.readyz_until(port, 200, 30, "ready again after the reconnect")
        self.assertEqual(verdict["reasons"], [])
        self.assertEqual({s["state"] for s in verdict["stages"].values()}, {"consuming"})
        self.assertEqual(connection.connections, 2)


class PausedTests(ReadinessTestCase):
    async def test_paused_is_ready(self) -> None:
        """
        A feed_cuckoo consumer paused because its Cuckoo has no room is
        ready, and says it is paused and why; resumed, it is consuming.
        """
        daemon = self.daemon(harness.AMQP_URL, ["feed_cuckoo"])
        port = await ops_port(daemon)
        await self.readyz_until(port, 200, 30, "ready at first")
        [stage] = [s for s in daemon if getattr(s, "kind", None) == "feed_cuckoo"]
        await stage.consumer.pause()
        code, _, body = await get(port, "/readyz")
        verdict = json.loads(body)
        self.assertEqual((code, verdict["ready"], verdict["reasons"]), (200, True, []))
        state = verdict["stages"][f"feed_cuckoo:{self.prefix}/feed_cuckoo"]
        self.assertEqual(state["state"], "paused")
        self.assertIn("Cuckoo 'sim' has no room", state["reason"])
        await stage.consumer.resume()
        code, _, body = await get(port, "/readyz")
        self.assertEqual(json.loads(body)["stages"], {f"feed_cuckoo:{self.prefix}/feed_cuckoo": {"state": "consuming"}})

    async def test_full_cuckoo_says_why(self) -> None:
        """
        A feed_cuckoo whose Cuckoo reports too little free disk hands its
        request back and pauses: still ready, paused with the capacity
        gate's own reason (the disk), until the disk frees up and the
        request is uploaded.
        """
        self.peers.cuckoo.free_space = 0
        daemon = self.daemon(harness.AMQP_URL, ["feed_cuckoo"])
        port = await ops_port(daemon)
        await self.readyz_until(port, 200, 30, "ready at first")
        requests, _ = harness.requests(f"{self.prefix}/feed_cuckoo", 1)
        await harness.publish(parse_amqp_url(harness.AMQP_URL), requests)
        name = f"feed_cuckoo:{self.prefix}/feed_cuckoo"

        async def paused() -> bool:
            verdict = json.loads((await get(port, "/readyz"))[2])
            return verdict["stages"][name]["state"] == "paused"

        await wait_async(paused, 30, "the feed paused")
        code, _, body = await get(port, "/readyz")
        state = json.loads(body)["stages"][name]
        self.assertEqual(code, 200)
        self.assertIn("Cuckoo 'sim' has no room (", state["reason"])
        self.assertIn("free", state["reason"])
        self.peers.cuckoo.free_space = 400 * 1024**3
        await harness.wait_until(
            lambda: self.peers.cuckoo.requests.counts.get("tasks/create/file", 0) == 1, 30, "the upload")

    async def test_not_running(self) -> None:
        """
        Before the daemon starts, and once its stages stop, its consumers
        are not running, and it is not ready.
        """
        from cuckoodist.tap import build_daemon

        doc = harness.config_doc(self.peers, self.prefix, self.dump_dir, ["overseer"])
        daemon = build_daemon(parse_config(doc), reactor)
        stages = [s for s in daemon if getattr(s, "kind", None) == "overseer"]
        verdict = Readiness(daemon.getServiceNamed("amqp"), stages).check()
        self.assertFalse(verdict.ready)
        self.assertEqual(
            list(verdict.reasons),
            ["amqp: not connected (stopped)", f"overseer:{self.prefix}/failed: not running (the daemon is starting or stopping)"],
        )
        self.assertTrue(verdict.summary().startswith("Not ready: amqp: not connected (stopped); "))
