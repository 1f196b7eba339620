# -*- test-case-name: tests.test_cluster -*-
"""
A RabbitMQ cluster with quorum queues: a daemon given every node's URL
goes on through another node when the node it is connected to is killed
under load, and no sample is lost.

The cluster is private (L{tests.rabbitnode.private_cluster}): three nodes
started for the test and removed after it, never the shared broker.  The
test is skipped only where RabbitMQ is not installed.

RabbitMQ 3.10's at-least-once dead-lettering can hold the delayed messages
that were being dead-lettered when a target queue's leader died until that
node is back (they stay in the delay queue, counted in C{messages} but not
ready; see C{docs/architecture.md}, "Queue types and clusters").  So when
the pipeline stops making progress with the node down, the test restarts
the node, as its supervisor would, and reports that it had to.  Either way
every sample must complete.
"""

import os
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.config import parse_config
from cuckoodist.stages.parse_and_submit import cleanup_queue
from cuckoodist.tap import build_daemon
from tests import faults, harness
from tests.rabbitnode import SKIP_REASON, private_cluster
from tests.test_faults import report

SAMPLES = 200
#: RabbitMQ's dead-letter worker sends a message again when its target queue
#: has not confirmed it after this many milliseconds (checked as often),
#: and holds at most 32 unconfirmed ones per delay queue.  The default, 3
#: minutes, would keep what a kill strands for up to 6 minutes after the
#: node is back (see docs/architecture.md, "Queue types and clusters").
DLX_CONFIRM_TIMEOUT_MS = 5000
#: Samples done before the kill: enough that the pipeline is in full flow.
KILL_AFTER = 40
#: Seconds without a completion, with the node down, that count as stalled.
STALL = 20.0


