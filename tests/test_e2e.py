"""
End to end: Go-format requests through every stage, against the real
RabbitMQ and the simulated Cuckoo and CRITs over real sockets.
"""

import json
import os
import signal

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.dump import DumpStore
from cuckoodist.tap import build_daemon
from tests import harness

SAMPLES = 50


class _Exit(ProcessProtocol):
    def __init__(self) -> None:
        self.ended = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class PipelineTests(TestCase):
    """
    Fifty samples, one that Cuckoo fails and one malformed message.
    """

    timeout = 240

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=0.5, machines=16, report_calls_per_process=30)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        self.config = harness.config(self.peers, self.prefix, self.dump_dir)
        queues = [s.consumer_queue for s in self.config.stages]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))

    async def _publish(self) -> tuple[dict, str]:
        feed = self.config.stages[0].consumer_queue
        messages, expected = harness.requests(feed, SAMPLES)
        failing_id, body = harness.request(999, harness.sample(999, fail=True))
        messages.append((feed, body))
        messages.append((feed, b"{this is not json"))
        await harness.publish(self.config.amqp, messages)
        return expected, failing_id

    async def _check_outcome(self, expected: dict, failing_id: str, daemons: list[Deferred] = ()) -> None:
        crits = self.peers.crits

        def settled() -> bool:
            for ended in daemons:
                if ended.called:
                    raise AssertionError("a daemon process exited early; see its log in _trial_temp")
            analyses = crits.state()["analyses"]
            done = [a for k, a in analyses.items() if k in expected and a["status"] == "completed"]
            failed = analyses.get(failing_id, {}).get("status") == "error"
            dumps = len(list(DumpStore(self.dump_dir)))
            return len(done) == len(expected) and failed and dumps == 2

        await harness.wait_until(settled, 150, "every sample to finish in CRITs")
        state = crits.state()
        for analysis_id in expected:
            analysis = state["analyses"][analysis_id]
            subtypes = {r["subtype"] for r in analysis["results"]}
            self.assertTrue(
                {"info", "signature", "process", "api_call", "file_added"} <= subtypes,
                f"{analysis_id} lacks results: {sorted(subtypes)}",
            )
            self.assertTrue(analysis["finish_date"])
        failed = state["analyses"][failing_id]
        self.assertIn("failed_analysis", " ".join(entry["message"] for entry in failed["log"]))

        def deleted() -> bool:
            by_md5 = {t["md5"]: t for t in self.peers.cuckoo.state()["tasks"].values()}
            return all(by_md5[md5]["deleted"] for md5 in expected.values())

        await harness.wait_until(deleted, 30, "every Cuckoo task to be deleted after cleanup_delay")

        records = [record for _, record, _ in DumpStore(self.dump_dir)]
        reasons = {r.analysis_id: r.reason for r in records}
        self.assertIn("failed_analysis", reasons[failing_id])
        unreadable = [r for r in records if r.analysis_id == ""]
        self.assertEqual(len(unreadable), 1)
        self.assertIn("not valid JSON", unreadable[0].reason)
        self.assertEqual(unreadable[0].message, "{this is not json")
        for path, _, _ in DumpStore(self.dump_dir):
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    async def test_one_daemon(self) -> None:
        """
        All four stages in one daemon deliver every sample's results and a
        finished analysis to CRITs, delete each Cuckoo task, end the failed
        analysis as an error and dump the malformed message with its reason.
        No log line carries the CRITs API key.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        expected, failing_id = await self._publish()
        await self._check_outcome(expected, failing_id)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("analysis=", text)
        self.assertNotIn(harness.DEFAULT_API_KEY, text)

    async def test_two_processes(self) -> None:
        """
        The same outcome with the stages split over two twistd processes,
        started as a user would start them.
        """
        base = harness.config_doc(self.peers, self.prefix, self.dump_dir)
        ends = []
        for n, names in enumerate((["feed_cuckoo", "check_results"], ["parse_and_submit", "overseer"])):
            doc = dict(base, stages=[s for s in base["stages"] if s["type"] in names])
            path = os.path.abspath(self.mktemp() + f"-{n}.yaml")
            with open(path, "w") as fp:
                json.dump(doc, fp)  # JSON is YAML
            log = os.path.abspath(self.mktemp() + f"-{n}.log")
            exit_watch = _Exit()
            process = reactor.spawnProcess(
                exit_watch,
                harness.twistd_command(path, log)[0],
                harness.twistd_command(path, log),
                env={**os.environ, "PYTHONPATH": harness.REPO},
                path=harness.REPO,
            )
            ends.append(exit_watch.ended)

            def stop(process=process, ended=exit_watch.ended) -> Deferred:
                if process.pid is not None:
                    process.signalProcess(signal.SIGTERM)
                return ended

            self.addCleanup(stop)
        expected, failing_id = await self._publish()
        await self._check_outcome(expected, failing_id, ends)


class ReportFormatTests(TestCase):
    """
    The pipeline against Cuckoo 1.2, CAPE-shaped reports, and a Cuckoo
    2.0.7 that requires its API token.
    """

    timeout = 120

    async def _pipeline(self, token: str = "", parse: dict | None = None, **cuckoo_options) -> dict:
        peers = harness.Peers(analysis_seconds=0.3, machines=8, token=token, **cuckoo_options)
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        doc = harness.config_doc(peers, p, os.path.abspath(self.mktemp()))
        doc["cuckoo"]["sim"]["token"] = token
        doc["stages"][2].update(parse or {})
        config = harness.parse_config(doc)
        queues = [s.consumer_queue for s in config.stages]
        events = harness.start_daemon(self, config)
        wanted = {}
        for i in range(8):
            analysis_id, body = harness.request(i, harness.sample(i))
            wanted[analysis_id] = body
        await harness.publish(config.amqp, [(queues[0], body) for body in wanted.values()])

        def done() -> bool:
            analyses = peers.crits.state()["analyses"]
            return all(analyses.get(a, {}).get("status") == "completed" for a in wanted)

        await harness.wait_until(done, 90, "every analysis to complete")
        text = "\n".join(formatEvent(e) for e in events)
        if token:
            self.assertNotIn(token, text)
        return {a: peers.crits.state()["analyses"][a] for a in wanted}

    def _subtypes(self, analyses: dict) -> set:
        return {r["subtype"] for a in analyses.values() for r in a["results"]}

    async def test_cuckoo_12(self) -> None:
        """
        Cuckoo 1.2 (string dates, list arguments, summary files/keys/mutexes,
        no disk space in its status) yields the same kinds of results.
        """
        analyses = await self._pipeline(report_format="1.2")
        self.assertTrue({"info", "signature", "process", "api_call", "file_added"} <= self._subtypes(analyses))

    async def test_cape(self) -> None:
        """
        CAPE-shaped reports are read too.
        """
        analyses = await self._pipeline(report_format="cape")
        self.assertTrue({"info", "signature", "process"} <= self._subtypes(analyses))

    async def test_token(self) -> None:
        """
        A Cuckoo 2.0.7 with an api_token is used with its Bearer token, and
        the token never reaches a log line.
        """
        analyses = await self._pipeline(token="s3cret-cuckoo-token")
        self.assertTrue({"info", "api_call"} <= self._subtypes(analyses))

    async def test_dropped_over_cap(self) -> None:
        """
        Dropped files over the byte cap are refused with the reason in the
        CRITs log; the report's results stand and the analysis completes.
        """
        analyses = await self._pipeline(parse={"max_dropped_bytes": 64})
        self.assertNotIn("file_added", self._subtypes(analyses))
        self.assertIn("info", self._subtypes(analyses))
        for analysis in analyses.values():
            self.assertIn("Dropped files not processed", " ".join(e["message"] for e in analysis["log"]))


class TaskGoneTests(TestCase):
    """
    A task message whose Cuckoo task no longer exists.
    """

    timeout = 60

    async def test_task_gone_ends_in_error_and_dump(self) -> None:
        """
        The CRITs analysis ends as error with the reason, and the message
        is dumped once: never silently acked, never left "started".
        """
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        config = harness.config(peers, p, dump_dir, ["parse_and_submit", "overseer"])
        queues = [s.consumer_queue for s in config.stages]
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(config.amqp, queues)))
        daemon = build_daemon(config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        analysis_id, request = harness.request(1, harness.sample(1))
        task = {"TaskId": 424242, "CuckooURL": peers.cuckoo_server.url, "CritsData": json.loads(request)["crits_data"]}
        await harness.publish(config.amqp, [(queues[0], json.dumps(task).encode())])
        await harness.wait_until(lambda: len(list(DumpStore(dump_dir))) == 1, 30, "the task to be dumped")
        [(_, record, _)] = list(DumpStore(dump_dir))
        self.assertIn("Cuckoo task 424242 no longer exists", record.reason)
        self.assertEqual((record.analysis_id, record.task_id, record.crits_told), (analysis_id, 424242, True))
        analysis = peers.crits.state()["analyses"][analysis_id]
        self.assertEqual(analysis["status"], "error")
        self.assertIn("no longer exists", " ".join(e["message"] for e in analysis["log"]))


class NoDuplicateResultsTests(TestCase):
    """
    A flaky CRITs makes whole messages fail and come back through the
    overseer; the results already posted are not posted again.
    """

    timeout = 180

    async def test_retries_do_not_repeat_results(self) -> None:
        """
        With half of CRITs' answers failing (before it stores anything),
        some analyses need the overseer's retries, and every analysis
        still ends with exactly the rows its report yields, once each.
        """
        import treq

        from cuckoodist.report import ExtractOptions, extract_results_plain
        from cuckoodist.stages.parse_and_submit import REPORT_PARSERS

        peers = harness.Peers(analysis_seconds=0.2, machines=16)
        peers.crits.faults.fail_rate = 0.5
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(peers, p, dump_dir)
        parsers = sorted(REPORT_PARSERS)
        doc["stages"][2].update(cuckoo_cleanup=False, enabled_parsers=parsers, crits_max_body=4000)
        doc["stages"][3].update(max_retries=30, retry_delay=0.05)
        config = harness.parse_config(doc)
        queues = [s.consumer_queue for s in config.stages]
        events = harness.start_daemon(self, config)
        messages, expected = harness.requests(queues[0], 16)
        await harness.publish(config.amqp, messages)

        def done() -> bool:
            analyses = peers.crits.state()["analyses"]
            return all(analyses.get(a, {}).get("status") == "completed" for a in expected)

        await harness.wait_until(done, 150, "every analysis to complete")
        retried = [e for e in events if (e.get("log_format") or "").startswith("Retrying ")
                   and "parse_and_submit" in str(e.get("queue", ""))]
        self.assertTrue(retried, "no parse_and_submit message needed the overseer; the test proved nothing")
        self.assertEqual(list(DumpStore(dump_dir)), [])
        tasks = {t["md5"]: task_id for task_id, t in peers.cuckoo.state()["tasks"].items()}
        options = ExtractOptions(parsers=frozenset(parsers), api_calls_max=config.stages[2].push_api_calls_max)
        for analysis_id, md5 in expected.items():
            task_id = int(tasks[md5])
            response = await treq.get(f"{peers.cuckoo_server.url}/tasks/report/{task_id}/json", persistent=False)
            report = json.loads(await response.content())
            rows = extract_results_plain(report, attrs.evolve(options, task_id=task_id)).rows
            posted = peers.crits.state()["analyses"][analysis_id]["results"]
            self.assertEqual(len(posted), len(rows), f"analysis {analysis_id} got {len(posted)} rows for {len(rows)}")
