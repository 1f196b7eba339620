"""
Samples by reference, end to end: requests naming a sample by md5 through
every stage, against the real RabbitMQ and the simulated Cuckoo and CRITs
over real sockets; feed_cuckoo fetches each zip from CRITs.
"""

import hashlib
import json
import os
import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.dump import DumpStore
from cuckoodist.simulators.crits import zipcrypto_archive
from cuckoodist.tap import build_daemon
from tests import harness


def by_reference(i: int, md5: str, sha256: str = "", priority: int | None = None) -> tuple[str, bytes]:
    """
    A request naming its sample by digest, without C{file.data}.
    """
    analysis_id = str(uuid.uuid4())
    file = {"name": f"ref-{i}.exe", "md5": md5}
    if sha256:
        file["sha256"] = sha256
    doc = {
        "payload": {"package": "exe"},
        "file": file,
        "crits_data": {"analysis_id": analysis_id, "object_type": "Sample", "object_id": md5[:24],
                       "md5": md5, "source": "cuckoodist-test"},
    }
    if priority is not None:
        doc["priority"] = priority
    return analysis_id, json.dumps(doc).encode()


class ByReferenceTests(TestCase):
    """
    The daemon fetches, checks and submits samples named by md5.
    """

    timeout = 240

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=0.5, machines=16, report_calls_per_process=30)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.addCleanup(self.peers.crits.close)
        self.dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(self.peers, harness.prefix(), self.dump_dir)
        doc["stages"][0]["max_sample_size"] = 64 * 1024
        self.config = harness.parse_config(doc)
        self.feed = self.config.stages[0].consumer_queue
        queues = [s.consumer_queue for s in self.config.stages]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))
        self.events: list = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)

    async def _completed(self, wanted: list[str], failed: list[str] = (), dumps: int = 0) -> dict:
        crits = self.peers.crits

        def settled() -> bool:
            analyses = crits.state()["analyses"]
            return (all(analyses.get(a, {}).get("status") == "completed" for a in wanted)
                    and all(analyses.get(a, {}).get("status") == "error" for a in failed)
                    and len(list(DumpStore(self.dump_dir))) == dumps)

        await harness.wait_until(settled, 150, "every analysis to end")
        return crits.state()["analyses"]

    def _submitted(self) -> dict:
        """
        Cuckoo's tasks by the md5 of their sample.
        """
        return {t["md5"]: t for t in self.peers.cuckoo.state()["tasks"].values()}

    async def test_fifty_by_reference(self) -> None:
        """
        Fifty samples named by md5 (half with sha256) are fetched from
        CRITs, verified, analysed and finished in CRITs; Cuckoo received
        exactly the bytes CRITs holds.  No log line carries the API key or
        the zip password.
        """
        messages, wanted, md5s = [], [], []
        for i in range(50):
            data = harness.sample(i)
            md5 = self.peers.crits.add_sample(data)
            sha256 = hashlib.sha256(data).hexdigest() if i % 2 else ""
            analysis_id, body = by_reference(i, md5, sha256)
            messages.append((self.feed, body))
            wanted.append(analysis_id)
            md5s.append(md5)
        await harness.publish(self.config.amqp, messages)
        analyses = await self._completed(wanted)
        for analysis_id in wanted:
            subtypes = {r["subtype"] for r in analyses[analysis_id]["results"]}
            self.assertIn("signature", subtypes)
        tasks = self._submitted()
        self.assertTrue(set(md5s) <= set(tasks))
        self.assertGreaterEqual(self.peers.crits.state()["requests"].get("samples GET", 0), 50)
        text = "\n".join(formatEvent(e) for e in self.events)
        self.assertIn("fetched from CRITs", text)
        self.assertNotIn(harness.DEFAULT_API_KEY, text)
        self.assertNotIn("infected", text)

    async def test_failures_dumped_with_reason(self) -> None:
        """
        A missing sample, a wrong password, a digest mismatch and an
        oversize sample each end the analysis as an error whose CRITs log
        says why, and the message is dumped with that reason.
        """
        sim = self.peers.crits
        missing = "0" * 32
        wrong_password = hashlib.md5(b"wrong password").hexdigest()
        sim.set_download(wrong_password, zipcrypto_archive([(wrong_password, b"wrong password")], "not-infected"))
        mismatch = hashlib.md5(b"what was asked").hexdigest()
        sim.set_download(mismatch, zipcrypto_archive([(mismatch, b"something else")], "infected"))
        oversize = sim.add_sample(b"MZ" + os.urandom(70 * 1024))
        cases = {missing: "No files found", wrong_password: "wrong password",
                 mismatch: "not the requested", oversize: "max_sample_size"}
        ids = {}
        for i, md5 in enumerate(cases):
            analysis_id, body = by_reference(i, md5)
            ids[analysis_id] = md5
            await harness.publish(self.config.amqp, [(self.feed, body)])
        analyses = await self._completed([], failed=list(ids), dumps=len(ids))
        reasons = {r.analysis_id: r.reason for _, r, _ in DumpStore(self.dump_dir)}
        for analysis_id, md5 in ids.items():
            log = " ".join(entry["message"] for entry in analyses[analysis_id]["log"])
            self.assertIn(cases[md5], log, md5)
            self.assertIn(cases[md5], reasons[analysis_id], md5)
        self.assertEqual(self.peers.cuckoo.state()["tasks"], {})

    async def test_mixed_queue(self) -> None:
        """
        Inline and by-reference requests, with and without priority, share
        a queue; each is analysed, and Cuckoo gets the priority asked for.
        """
        messages, wanted, priorities = [], [], {}
        for i in range(12):
            data = harness.sample(100 + i)
            md5 = hashlib.md5(data).hexdigest()
            priority = (i % 3) + 1 if i % 2 else None
            if i % 2 == 0:
                self.peers.crits.add_sample(data)
                analysis_id, body = by_reference(i, md5, priority=priority)
            else:
                analysis_id, body = harness.request(i, data)
                if priority is not None:
                    doc = json.loads(body)
                    doc["priority"] = priority
                    body = json.dumps(doc).encode()
            priorities[md5] = priority
            messages.append((self.feed, body))
            wanted.append(analysis_id)
        await harness.publish(self.config.amqp, messages)
        await self._completed(wanted)
        tasks = self._submitted()
        for md5, priority in priorities.items():
            self.assertEqual(tasks[md5].get("priority"), priority if priority is not None else 1, md5)