class ClusterFailoverTests(TestCase):
    """
    A daemon on a three-node cluster with C{queue_type: quorum}.
    """

    skip = SKIP_REASON
    timeout = 420

    def setUp(self) -> None:
        began = time.monotonic()
        self.cluster = private_cluster(
            self, app_env={"dead_letter_worker_publisher_confirm_timeout": DLX_CONFIRM_TIMEOUT_MS}
        )
        report("cluster", f"3 nodes started and joined in {self.cluster.startup_seconds:.1f}s")
        self.peers = harness.Peers(analysis_seconds=0.75, machines=16, report_calls_per_process=10)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.finishes = faults.count_finishes(self.peers.crits)
        self.dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(
            self.peers, harness.prefix(), self.dump_dir, amqp=self.cluster.amqp_urls(), queue_type="quorum"
        )
        # Duplicates of deliveries cut off by the kill, or held by the
        # dead-letter worker, must still find their tasks.
        next(s for s in doc["stages"] if s["type"] == "parse_and_submit")["cleanup_delay"] = 300
        self.config = parse_config(doc)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.began = began

    def lines(self, text: str) -> list[str]:
        return [line for line in map(formatEvent, self.events) if text in line]

    def completed(self, expected: dict[str, str]) -> int:
        analyses = self.peers.crits.state()["analyses"]
        return sum(1 for a in expected if analyses.get(a, {}).get("status") == "completed")

    async def queue_types(self) -> dict[str, str]:
        listing = await deferToThread(
            self.cluster.nodes[1].ctl, "list_queues", "--no-table-headers", "name", "type"
        )
        return dict(line.split("\t")[:2] for line in listing.splitlines() if "\t" in line)

    def whereabouts(self, expected: dict[str, str]) -> str:
        """
        Where the samples not completed got to, for a failure message.
        """
        analyses = self.peers.crits.state()["analyses"]
        tasks = {t["md5"]: t for t in self.peers.cuckoo.state()["tasks"].values()}
        missing = [a for a in expected if analyses.get(a, {}).get("status") != "completed"]
        seen: dict[str, int] = {}
        for a in missing:
            task = tasks.get(expected[a])
            where = "never uploaded" if task is None else f"task {task['status']}{' deleted' if task['deleted'] else ''}"
            where += f", CRITs {analyses.get(a, {}).get('status')}"
            seen[where] = seen.get(where, 0) + 1
        return f"{len(expected) - len(missing)} done; the others: {seen}"

    async def queue_state(self) -> str:
        """
        What a surviving node says of every queue, for a failure message.
        """
        node = next(n for n in self.cluster.nodes[::-1] if n.running)
        return await deferToThread(
            node.ctl, "list_queues", "name", "type", "leader", "messages", "messages_ready", "messages_unacknowledged", "consumers"
        )

    async def test_node_killed_under_load(self) -> None:
        """
        While 200 samples flow, the node the daemon is connected to (which
        leads every queue the daemon declared) is killed with SIGKILL.  The
        daemon reconnects to another node and goes on there; if the
        pipeline stalls with the node down (RabbitMQ 3.10's dead-letter
        worker, see the module's docstring), the node is restarted.  All
        200 samples are completed in CRITs, none lost or dumped.
        """
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        connection = faults.connection_of(daemon)
        queue_consumers = list(faults.consumers(daemon))
        await harness.wait_until(lambda: all(c.consuming for c in queue_consumers), 60, "all consumers")

        # Every queue the daemon declared is a quorum queue.
        work = faults.work_queues(self.config)
        self.assertIn(cleanup_queue(self.config.stages[2].consumer_queue), work)
        types = await self.queue_types()
        self.assertEqual({q: types.get(q) for q in work}, {q: "quorum" for q in work})

        expected = await faults.publish_samples(self.config.amqp_nodes, self.config.stages[0].consumer_queue, SAMPLES)
        flowing = time.monotonic()
        await harness.wait_until(lambda: self.completed(expected) >= KILL_AFTER, 120, f"{KILL_AFTER} samples done")

        victim_where = connection.connected_to
        victim = self.cluster.node_at(int(victim_where.split(":")[1].split("/")[0]))
        leaders = await deferToThread(self.cluster.queue_leaders)
        logins = connection.connections
        done_at_kill = self.completed(expected)
        await deferToThread(victim.kill)
        killed = time.monotonic()
        report("cluster", f"killed {victim.node_name} ({victim_where}) with {done_at_kill}/{SAMPLES} done; "
                          f"it led {sum(1 for q in work if leaders.get(q) == victim.node_name)} of {len(work)} work queues")

        await harness.wait_until(lambda: connection.connections > logins, 60, "the daemon to reconnect")
        reconnected = time.monotonic() - killed
        self.assertNotEqual(connection.connected_to, victim_where)
        self.assertEqual(len(self.lines(f"Reconnected to RabbitMQ at {connection.connected_to}")), 1)
        done_without_victim = await self.progress(expected, STALL)
        restarted = ""
        if done_without_victim < SAMPLES:
            report("cluster", f"stalled with the node down: {self.whereabouts(expected)}; restarting it")
            await deferToThread(victim.start)
            restarted = f"; {done_without_victim} done before the node had to be restarted"
        try:
            await harness.wait_until(
                lambda: self.completed(expected) == SAMPLES, 180, f"all {SAMPLES} samples to be completed in CRITs"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; {self.whereabouts(expected)}; queues: {await self.queue_state()}") from None
        self.assertLess(done_at_kill, SAMPLES, "the kill came too late to interrupt anything")

        figures = faults.tally(expected, self.peers, self.finishes, self.dump_dir)
        report(
            "cluster",
            f"reconnected to {connection.connected_to} {reconnected:.1f}s after the kill{restarted}; all done "
            f"{time.monotonic() - flowing:.1f}s after publishing; {figures.describe()}; "
            f"test ran {time.monotonic() - self.began:.1f}s",
        )
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered, SAMPLES)
        self.assertEqual(figures.dumped, 0)
        self.assertEqual(self.lines("guest:guest"), [], "a log line holds a password")
        # The polls went through quorum delay queues.
        types = await self.queue_types()
        self.assertTrue([q for q, t in types.items() if q.startswith("cuckoodist.delay.quorum.") and t == "quorum"])

    async def progress(self, expected: dict[str, str], stall: float) -> int:
        """
        Wait until every sample is completed, or none was for C{stall}
        seconds.

        @return: how many are completed then.
        """
        last, since = self.completed(expected), time.monotonic()
        while last < len(expected) and time.monotonic() - since < stall:
            await deferLater(reactor, 0.25, lambda: None)
            now = self.completed(expected)
            if now != last:
                last, since = now, time.monotonic()
        return last
