"""
C{cuckoodist demo} against the real broker and simulators: the shipped
example configuration runs as is against C{cuckoodist simulate}, failures
are explained, and the demo deletes the queues it created.
"""

import io
import os

import treq
import yaml
from twisted.internet.defer import Deferred
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.web.client import HTTPConnectionPool
from twisted.trial.unittest import SkipTest, TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.commands.demo import DemoOptions, _existing_queues, demo, pipeline_queues
from cuckoodist.config import parse_config
from cuckoodist.simulators.command import SimulateOptions, SimulatorStartError, start_simulators
from cuckoodist.simulators.crits import DEFAULT_API_KEY

from tests import harness
from tests.test_tap import EXAMPLE


def _example() -> dict:
    with open(EXAMPLE, encoding="utf-8") as fp:
        return yaml.safe_load(fp)


def _with_prefix(doc: dict, prefix: str, dump_dir: str) -> dict:
    """
    C{doc} with every queue name under C{prefix} (the shared broker must
    not see our worker/ queues) and the overseer dumping into C{dump_dir}.
    Nothing else is changed.
    """
    for stage in doc["stages"]:
        for key in ("consumer_queue", "producer_queue", "failed_queue"):
            if stage.get(key):
                stage[key] = f"{prefix}/{stage[key]}"
        if stage["type"] == "overseer":
            stage["dump_dir"] = dump_dir
    return doc


class DemoTestCase(TestCase):
    timeout = 120

    def options(self, doc: dict, *args: str) -> DemoOptions:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as fp:
            yaml.safe_dump(doc, fp)
        options = DemoOptions()
        options.parseOptions(["-c", path, *args])
        return options

    async def existing(self, options: DemoOptions) -> set:
        config = options["parsed"]
        connection = AMQPConnectionService(reactor, config.amqp)
        connection.startService()
        try:
            return await _existing_queues(connection, pipeline_queues(config))
        finally:
            await connection.stopService()


