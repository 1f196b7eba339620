"""
feed_cuckoo never sits on a request while its Cuckoo is full: it hands its
deliveries back and stops consuming, so that they wait in RabbitMQ, where
an instance with room can take them.  Over the shared broker, with the
Cuckoo simulator, on a clock the test drives.
"""

from twisted.trial.unittest import TestCase

from tests.feed_fleet import Fleet
from tests.harness import wait_until

INTERVAL = 10.0


class PauseTests(TestCase):
    timeout = 90

    async def test_full_cuckoo_hands_back(self) -> None:
        """
        While the Cuckoo is full the feed queue has no consumer and every
        request is back in it as ready, after a single status probe; the
        Cuckoo is asked again once per interval, not more.  As room
        returns, the requests are uploaded, each exactly once.
        """
        fleet = Fleet(self, [3], status_interval=INTERVAL)
        node = fleet.nodes[0]
        for _ in range(3):
            node.sim.create_task("backlog.exe", b"MZ backlog", {})
        expected = await fleet.publish(10)
        await fleet.start()
        await wait_until(lambda: node.probes() == 1, 20, "the first status probe")
        await fleet.settle("the full node to hand everything back", feed=(10, 0), produced=0)
        self.assertEqual((node.uploads(), node.probes()), (0, 1))

        fleet.clock.advance(INTERVAL)
        await fleet.settle("a probe that finds no room", feed=(10, 0), produced=0)
        self.assertEqual((node.uploads(), node.probes()), (0, 2))

        # Three slots free: three uploads, then the node is full again.
        node.free()
        fleet.clock.advance(INTERVAL)
        await fleet.settle("three uploads", feed=(7, 0), produced=3)
        self.assertEqual((node.uploads(), node.probes()), (3, 3))

        # Room for everything: one batch of max_pending per interval.
        node.sim.machines = 100
        for produced in (6, 9, 10):
            fleet.clock.advance(INTERVAL)
            await fleet.settle(f"{produced} uploads", feed=(10 - produced, 0 if produced < 10 else 1), produced=produced)
        self.assertEqual(node.probes(), 6)
        self.assertEqual(node.uploads(), 10)
        self.assertEqual(sorted(t["md5"] for t in node.tasks() if t["filename"] != "backlog.exe"), sorted(expected))


class FleetTests(TestCase):
    timeout = 90

    async def test_requests_go_where_there_is_room(self) -> None:
        """
        Three instances on three Cuckoos of capacity 1, 3 and 6 share one
        queue.  Ten requests are all uploaded without any instance waiting
        for room (the clock does not move), each Cuckoo filled exactly to
        its capacity and each sample uploaded once.  With every Cuckoo
        full, new requests wait in the queue; when one Cuckoo gets room,
        its instance alone takes them.
        """
        fleet = Fleet(self, [1, 3, 6], status_interval=INTERVAL)
        expected = await fleet.publish(10)
        await fleet.start()
        await fleet.settle("every request to be uploaded", feed=(0, None), produced=10)
        self.assertEqual([n.uploads() for n in fleet.nodes], [1, 3, 6])
        self.assertEqual([n.probes() for n in fleet.nodes], [1, 1, 1])
        md5s = [t["md5"] for n in fleet.nodes for t in n.tasks()]
        self.assertEqual(sorted(md5s), sorted(expected))

        await fleet.publish(4)
        await fleet.settle("every instance to pause", feed=(4, 0), produced=10)

        middle = fleet.nodes[1]
        middle.free()
        fleet.clock.advance(INTERVAL)
        await fleet.settle("the node with room to take three", feed=(1, 0), produced=13)
        self.assertEqual([n.uploads() for n in fleet.nodes], [1, 6, 6])
        self.assertEqual([n.probes() for n in fleet.nodes], [2, 2, 2])

