"""
Fault injection: nothing is lost when the daemon is killed, the broker
drops the connection, analyses outlast C{consumer_timeout}, the peers
fail, or the daemon is told to stop mid-work.

These run against the real RabbitMQ and the simulators on real sockets,
and print what became of every sample: sent, delivered, duplicated,
dumped and lost.  Tests that only need a broker use the shared one
(C{CUCKOODIST_TEST_AMQP}), which may be in a container or on another host:
they read it over AMQP only.  Tests that change broker settings or close
connections get a private node of their own (L{tests.rabbitnode}), and
are skipped where RabbitMQ is not installed locally.
"""

import os
import random
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.protocol import describe_close
from cuckoodist.amqp.topology import declare_queue
from cuckoodist.config import parse_config
from cuckoodist.tap import build_daemon
from tests import faults, harness
from tests.rabbitnode import SKIP_REASON, private_node

log = Logger()


def report(name: str, text: str) -> None:
    """
    Put a measured figure in the test log and on the console.
    """
    log.info("{name}: {text}", name=name, text=text)
    print(f"\n[{name}] {text}")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class FaultTestCase(TestCase):
    """
    Simulators, a unique queue prefix and a dump directory per test; the
    test's queues are deleted afterwards.

    @cvar private_broker: C{None} to use the shared broker; otherwise the
        C{rabbitmq.conf} settings of a private node started for each test
        (as C{self.node}) and removed after it.  Trial calls no
        C{setUpClass}, so a node cannot be shared by a class's tests; each
        takes about 4 s to start.
    """

    timeout = 240
    cuckoo_options: dict = {}
    private_broker: dict | None = None

    def setUp(self) -> None:
        amqp = harness.AMQP_URL
        if self.private_broker is not None:
            self.node = private_node(self, settings=self.private_broker)
            amqp = self.node.amqp_url()
            report(type(self).__name__, f"private node started in {self.node.startup_seconds:.2f}s")
        options = {"analysis_seconds": 0.75, "machines": 16, "report_calls_per_process": 10, **self.cuckoo_options}
        self.peers = harness.Peers(**options)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.finishes = faults.count_finishes(self.peers.crits)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        self.doc = harness.config_doc(self.peers, self.prefix, self.dump_dir, amqp=amqp)
        # Duplicates of killed deliveries must still find their tasks.
        next(s for s in self.doc["stages"] if s["type"] == "parse_and_submit")["cleanup_delay"] = 30
        self.config = parse_config(self.doc)
        queues = [s.consumer_queue for s in self.config.stages]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))

    def use(self, **overrides) -> None:
        """
        Change the configuration document (before any daemon starts).
        """
        self.doc.update(overrides)
        self.config = parse_config(self.doc)

    def stage_doc(self, kind: str) -> dict:
        return next(s for s in self.doc["stages"] if s["type"] == kind)

    def spawn(self, tag: str) -> faults.DaemonProcess:
        """
        Start a twistd daemon running every stage; it is stopped at clean-up.
        """
        path = faults.write_config(os.path.abspath(self.mktemp() + f"-{tag}.yaml"), self.doc)
        daemon = faults.DaemonProcess(path, os.path.abspath(self.mktemp() + f"-{tag}.log"))
        self.addCleanup(daemon.stop)
        return daemon

    def in_process(self):
        """
        Start the daemon in this process; it is stopped at clean-up.
        """
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon

    async def publish(self, count: int) -> dict[str, str]:
        return await faults.publish_samples(self.config.amqp, self.config.stages[0].consumer_queue, count)

    def completed(self, expected: dict[str, str]) -> int:
        analyses = self.peers.crits.state()["analyses"]
        return sum(1 for a in expected if analyses.get(a, {}).get("status") == "completed")

    async def all_completed(self, expected: dict[str, str], timeout: float, daemons=()) -> None:
        def done() -> bool:
            for daemon in daemons:
                if daemon.exited:
                    raise AssertionError(f"a daemon exited early ({daemon.exit_code}); see {daemon.log_path}")
            return self.completed(expected) == len(expected)

        await harness.wait_until(done, timeout, f"all {len(expected)} samples to be completed in CRITs")

    async def final_tally(self, name: str, expected: dict[str, str]) -> faults.Tally:
        await faults.quiet(self.peers, self.finishes, self.config)
        figures = faults.tally(expected, self.peers, self.finishes, self.dump_dir)
        report(name, figures.describe())
        return figures


