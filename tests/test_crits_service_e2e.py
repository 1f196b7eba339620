"""
End to end from the CRITs side: the CRITs service's C{run()} publishes
through CRITs' connector (real kombu) to the local RabbitMQ, and a
cuckoodist daemon takes the request through the simulated Cuckoo to the
simulated CRITs.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from cuckoodist.errors import InvalidMessage
from cuckoodist.messages import AnalysisRequest
from cuckoodist.tap import build_daemon
from tests import harness
from tests.crits_stub import support

service_module = support.load()
SOURCE = "cuckoodist-test"


def _queue_exists(name):
    """
    Whether the broker has queue C{name} (a passive declare, with kombu).
    """
    from kombu import Connection
    from kombu.exceptions import ChannelError

    with Connection(harness.AMQP_URL, connect_timeout=10) as connection:
        try:
            connection.channel().queue_declare(queue=name, passive=True)
        except ChannelError:
            return False
    return True


def by_reference_refusal():
    """
    Why cuckoodist refuses a by-reference request (C{file.md5} without
    C{file.data}), or L{None} once it accepts one.
    """
    body = (b'{"payload": {}, "file": {"name": "a.exe", "md5": "%s"}, "crits_data": '
            b'{"analysis_id": "a", "object_type": "Sample", "object_id": "o"}}' % (b"a" * 32))
    try:
        AnalysisRequest.decode(body)
    except InvalidMessage as e:
        return str(e)
    return None


class ServiceToCritsTests(TestCase):
    timeout = 120

    def setUp(self):
        self.peers = harness.Peers(analysis_seconds=0.3, machines=4)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.config = harness.config(self.peers, self.prefix, os.path.abspath(self.mktemp()))
        queues = [s.consumer_queue for s in self.config.stages]
        self.feed_queue = queues[0]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))

    def service_config(self, mode, priority=None):
        return {
            "broker_url": harness.AMQP_URL,
            "exchange": "",
            "routing_key": self.feed_queue,
            "crits_url": self.peers.crits_server.url,
            "api_user": "analyst",
            "api_key": harness.DEFAULT_API_KEY,
            "submit_mode": mode,
            "package": "exe",
            "options": "procmemdump=yes",
            "timeout": 60,
            "priority": priority,
        }

    async def _through(self, obj, mode, priority=None):
        """
        Start a daemon, run the service on C{obj} (in a thread, as CRITs
        runs services) once the feed queue exists, and wait for the
        analysis to complete in the simulated CRITs.
        """
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        exists = []

        async def declared():
            exists.append(await deferToThread(_queue_exists, self.feed_queue))

        for _ in range(100):
            await declared()
            if exists[-1]:
                break
        self.assertTrue(exists[-1], "the daemon never declared %s" % self.feed_queue)

        service_module.CuckoodistService.valid_for(obj)
        task = await deferToThread(support.run_service, service_module, obj, self.service_config(mode, priority))
        self.assertEqual(task.status, "completed", task.log)
        self.assertIn("Sent to the cuckoodist workers", task.log[-1]["message"])

        crits = self.peers.crits

        def finished():
            analysis = crits.state()["analyses"].get(task.task_id)
            return analysis is not None and analysis["status"] in ("completed", "error")

        await harness.wait_until(finished, 90, "the analysis to finish in the simulated CRITs")
        analysis = crits.state()["analyses"][task.task_id]
        self.assertEqual(analysis["status"], "completed", analysis["log"])
        self.assertEqual(analysis["object_id"], str(obj.id))
        subtypes = {r["subtype"] for r in analysis["results"]}
        self.assertTrue({"info", "signature", "process"} <= subtypes, sorted(subtypes))
        [cuckoo_task] = self.peers.cuckoo.state()["tasks"].values()
        self.assertEqual(cuckoo_task["md5"], obj.md5)
        self.assertEqual(cuckoo_task["package"], "exe")
        self.assertEqual(cuckoo_task["options"], {"procmemdump": "yes"})
        if priority is not None:
            self.assertEqual(str(cuckoo_task["priority"]), str(priority))
        return analysis

    async def test_inline(self):
        """
        Inline mode: the sample travels in the message.
        """
        import hashlib

        data = harness.sample(1)
        obj = support.Sample(data=data, filename="inline.exe", md5=hashlib.md5(data).hexdigest(),
                             sha256=hashlib.sha256(data).hexdigest(), sources=(SOURCE,))
        await self._through(obj, "inline")

    async def test_by_reference(self):
        """
        By-reference mode: the workers fetch the sample from CRITs by its
        hash; the sample is stored in the simulated CRITs first, as it is
        in a real one.
        """
        refusal = by_reference_refusal()
        if refusal is not None:
            raise SkipTest("cuckoodist does not accept by-reference requests yet "
                           "(a file.md5-only request is refused: %s)" % refusal)
        import hashlib

        data = harness.sample(2)
        stored = self.peers.crits.post_sample(
            {"upload_type": "file", "source": SOURCE}, {"filedata": [("ref.exe", data)]}, multipart=True)
        self.assertEqual(stored["return_code"], 0, stored)
        obj = support.Sample(data=data, filename="ref.exe", md5=hashlib.md5(data).hexdigest(),
                             sha256=hashlib.sha256(data).hexdigest(), sources=(SOURCE,),
                             object_id=stored["id"])
        await self._through(obj, "reference", priority=3)
        self.assertEqual(obj.filedata.reads, 0)
