"""
feed_cuckoo stages on simulated Cuckoos, for the capacity and upload tests.

Each stage and each simulated Cuckoo keeps time on one shared
L{twisted.internet.task.Clock}, so a test decides when status probes
happen and how Cuckoo's tasks age; RabbitMQ (the shared broker, under a
queue prefix of the test's own) and HTTP run for real on the reactor.

A node's only machine is taken by a task that never ends, so every upload
stays C{pending} and fills the node towards its stage's C{max_pending}
until the test frees room with L{Node.free}.
"""

import hashlib
import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.topology import declare_queue
from cuckoodist.http import HTTPClient
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer
from cuckoodist.stages.base import StageContext
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from tests import harness

__all__ = ["Node", "Fleet"]


class Node:
    """
    One simulated Cuckoo on a loopback port, its single machine busy.
    """

    def __init__(self, clock: Clock, name: str, max_pending: int) -> None:
        self.name = name
        self.max_pending = max_pending
        self.sim = CuckooSimulator(clock, machines=1, analysis_seconds=10**9)
        self.sim.create_task("busy.exe", b"MZ busy " + os.urandom(8), {})
        self.server = SimulatorServer(reactor, self.sim.resource)
        self.server.start_listening()

    def uploads(self) -> int:
        """
        C{/tasks/create/file} requests received, failed ones included.
        """
        return self.sim.requests.counts.get("tasks/create/file", 0)

    def probes(self) -> int:
        return self.sim.requests.counts.get("cuckoo/status", 0)

    def tasks(self) -> list[dict]:
        """
        Tasks created by uploads (not the one keeping the machine busy).
        """
        return [t for t in self.sim.state()["tasks"].values() if t["filename"] != "busy.exe"]

    def pending(self) -> list[int]:
        return [int(i) for i, t in self.sim.state()["tasks"].items() if t["status"] == "pending" and not t["deleted"]]

    def free(self, count: int | None = None) -> None:
        """
        Delete C{count} pending tasks (all by default), as an analyst
        clearing a backlog would.
        """
        for task_id in self.pending()[:count]:
            self.sim.delete_task(task_id)


class Fleet:
    """
    feed_cuckoo stages, one per L{Node}, consuming one feed queue.
    """

    def __init__(
        self,
        test: Any,
        capacities: list[int],
        status_interval: float = 10.0,
        prefetch: int = 4,
        amqp: str = harness.AMQP_URL,
        clock: Any = None,
    ) -> None:
        """
        @param amqp: the broker; the shared one unless a test brings its own.
        @param clock: the time of the stages and simulators; a fresh
            L{Clock} unless a test needs real time (a broker's timeouts).
        """
        self.clock = Clock() if clock is None else clock
        self.prefix = harness.prefix()
        self.feed = f"{self.prefix}/feed_cuckoo"
        self.check = f"{self.prefix}/check_results"
        self.failed = f"{self.prefix}/failed"
        self.nodes = [Node(self.clock, f"sim{i}", cap) for i, cap in enumerate(capacities)]
        self.doc = {
            "amqp": amqp,
            "grace_period": 5,
            "http_timeout": 20,
            "crits": {"url": "http://crits.invalid", "username": "analyst", "api_key": harness.DEFAULT_API_KEY},
            "cuckoo": {node.name: {"url": node.server.url} for node in self.nodes},
            "stages": [
                {
                    "type": "feed_cuckoo", "cuckoo": node.name, "consumer_queue": self.feed,
                    "producer_queue": self.check, "failed_queue": self.failed,
                    "prefetch_count": prefetch, "max_pending": node.max_pending,
                    "status_interval": status_interval,
                }
                for node in self.nodes
            ],
        }
        self.config = harness.parse_config(self.doc)
        self.connection = AMQPConnectionService(reactor, self.config.amqp)
        self.http = HTTPClient(reactor, self.config.http_timeout)
        context = StageContext(reactor=self.clock, connection=self.connection, http=self.http, config=self.config)
        self.stages = [FeedCuckoo(context, stage) for stage in self.config.stages]
        self._test = test
        test.addCleanup(self.close)

    async def start(self) -> None:
        """
        Declare the queues (so they can be inspected passively), then start
        the stages.
        """
        self.connection.startService()
        client = await self.connection.whenConnected()
        channel = await client.open_channel()
        for name in (self.feed, self.check, self.failed):
            await declare_queue(channel, name)
        await channel.channel_close()
        for stage in self.stages:
            stage.startService()

    async def close(self) -> None:
        for stage in self.stages:
            if stage.running:
                await stage.stopService()
        await gatherResults([node.server.close() for node in self.nodes])
        await self.http.close()
        await harness.delete_queues(self.config.amqp, [self.feed, self.check, self.failed])
        await self.connection.stopService()

    async def publish(self, count: int, payload: dict | None = None) -> dict[str, str]:
        """
        Publish C{count} analysis requests to the feed queue.

        @return: sample md5 -> analysis id.
        """
        messages, md5s = [], {}
        for i in range(count):
            data = harness.sample(i)
            analysis_id, body = harness.request(i, data)
            if payload is not None:
                doc = json.loads(body)
                doc["payload"].update(payload)
                body = json.dumps(doc).encode()
            md5s[hashlib.md5(data).hexdigest()] = analysis_id
            messages.append((self.feed, body))
        await harness.publish(self.config.amqp, messages)
        return md5s

    async def queue(self, name: str) -> tuple[int, int]:
        """
        C{(ready messages, consumers)} of a queue, by a passive declare on
        a channel of our own.
        """
        client = await self.connection.whenConnected()
        channel = await client.open_channel()
        try:
            reply = await channel.queue_declare(queue=name, passive=True)
            return reply.message_count, reply.consumer_count
        finally:
            await channel.channel_close()

    async def settle(self, what: str, feed: tuple[int, int], produced: int, failed: int = 0, timeout: float = 20) -> None:
        """
        Wait until the feed queue holds C{feed} (ready, consumers; C{None}
        consumers for any number) and the stages have published
        C{produced} tasks and C{failed} failures.
        """
        seen: dict[str, Any] = {}

        async def check() -> bool:
            seen["feed"] = await self.queue(self.feed)
            seen["check"] = (await self.queue(self.check))[0]
            seen["failed"] = (await self.queue(self.failed))[0]
            ready, consumers = seen["feed"]
            return (
                ready == feed[0]
                and feed[1] in (None, consumers)
                and seen["check"] == produced
                and seen["failed"] == failed
            )

        await _wait_async(check, timeout, lambda: f"{what} (last seen {seen})")


async def _wait_async(predicate: Any, timeout: float, what: Any, interval: float = 0.1) -> None:
    waited = 0.0
    while not await predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what()}")
        await deferLater(reactor, interval, lambda: None)
        waited += interval