class KillTests(FaultTestCase):
    """
    SIGKILL of the daemon loses nothing.
    """

    async def test_kill_9_three_times(self) -> None:
        """
        A twistd daemon running all four stages, SIGKILLed at three random
        moments while 200 samples flow and restarted each time, still gets
        every sample completed in CRITs; duplicates are counted, not lost.
        """
        seed = int.from_bytes(os.urandom(4), "big")
        rng = random.Random(seed)
        expected = await self.publish(200)
        # Kill at random moments, spread over the run: once a random number
        # of samples in each third is done, plus up to half a second.
        thresholds = [rng.randint(10, 50), rng.randint(75, 115), rng.randint(140, 175)]
        killed_after = []
        for run, threshold in enumerate(thresholds):
            daemon = self.spawn(f"run{run}")
            await harness.wait_until(
                lambda: self.completed(expected) >= threshold or daemon.exited, 90, f"{threshold} samples done", interval=0.05
            )
            await sleep(rng.uniform(0, 0.5))
            self.assertFalse(daemon.exited, f"daemon run {run} exited by itself; see {daemon.log_path}")
            killed_after.append(self.completed(expected))
            daemon.signal("KILL")
            await harness.wait_until(lambda: daemon.exited, 10, "the killed daemon to go")
        self.assertLess(killed_after[-1], len(expected), "the kills came too late to interrupt anything")
        last = self.spawn("final")
        await self.all_completed(expected, 150, [last])
        figures = await self.final_tally("kill -9 x3", expected)
        gone = [r for r in faults.dump_records(self.dump_dir) if "no longer exists" in r.reason]
        report("kill -9 x3", f"seed={seed}; killed with {killed_after} of 200 completed; {len(gone)} duplicate(s) found their task deleted")
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered, 200)
        self.assertEqual(figures.dumped, 0)
        # cleanup_delay outlasts the duplicates a crash makes.
        self.assertEqual(gone, [])


class ConnectionLossTests(FaultTestCase):
    """
    The broker closing the daemon's connection loses nothing, and the
    daemon is consuming again within seconds.  The connection is closed
    by C{rabbitmqctl}, so on a private node.
    """

    skip = SKIP_REASON
    private_broker: dict | None = {}

    async def test_broker_closes_connection(self) -> None:
        """
        When RabbitMQ closes the daemon's connection mid-run, every sample
        still completes and every consumer is consuming again within 10 s.
        """
        daemon = self.in_process()
        expected = await self.publish(60)
        await harness.wait_until(lambda: self.completed(expected) >= 5, 60, "the first samples")
        queue_consumers = list(faults.consumers(daemon))
        # One per stage, and parse_and_submit's clean-up queue.
        self.assertEqual(len(queue_consumers), len(faults.work_queues(self.config)))
        await harness.wait_until(lambda: all(c.consuming for c in queue_consumers), 10, "all consumers")
        client = await faults.connection_of(daemon).whenConnected()
        local_port = client.transport.getHost().port

        marks = faults.watch_consumers(self, queue_consumers)
        done_before = self.completed(expected)
        issued = time.monotonic()
        await faults.close_connection_from(self.node, local_port, "test")
        await harness.wait_until(lambda: "up" in marks, 30, "consumers to resume", interval=0.05)
        recovery = marks["up"] - marks["down"]
        report(
            "connection loss",
            f"closed with {done_before}/{len(expected)} done; consumers down "
            f"{marks['down'] - issued:.2f}s after the command; consuming again after {recovery:.2f}s",
        )
        self.assertLessEqual(recovery, 10.0)
        await self.all_completed(expected, 120)
        figures = await self.final_tally("connection loss", expected)
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered, len(expected))


class ConsumerTimeoutTests(FaultTestCase):
    """
    Analyses longer than RabbitMQ's C{consumer_timeout} cause no channel
    error: no delivery is held while Cuckoo works.  The timeout is set on
    a private node; the shared broker's settings are never changed.
    """

    skip = SKIP_REASON
    cuckoo_options = {"analysis_seconds": 20.0}
    private_broker: dict | None = {"consumer_timeout": 5000}

    async def _timeout_enforced(self) -> str:
        """
        A consumer that holds a delivery unacked is closed by the broker:
        proof that the short timeout is really in force.

        @return: the broker's reason.
        """
        connection = AMQPConnectionService(reactor, self.config.amqp)
        connection.startService()
        queue = f"{self.prefix}/holder"
        try:
            client = await connection.whenConnected(failAfterFailures=3)
            setup = await client.open_channel()
            await declare_queue(setup, queue)
            await setup.enable_confirms()
            await setup.publish(queue, b"held")
            holder = await client.open_channel()
            holder.track_consumer("holder")
            await client.queue("holder")
            await holder.basic_consume(queue=queue, consumer_tag="holder")
            await harness.wait_until(lambda: holder.closed, 30, "the broker to close a channel past consumer_timeout")
            await setup.queue_delete(queue=queue)
            return describe_close(holder.reason)
        finally:
            await connection.stopService()

    async def test_long_analyses(self) -> None:
        """
        With C{consumer_timeout} at 5 s, checked every second, a handful of
        20 s analyses complete and no channel is closed by the broker.
        """
        # rabbitmq.conf has no key for the check interval (60 s by default).
        await faults.set_rabbit_env(self.node, "channel_tick_interval", "1000")
        why = await self._timeout_enforced()
        report("consumer_timeout", f"a held delivery is closed by the broker: {why}")
        self.assertIn("PRECONDITION_FAILED", why)

        events: list[str] = []

        def observe(event: dict) -> None:
            events.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        started = time.monotonic()
        self.in_process()
        expected = await self.publish(5)
        await self.all_completed(expected, 90)
        took = time.monotonic() - started
        figures = await self.final_tally("consumer_timeout", expected)
        report("consumer_timeout", f"5 x 20 s analyses done in {took:.1f}s; {len(events)} log events checked")
        errors = [e for e in events if "closed by the broker" in e or "PRECONDITION_FAILED" in e]
        self.assertEqual(errors, [])
        self.assertEqual(figures.lost, ())


