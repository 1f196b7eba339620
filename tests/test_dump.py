"""
The dead-letter store, and resubmitting from it through the real broker.
"""

import io
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.commands.resubmit import resubmit
from cuckoodist.config import parse_config
from cuckoodist.dump import DumpRecord, DumpStore
from tests import harness


def record(**changes):
    base = dict(stage="feed_cuckoo", queue="q", reason="boom", message='{"a": 1, "Retry": {"attempts": 3}}',
                attempts=4, dumped_at=1700000000.0, analysis_id="../../etc/x")
    base.update(changes)
    return DumpRecord(**base)


class DumpStoreTests(SynchronousTestCase):
    def test_private_atomic_file(self) -> None:
        """
        A dump is a 0600 file in the dump directory, named safely even for
        a hostile analysis id, with no temporary file left behind, and it
        reads back to the same record.
        """
        store = DumpStore(self.mktemp())
        path = store.write(record())
        self.assertEqual(os.path.dirname(path), store.directory)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertNotIn("..", os.path.basename(path))
        self.assertEqual(os.listdir(store.directory), [os.path.basename(path)])
        self.assertEqual([r for _, r, _ in store], [record()])

    def test_unreadable_file_reported(self) -> None:
        """
        A file that is not a dump is reported with a reason, not fatal.
        """
        store = DumpStore(self.mktemp())
        store.write(record())
        with open(os.path.join(store.directory, "0-junk.json"), "w") as fp:
            fp.write("[]")
        entries = list(store)
        self.assertEqual(len(entries), 2)
        self.assertEqual([p for _, r, p in entries if r is None], ["not a cuckoodist dump file"])


class ResubmitTests(TestCase):
    timeout = 60

    async def test_resubmit(self) -> None:
        """
        resubmit publishes each chosen dump to its queue with the retry
        count cleared, removes its file only after the broker confirmed it,
        and leaves other stages' dumps alone.
        """
        p = harness.prefix()
        queue = f"{p}/feed_cuckoo"
        store = DumpStore(self.mktemp())
        for i in range(3):
            store.write(record(queue=queue, message=json.dumps({"n": i, "Retry": {"attempts": 4}})))
        kept = store.write(record(stage="parse_and_submit", queue=queue))
        amqp = parse_config({"amqp": harness.AMQP_URL, "stages": [{"type": "overseer", "dump_dir": "x"}]}).amqp
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(amqp, [queue])))
        out = io.StringIO()
        done, skipped = await resubmit(reactor, amqp, store.directory, "feed_cuckoo", out)
        self.assertEqual((done, skipped), (3, 1))
        self.assertEqual([path for path, _, _ in store], [kept])
        self.assertIn("resubmitted 3/3", out.getvalue())

        received = []
        got_all = Deferred()
        connection = AMQPConnectionService(reactor, amqp)

        async def handler(delivery, outbox):
            received.append(json.loads(delivery.body))
            if len(received) == 3:
                got_all.callback(None)

        consumer = QueueConsumer(connection, queue, 10, handler, reactor)
        connection.startService()
        consumer.startService()
        await got_all
        await consumer.stopService()
        await connection.stopService()
        self.assertEqual(sorted(m["n"] for m in received), [0, 1, 2])
        self.assertTrue(all("Retry" not in m for m in received))
