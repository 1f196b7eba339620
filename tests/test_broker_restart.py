"""
Broker restarts: a daemon running all four stages, with samples in every
queue, loses none of them when RabbitMQ goes away and comes back, and
consumes again within seconds of the broker's return.

The broker is a private node (L{tests.rabbitnode}): the shared one is
never stopped.  Its queues are durable and the messages persistent, so
what was queued survives a full stop of the node.
"""

import time
from typing import Callable

from twisted.internet.threads import deferToThread

from tests import faults, harness
from tests.rabbitnode import SKIP_REASON
from tests.test_faults import FaultTestCase, report

SAMPLES = 200
#: Longest wait allowed from the broker's return to consuming again.
RESUME_WITHIN = 10.0


class BrokerRestartTests(FaultTestCase):
    """
    Restarting the broker twice under load, once by stopping its
    application and once by stopping the whole node.
    """

    skip = SKIP_REASON
    timeout = 300
    private_broker: dict | None = {}

    async def _outage(
        self, how: str, bounce: Callable[[], object], queue_consumers: list, expected: dict[str, str]
    ) -> dict[str, float]:
        """
        Take the broker away with C{bounce} (blocking, run in a thread so
        the daemon keeps running) and measure the return.

        @return: seconds from the broker answering again until every
            consumer consumes (C{"consuming"}) and until the next sample
            completes in CRITs (C{"completion"}), and how long the broker
            was away (C{"down"}).
        """
        await harness.wait_until(lambda: all(c.consuming for c in queue_consumers), 10, "all consumers before the outage")
        marks = faults.watch_consumers(self, queue_consumers, up_after="back")
        done_before = self.completed(expected)
        began = time.monotonic()
        await deferToThread(bounce)
        marks["back"] = time.monotonic()
        done_back = self.completed(expected)
        await harness.wait_until(
            lambda: self.completed(expected) > done_back, 60, f"a completion after the {how}", interval=0.02
        )
        completion = time.monotonic() - marks["back"]
        await harness.wait_until(lambda: "up" in marks, 60, f"consumers to resume after the {how}", interval=0.02)
        self.assertIn("down", marks, f"the {how} did not interrupt the consumers")
        figures = {"down": marks["back"] - began, "consuming": marks["up"] - marks["back"], "completion": completion}
        report(
            "broker restart",
            f"{how} with {done_before}/{len(expected)} done: broker away {figures['down']:.2f}s; "
            f"consuming again {figures['consuming']:.2f}s and next completion {figures['completion']:.2f}s "
            f"after it answered",
        )
        return figures

    async def test_two_restarts_under_load(self) -> None:
        """
        While 200 samples flow through one daemon, the broker is restarted
        with C{stop_app}/C{start_app} and then stopped and started as a
        whole node.  Every consumer is consuming again within 10 s of the
        broker answering, and every sample is completed in CRITs.
        """
        daemon = self.in_process()
        queue_consumers = list(faults.consumers(daemon))
        self.assertEqual(len(queue_consumers), len(faults.work_queues(self.config)))
        expected = await self.publish(SAMPLES)
        measured = {}
        for how, bounce, after in (
            ("stop_app/start_app", lambda: (self.node.stop_app(), self.node.start_app()), 40),
            ("full node restart", self.node.restart, 120),
        ):
            await harness.wait_until(lambda: self.completed(expected) >= after, 120, f"{after} samples done")
            measured[how] = await self._outage(how, bounce, queue_consumers, expected)
            self.assertLess(self.completed(expected), len(expected), f"the {how} came too late to interrupt anything")
        await self.all_completed(expected, 150)
        figures = await self.final_tally("broker restart", expected)
        self.assertEqual(figures.lost, ())
        self.assertEqual(figures.delivered, SAMPLES)
        for how, seconds in measured.items():
            self.assertLessEqual(seconds["consuming"], RESUME_WITHIN, f"consumers resumed too late after the {how}")
            self.assertLessEqual(seconds["completion"], RESUME_WITHIN, f"no completion soon enough after the {how}")