class FlakyPeerTests(FaultTestCase):
    """
    Peers that fail often, and a Cuckoo that goes away for a while: every
    sample ends completed or dumped with its reason.
    """

    cuckoo_options = {"fail_rate": 0.3, "seed": 7}

    async def test_flaky_peers_and_cuckoo_outage(self) -> None:
        """
        With 30% of Cuckoo and CRITs requests failing and Cuckoo down for
        20 s, every sample is either completed in CRITs or dumped with a
        reason; none vanishes.
        """
        self.peers.crits.faults.fail_rate = 0.3
        overseer = self.stage_doc("overseer")
        overseer.update(max_retries=3, retry_delay=0.5)
        self.use()
        self.in_process()
        expected = await self.publish(40)
        await harness.wait_until(lambda: self.completed(expected) >= 3, 60, "the first samples")
        await self.peers.cuckoo_server.stop_listening()
        down_with = self.completed(expected)
        await sleep(20)
        self.peers.cuckoo_server.start_listening()

        def ended() -> bool:
            figures = faults.tally(expected, self.peers, self.finishes, self.dump_dir)
            return not figures.lost

        await harness.wait_until(ended, 150, "every sample to be completed or dumped", interval=0.5)
        figures = await self.final_tally("flaky peers", expected)
        report("flaky peers", f"Cuckoo went down with {down_with} done; requests seen: "
               f"cuckoo={sum(self.peers.cuckoo.state()['requests'].values())} "
               f"crits={sum(self.peers.crits.state()['requests'].values())}")
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered + figures.dumped, len(expected))
        records = {r.analysis_id: r for r in faults.dump_records(self.dump_dir)}
        analyses = self.peers.crits.state()["analyses"]
        for analysis_id in expected:
            if analyses.get(analysis_id, {}).get("status") != "completed":
                self.assertTrue(records[analysis_id].reason, f"{analysis_id} dumped without a reason")


class DrainTests(FaultTestCase):
    """
    SIGTERM drains in-flight work and acks only what was done.
    """

    async def test_sigterm_drains(self) -> None:
        """
        A twistd daemon told to stop mid-work exits 0 within the grace
        period; a new daemon then finishes every sample.
        """
        grace = 5
        self.use(grace_period=grace)
        expected = await self.publish(80)
        first = self.spawn("first")
        await harness.wait_until(lambda: self.completed(expected) >= 10, 60, "the first samples")
        done = self.completed(expected)
        self.assertLess(done, len(expected), "the stop came too late to interrupt anything")
        asked = time.monotonic()
        first.signal("TERM")
        await harness.wait_until(lambda: first.exited, grace + 10, "the daemon to exit", interval=0.05)
        took = time.monotonic() - asked
        with open(first.log_path, encoding="utf-8") as fp:
            first_log = fp.read()
        report(
            "drain",
            f"SIGTERM with {done}/{len(expected)} done; exited (code {first.exit_code}, signal "
            f"{first.exit_signal}) after {took:.2f}s (grace {grace}s); "
            f"{first_log.count('Finished work on')} finished after their channel closed, "
            f"{first_log.count('Abandoned unfinished work')} abandoned",
        )
        # twistd re-raises the SIGTERM that stopped it once shut down, so a
        # clean stop ends "killed by SIGTERM" (systemd counts that a success).
        self.assertTrue(first.clean_exit(), f"unclean exit; see {first.log_path}")
        self.assertNotIn("after its channel closed", first_log)
        self.assertLessEqual(took, grace + 3)
        second = self.spawn("second")
        await self.all_completed(expected, 120, [second])
        figures = await self.final_tally("drain", expected)
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered, len(expected))
