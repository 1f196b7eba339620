# -*- test-case-name: tests.test_request_budget -*-
"""
The request budget of one sample (issue #12, "fewer requests"): end to
end, through the real broker and both simulators, the common case (a
report and two dropped files) costs Cuckoo and CRITs at most six requests
each per sample, and nothing is lost on the way: every sample's results,
notes, dropped samples and their relationships reach CRITs.

The expectations are per route, each with its reason, so that a change
in one stage's traffic shows where it comes from.  check_results' polling
is counted on its own: it depends on how long an analysis takes and on
how check_results polls (task views one by one, or a batched task list),
not on how a sample's results are delivered.
"""

import hashlib
import json
import os
import re
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from cuckoodist.simulators.server import SimulatorServer
from tests import harness

SAMPLES = 20
STATUS_INTERVAL = 1.0

_VIEW = re.compile(r"/(?:v1/)?tasks/view/(\d+)")


class _RecordingCuckoo(Resource):
    """
    The Cuckoo simulator's resource, noting for each task view the status
    the task had when it was asked: a view of a task already C{reported}
    beyond the first is not check_results' polling.
    """

    isLeaf = True

    def __init__(self, sim) -> None:
        super().__init__()
        self._sim = sim
        self._inner = sim.resource
        #: task id -> the statuses its views saw, in order.
        self.views: dict[int, list[str]] = {}
        #: when each status probe came, on the reactor's clock.
        self.probes: list[float] = []

    def render(self, request):
        path = request.path.decode("latin-1")
        if path.endswith("/cuckoo/status"):
            self.probes.append(reactor.seconds())
        match = _VIEW.fullmatch(path)
        if match:
            self._sim.catch_up()
            task = self._sim.get_task(int(match.group(1)))
            self.views.setdefault(int(match.group(1)), []).append(task.status if task else "missing")
        return self._inner.render(request)


def _request(i: int, data: bytes) -> tuple[str, bytes]:
    """
    L{harness.request} asking for a short analysis: pollers that wait for
    the analysis timeout before they look then need not wait a minute.
    """
    analysis_id, body = harness.request(i, data, with_credentials=i % 2 == 0)
    doc = json.loads(body)
    doc["payload"]["timeout"] = "1"
    return analysis_id, json.dumps(doc).encode()


def _two_dropped_sample(i: int) -> bytes:
    """
    A sample for which the Cuckoo simulator drops two files (and the empty
    one every task drops): the simulator drops two when the md5's first
    digit is odd.
    """
    while True:
        data = harness.sample(i)
        if int(hashlib.md5(data).hexdigest()[0], 16) % 2:
            return data


class RequestBudgetTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=1.0, machines=8, report_calls_per_process=30)
        self.recorder = _RecordingCuckoo(self.peers.cuckoo)
        self.peers.cuckoo_server = SimulatorServer(reactor, self.recorder)
        self.peers.start()
        self.addCleanup(self.peers.stop)

    async def test_common_case(self) -> None:
        """
        Twenty samples, each with a report and two dropped files (and an
        empty one, which is skipped with a note): at most six requests to
        Cuckoo and six to CRITs per sample, and CRITs holds everything.
        """
        p = harness.prefix()
        doc = harness.config_doc(self.peers, p, os.path.abspath(self.mktemp()))
        doc["stages"][0].update(status_interval=STATUS_INTERVAL, max_pending=50)
        config = harness.parse_config(doc)
        harness.start_daemon(self, config)
        feed = config.stages[0].consumer_queue
        expected: dict[str, bytes] = {}
        messages = []
        for i in range(SAMPLES):
            data = _two_dropped_sample(i)
            analysis_id, body = _request(i, data)
            expected[analysis_id] = data
            messages.append((feed, body))
        started = time.monotonic()
        await harness.publish(config.amqp, messages)
        crits, cuckoo = self.peers.crits, self.peers.cuckoo

        def finished() -> bool:
            analyses = crits.state()["analyses"]
            tasks = cuckoo.state()["tasks"].values()
            return (all(analyses.get(a, {}).get("status") == "completed" for a in expected)
                    and len(tasks) == SAMPLES and all(t["deleted"] for t in tasks))

        await harness.wait_until(finished, 150, "every analysis to finish and every task to be deleted")
        elapsed = time.monotonic() - started
        self._check_delivered(expected)
        self._check_cuckoo(cuckoo.state()["requests"], elapsed)
        self._check_crits(crits.state())

    def _check_delivered(self, expected: dict[str, bytes]) -> None:
        """
        Every sample's results, its notes, its dropped samples and their
        relationships to the analysed sample are in CRITs.
        """
        state = self.peers.crits.state()
        by_md5 = {s["md5"]: (sample_id, s) for sample_id, s in state["samples"].items()}
        relations = {(r["left_type"], r["left_id"], r["right_type"], r["right_id"], r["rel_type"])
                     for r in state["relationships"]}
        for analysis_id, data in expected.items():
            analysis = state["analyses"][analysis_id]
            subtypes = {r["subtype"] for r in analysis["results"]}
            self.assertTrue({"info", "signature", "process", "api_call"} <= subtypes, sorted(subtypes))
            dropped = [r for r in analysis["results"] if r["subtype"] == "file_added"]
            self.assertEqual(len(dropped), 2, dropped)
            notes = "\n".join(line["message"] for line in analysis["log"])
            self.assertIn("Skipped archive entry: ", notes)
            self.assertIn("empty", notes)
            object_id = hashlib.md5(data).hexdigest()[:24]
            for row in dropped:
                sample_id, sample = by_md5[row["md5"]]
                self.assertIn("cuckoodist-test", sample["sources"])
                self.assertIn(("Sample", sample_id, "Sample", object_id, "Related To"), relations)
                self.assertIn(("Sample", object_id, "Sample", sample_id, "Related To"), relations)

    def _check_cuckoo(self, counts: dict[str, int], elapsed: float) -> None:
        """
        Per sample: one upload; the report and the dropped archive (both
        C{tasks/report}); one delete after C{cleanup_delay}; no view by
        parse_and_submit.  Status probes are bounded by time, at most one
        per C{status_interval}, not by uploads.  Polling (task views and
        lists of check_results) is counted apart.
        """
        n = SAMPLES
        self.assertEqual(counts.get("tasks/create/file"), n, counts)  # one upload per sample
        self.assertEqual(counts.get("tasks/report"), 2 * n, counts)  # report.json + dropped archive
        self.assertEqual(counts.get("tasks/delete"), n, counts)  # the clean-up
        self.assertEqual(counts.get("unknown", 0), 0, counts)
        # parse_and_submit views a task only when its report is missing:
        # every view of a task already reported, beyond the one with which
        # check_results saw it reported, is one too many.
        extra = {t: seen for t, seen in self.recorder.views.items() if seen.count("reported") > 1}
        self.assertEqual(extra, {}, "task views after the task was reported")
        _check_probes(self, self.recorder.probes, counts, elapsed, STATUS_INTERVAL)
        polling = counts.get("tasks/view", 0) + counts.get("tasks/list", 0)
        delivery = sum(counts.values()) - polling
        # Delivery must leave room for at least one poll per sample in six.
        self.assertLessEqual(delivery, 5 * n, counts)
        # And with check_results' polling, whichever way it polls, six.
        self.assertLessEqual(sum(counts.values()), 6 * n, counts)

    def _check_crits(self, state: dict) -> None:
        """
        Per sample: the report's results in one request (the simulator's
        report fits in one batch); the dropped files' rows in one request
        that also carries the step's note (the skipped empty file); the
        finish; two uploads, each relating its sample to the analysed one.
        No separate log line, no separate relationship.
        """
        n = SAMPLES
        counts, actions = state["requests"], state["actions"]
        self.assertEqual(counts.get("samples POST"), 2 * n, counts)  # the two dropped files
        self.assertEqual(actions.get("upload related"), 2 * n, actions)  # related in the upload
        self.assertEqual(counts.get("samples/detail PATCH", 0), 0, counts)  # no forge_relationship
        self.assertEqual(counts.get("services POST"), 3 * n, counts)  # report rows, dropped rows + note, finish
        self.assertEqual(actions.get("log only", 0), 0, actions)  # notes ride on results
        self.assertEqual(actions.get("finish"), n, actions)
        self.assertLessEqual(sum(counts.values()), 6 * n, counts)


class StatusProbeTests(TestCase):
    """
    feed_cuckoo's status probes are bounded by time, not by uploads, also
    while Cuckoo is full: C{max_pending} reached, deliveries handed back,
    consuming paused and resumed as one-second analyses end.
    """

    timeout = 120

    async def test_full_cuckoo(self) -> None:
        peers = harness.Peers(analysis_seconds=1.0, machines=2)
        recorder = _RecordingCuckoo(peers.cuckoo)
        peers.cuckoo_server = SimulatorServer(reactor, recorder)
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        doc = harness.config_doc(peers, p, os.path.abspath(self.mktemp()), stages=["feed_cuckoo"])
        interval = 0.5
        doc["stages"][0].update(status_interval=interval, max_pending=2, prefetch_count=4)
        config = harness.parse_config(doc)
        events = harness.start_daemon(self, config)
        feed = config.stages[0].consumer_queue
        started = time.monotonic()
        await harness.publish(config.amqp, [(feed, _request(i, harness.sample(i))[1]) for i in range(12)])
        await harness.wait_until(lambda: peers.cuckoo.state()["requests"].get("tasks/create/file", 0) == 12,
                                 60, "every sample to be uploaded")
        elapsed = time.monotonic() - started
        counts = peers.cuckoo.state()["requests"]
        paused = sum(1 for e in events if "Paused consuming" in (e.get("log_format") or ""))
        self.assertGreater(paused, 0, "Cuckoo was never full: the test proves nothing")
        _check_probes(self, recorder.probes, counts, elapsed, interval)


def _check_probes(test: TestCase, probes: list[float], counts: dict, elapsed: float, interval: float) -> None:
    """
    At most one status probe per C{interval}: no more than the elapsed
    time allows, however many uploads there were, and none in quick
    succession.  (The gaps are seen by the server: the first probe also
    opens the connection, which can delay its arrival, so a gap may look
    shorter than the interval the gate kept; probes per upload would
    come milliseconds apart.)
    """
    test.assertEqual(len(probes), counts.get("cuckoo/status", 0))
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    test.assertTrue(all(gap >= 0.5 * interval for gap in gaps), gaps)
    test.assertLessEqual(len(probes), elapsed / interval + 2, counts)