class ExampleConfigTests(DemoTestCase):
    def start_default_simulators(self) -> None:
        """
        Start the simulators as C{cuckoodist simulate} does by default
        (analyses take 1 s instead of 5), for this test; skip it where the
        default ports are taken.
        """
        self.patch(os, "environ", {})
        sim_options = SimulateOptions()
        sim_options.parseOptions(["--analysis-seconds", "1"])
        try:
            servers = start_simulators(reactor, sim_options, io.StringIO())
        except (SimulatorStartError, CannotListenError) as e:
            raise SkipTest(f"the default simulator ports are taken: {e}")
        for server in servers:
            self.addCleanup(server.close)

    def test_example_matches_simulate_defaults(self) -> None:
        """
        The example's CRITs URL, user and key and its Cuckoo URL are where
        and what C{cuckoodist simulate} serves by default, and its paths
        need no root.
        """
        options = SimulateOptions()
        self.patch(os, "environ", {})
        options.parseOptions([])
        doc = _example()
        self.assertEqual(doc["crits"]["url"], f"http://{options['bind']}:{options['crits-port']}")
        self.assertEqual(doc["crits"]["username"], options["crits-user"])
        self.assertEqual(doc["crits"]["api_key"], options["crits-api-key"])
        self.assertEqual(doc["crits"]["api_key"], DEFAULT_API_KEY)
        self.assertEqual(doc["cuckoo"]["main"]["url"], f"http://{options['bind']}:{options['cuckoo-port']}")
        self.assertEqual(doc["cuckoo"]["main"]["token"], options["cuckoo-token"])
        [overseer] = [s for s in doc["stages"] if s["type"] == "overseer"]
        self.assertFalse(os.path.isabs(overseer["dump_dir"]))
        self.assertEqual(doc["log_file"], "")

    async def test_example_runs_as_is(self) -> None:
        """
        With the simulators started as C{cuckoodist simulate} starts them
        (default ports and key; analyses take 1 s instead of 5 to keep the
        test short), the example's daemon takes two demo
        samples to completion.  Only the queue names (under a unique
        prefix) and the dump directory (a temporary one) are overridden.
        Afterwards the demo has deleted the queues it created.
        """
        self.start_default_simulators()
        options = self.options(_with_prefix(_example(), harness.prefix(), os.path.abspath(self.mktemp())),
                               "--count", "2", "--run-daemon", "--timeout", "90")
        out = io.StringIO()
        code = await demo(reactor, options, out)
        self.assertEqual(code, 0, out.getvalue())
        lines = out.getvalue().splitlines()
        self.assertIn("CRITs: 2 completed, 0 failed, 0 in progress", lines[-2])
        self.assertEqual(lines[-1], f"deleted the {len(pipeline_queues(options['parsed']))} queue(s) this demo created")
        self.assertEqual(await self.existing(options), set())

    async def test_stays_for_the_dashboard(self) -> None:
        """
        With C{--stay}, the demo prints its daemon's dashboard address, and
        the page answers after the samples are done, until the stay ends;
        then the demo cleans up as without it.
        """
        # Simulators on free ports: the other tests here take the defaults.
        peers = harness.Peers(analysis_seconds=1)
        peers.start()
        self.addCleanup(peers.stop)
        doc = harness.config_doc(
            peers, harness.prefix(), os.path.abspath(self.mktemp()), metrics={"listen": "tcp:0:interface=127.0.0.1"}
        )
        options = self.options(doc, "--count", "1", "--run-daemon", "--timeout", "90", "--stay", "3")
        out = io.StringIO()
        running = Deferred.fromCoroutine(demo(reactor, options, out))
        await harness.wait_until(lambda: "stays up" in out.getvalue(), 90, "the stay")
        [url] = [line.split(" ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("dashboard: ")]
        response = await treq.get(url + "api/state", pool=HTTPConnectionPool(reactor, persistent=False))
        state = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(state["in_flight"], [])
        self.assertEqual(await running, 0)
        self.assertTrue(out.getvalue().splitlines()[-1].startswith("deleted the "))
        self.assertEqual(await self.existing(options), set())


class FailureTests(DemoTestCase):
    async def test_failures_are_explained(self) -> None:
        """
        With a key the simulated CRITs refuses, every sample ends in the
        dump: the demo ends as soon as all are dumped, exits 1, and prints
        each one's reason from its dump record instead of timing out.
        """
        peers = harness.Peers(analysis_seconds=0.5)
        peers.start()
        self.addCleanup(peers.stop)
        dump_dir = os.path.abspath(self.mktemp())
        crits = {"url": peers.crits_server.url, "username": "analyst", "api_key": "wrong-key"}
        doc = harness.config_doc(peers, harness.prefix(), dump_dir, crits=crits)
        options = self.options(doc, "--count", "2", "--run-daemon", "--timeout", "90")
        out = io.StringIO()
        code = await demo(reactor, options, out)
        text = out.getvalue()
        self.assertEqual(code, 1, text)
        self.assertIn("2 dumped before reaching CRITs", text)
        self.assertNotIn("timed out", text)
        reasons = [line for line in text.splitlines() if line.startswith("  ")]
        self.assertEqual(len(reasons), 2, text)
        for line in reasons:
            self.assertIn(": dumped by ", line)
            self.assertIn("401", line)
            self.assertNotIn("wrong-key", line)
        self.assertEqual(await self.existing(options), set())

    async def test_keeps_queues_it_did_not_create(self) -> None:
        """
        Queues that existed before the demo (a daemon declared them) stay;
        with nothing consuming, the demo times out and says what it waits for.
        """
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        doc = harness.config_doc(peers, p, os.path.abspath(self.mktemp()))
        config = parse_config(doc)
        queues = pipeline_queues(config)
        self.addCleanup(harness.delete_queues, config.amqp, queues)
        feed = queues[0]
        connection = AMQPConnectionService(reactor, config.amqp)
        connection.startService()
        try:
            client = await connection.whenConnected()
            channel = await client.open_channel()
            await channel.queue_declare(queue=feed, durable=True)
            await channel.channel_close()
        finally:
            await connection.stopService()
        options = self.options(doc, "--count", "1", "--timeout", "1")
        out = io.StringIO()
        self.assertEqual(await demo(reactor, options, out), 1)
        text = out.getvalue()
        self.assertIn("timed out after 1 s waiting for 1 analysis(es)", text)
        self.assertIn("not yet known to CRITs; no dump record in", text)
        self.assertEqual(await self.existing(options), {feed})
