"""
An upload to Cuckoo is made at most once per delivery: repeated inside the
stage only when it provably never reached Cuckoo, and otherwise failed as
transient for the overseer's later retry.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.errors import TransientError
from cuckoodist.http import NotSent
from cuckoodist.retry import retrying
from tests.feed_fleet import Fleet
from tests.harness import wait_until
from tests.memory import Steps


class RetryOnTests(SynchronousTestCase):
    def test_not_sent_is_retried(self) -> None:
        """
        With C{retry_on=NotSent}, a request that never left is tried again
        after the backoff.
        """
        clock = Clock()
        step = Steps(NotSent("refused"), NotSent("refused"))
        d = Deferred.fromCoroutine(retrying(clock, step, "upload", retry_on=NotSent))
        clock.advance(1)
        self.assertNoResult(d)
        clock.advance(2)
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(step.calls, 3)

    def test_other_transient_errors_fail_at_once(self) -> None:
        """
        With C{retry_on=NotSent}, a timeout or 5xx (which may have reached
        the peer) is raised at once, without a second try.
        """
        clock = Clock()
        step = Steps(TransientError("answered 500"))
        d = Deferred.fromCoroutine(retrying(clock, step, "upload", retry_on=NotSent))
        self.assertEqual(self.failureResultOf(d, TransientError).value.reason, "answered 500")
        self.assertEqual(step.calls, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_default_retries_every_transient_error(self) -> None:
        """
        Without C{retry_on}, every transient error is retried, as before.
        """
        clock = Clock()
        step = Steps(TransientError("answered 500"))
        d = Deferred.fromCoroutine(retrying(clock, step, "view"))
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(step.calls, 2)


class UploadOnceTests(TestCase):
    timeout = 60

    async def test_error_after_sending_is_not_repeated(self) -> None:
        """
        When Cuckoo answers 500 to an upload it received, each delivery is
        uploaded once and failed, transient and not final, to the overseer.
        """
        fleet = Fleet(self, [10])
        node = fleet.nodes[0]
        # Cuckoo 2.0.7 answers 500 to a boolean field it cannot parse.
        await fleet.publish(3, payload={"memory": "maybe"})
        await fleet.start()
        await fleet.settle("three transient failures", feed=(0, 1), produced=0, failed=3)
        self.assertEqual(node.uploads(), 3)
        self.assertEqual(node.tasks(), [])
        client = await fleet.connection.whenConnected()
        channel = await client.open_channel()
        self.addCleanup(channel.channel_close)
        reply = await channel.basic_get(queue=fleet.failed, no_ack=True)
        failure = json.loads(reply.content.body)
        self.assertEqual((failure["Desc"], failure["Final"], failure["Attempts"]), ("transient failure", False, 1))
        self.assertIn("500", failure["Error"])

    async def test_refused_upload_is_retried(self) -> None:
        """
        An upload refused at connect time never reached Cuckoo: the stage
        tries it again after its backoff, and the sample is uploaded once.
        """
        fleet = Fleet(self, [10])
        node = fleet.nodes[0]
        await fleet.publish(1)
        await fleet.start()
        await fleet.settle("the first upload", feed=(0, 1), produced=1)
        # The status answer is still fresh: the next upload goes without a
        # probe, into a closed port.
        await node.server.stop_listening()
        await fleet.publish(1)
        await wait_until(lambda: fleet.clock.getDelayedCalls(), 20, "the upload's retry to be scheduled")
        self.assertEqual(node.uploads(), 1)
        node.server.start_listening()
        fleet.clock.advance(1)
        await fleet.settle("the retried upload", feed=(0, 1), produced=2)
        self.assertEqual((node.uploads(), len(node.tasks()), node.probes()), (2, 2, 1))
