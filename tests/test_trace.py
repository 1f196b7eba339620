"""
C{cuckoodist trace}: one analysis' events from several JSON logs and the
dump directory, merged in time order; lines that are no JSON event of it
passed over; and, end to end, the logs of a real daemon run.
"""

import importlib.util
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.commands.trace import TraceOptions, format_event, log_files, run, trace
from cuckoodist.config import parse_config
from cuckoodist.dump import DumpRecord, DumpStore
from cuckoodist.simulators.crits import DEFAULT_API_KEY
from tests import harness

ID = "7d7c5f1e-2f4b-4b8e-9c41-5b0f6a1d2e3c"
#: 2026-12-02T05:00:00Z
T0 = 1_796_187_600.0


def _line(seconds: float, host: str, pid: int, stage: str, event: str, message: str, analysis_id: str = ID, **fields) -> str:
    doc = {"time": T0 + seconds, "level": "info", "namespace": f"cuckoodist.{stage}", "host": host, "pid": pid,
           "message": message, "stage": stage, "queue": f"worker/{stage}", "analysis_id": analysis_id, "event": event}
    doc.update(fields)
    return json.dumps(doc) + "\n"


class TraceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(text)
        return path

    def two_hosts(self) -> tuple[str, str, str]:
        """
        A feed host's log, a parse host's log, and a dump directory, each
        with some lines of other analyses and of no JSON at all.
        """
        feed = self.write("feed.log", "".join([
            "2026-12-02T05:00:00+0000 [cuckoodist.feed_cuckoo#info] a text-format line\n",
            _line(0.0, "feed-1", 100, "feed_cuckoo", "received", "Received a message on worker/feed_cuckoo"),
            _line(0.5, "feed-1", 100, "feed_cuckoo", "received", "another analysis", analysis_id=ID + "x"),
            _line(1.0, "feed-1", 100, "feed_cuckoo", "uploaded", "Uploaded as task 7 to http://cuckoo-a:8090",
                  task_id=7, cuckoo="a", url="http://cuckoo-a:8090"),
            '{"time": "not a time", "analysis_id": "' + ID + '", "event": "received"}\n',
            "[1, 2, 3]\n",
            "\n",
            '{"garbage": ' + json.dumps(ID) + ', unclosed\n',
            _line(9.0, "feed-1", 100, "feed_cuckoo", "http", f"mentions {ID} in its text only",
                  analysis_id="other"),
        ]))
        parse = self.write("parse.log", "".join([
            _line(0.7, "parse-1", 200, "check_results", "polled", "Task 7 is running", task_id=7, status="running"),
            _line(3.0, "parse-1", 200, "check_results", "reported", "Task 7 is reported", task_id=7),
            _line(4.0, "parse-1", 201, "parse_and_submit", "parsed", "Parsed 120 rows from 2.0 MB", task_id=7,
                  rows=120, bytes=2000000),
            _line(5.0, "parse-1", 201, "parse_and_submit", "failed", "parse_and_submit failed: CRITs said no",
                  task_id=7, reason="CRITs said no", final=True),
            # The line being written when the log was read.
            _line(6.0, "parse-1", 201, "parse_and_submit", "retried", "half", attempt=2)[:-12],
        ]))
        dumps = os.path.join(self.directory, "dump")
        store = DumpStore(dumps)
        store.write(DumpRecord(stage="parse_and_submit", queue="worker/parse_and_submit", reason="CRITs said no",
                               message=json.dumps({"crits_data": {"api_key": DEFAULT_API_KEY}}), attempts=4,
                               dumped_at=T0 + 5.5, analysis_id=ID, task_id=7))
        store.write(DumpRecord(stage="feed_cuckoo", queue="q", reason="another", message="{}", dumped_at=T0,
                               analysis_id="other"))
        with open(os.path.join(dumps, "0-junk.json"), "wb") as fp:
            fp.write(b"\xff not json")
        return feed, parse, dumps

    def test_merged_in_time_order(self) -> None:
        """
        The analysis' events from both hosts and the dump directory come
        in time order, and nothing else: other analyses, lines that only
        mention the id, text lines, garbage, an event without a time and
        a half-written last line are passed over (the unparsable ones
        counted).
        """
        feed, parse, dumps = self.two_hosts()
        found = trace(ID, [feed, parse], [dumps])
        self.assertEqual(
            [(round(e["time"] - T0, 3), e.get("host"), e["event"]) for e in found.events],
            [(0.0, "feed-1", "received"), (0.7, "parse-1", "polled"), (1.0, "feed-1", "uploaded"),
             (3.0, "parse-1", "reported"), (4.0, "parse-1", "parsed"), (5.0, "parse-1", "failed"),
             (5.5, None, "dumped")])
        self.assertEqual(found.problems, [])
        # The text line, "[1, 2, 3]", the unclosed object, the half line.
        self.assertEqual(found.not_json, 4)
        dumped = found.events[-1]
        self.assertEqual((dumped["reason"], dumped["attempts"], dumped["task_id"]), ("CRITs said no", 4, 7))
        self.assertNotIn(DEFAULT_API_KEY, json.dumps(found.events))

    def test_lines(self) -> None:
        """
        The printed lines: UTC time, host/pid, stage, event, message.
        """
        feed, parse, dumps = self.two_hosts()
        options = TraceOptions()
        options.parseOptions([ID, "--log", feed, "--log", parse, "--dump-dir", dumps])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(options, out, err), 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 7)
        self.assertEqual(lines[0].split(None, 4), ["2026-12-02T05:00:00.000Z", "feed-1/100", "feed_cuckoo", "received",
                                                   "Received a message on worker/feed_cuckoo"])
        self.assertEqual(lines[2].split(None, 4)[1:], ["feed-1/100", "feed_cuckoo", "uploaded",
                                                       "Uploaded as task 7 to http://cuckoo-a:8090"])
        self.assertEqual(lines[5].split(None, 4)[1:], ["parse-1/201", "parse_and_submit", "failed",
                                                       "parse_and_submit failed: CRITs said no"])
        when, where, stage, event, message = lines[6].split(None, 4)
        self.assertEqual((when, where, stage, event), ("2026-12-02T05:00:05.500Z", "(dump_dir)", "parse_and_submit", "dumped"))
        self.assertIn("after 4 attempt(s): CRITs said no", message)
        self.assertEqual(err.getvalue(), "")
        self.assertNotIn(DEFAULT_API_KEY, out.getvalue())

    def test_json(self) -> None:
        """
        C{--json} prints the events as logged, one object a line, in time
        order, each with the file it came from.
        """
        feed, parse, dumps = self.two_hosts()
        options = TraceOptions()
        options.parseOptions(["--json", "--log", parse, ID, "--log", feed])
        out = io.StringIO()
        self.assertEqual(run(options, out, io.StringIO()), 0)
        events = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([e["event"] for e in events], ["received", "polled", "uploaded", "reported", "parsed", "failed"])
        self.assertEqual(events[4]["rows"], 120)
        self.assertEqual({e["source"] for e in events}, {feed, parse})

    def test_message_on_one_line(self) -> None:
        """
        A message with new lines or control characters stays on its line;
        an event without one shows its fields.
        """
        event = {"time": T0, "host": "h", "pid": 1, "stage": "s", "event": "failed",
                 "message": "first\nsecond\x1b[31m"}
        self.assertTrue(format_event(event).endswith(" failed    first second\\x1b[31m"))
        bare = {"time": T0, "host": "h", "stage": "s", "event": "polled", "status": "running", "analysis_id": ID}
        self.assertTrue(format_event(bare).endswith(" polled    status=running"))

    def test_nothing_found(self) -> None:
        """
        An id no line names: exit status 1, one line saying where it
        looked, and, for a log that is not JSON, how to fix that.
        """
        text = self.write("text.log", "2026-12-02T05:00:00+0000 [x#info] one\n2026-12-02T05:00:01+0000 [x#info] two\n")
        options = TraceOptions()
        options.parseOptions([ID, "--log", text, "--log", os.path.join(self.directory, "missing.log")])
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(options, out, err), 1)
        self.assertEqual(out.getvalue(), "")
        lines = err.getvalue().splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("cannot read", lines[0])
        self.assertIn(f"nothing found for analysis {ID} in {text}", lines[1])
        self.assertEqual(lines[2], "cuckoodist trace: 2 lines were not JSON: set log_format: json")

    def test_rotated_logs(self) -> None:
        """
        A log's rotated siblings are read too, oldest first; other files
        beside it are not.
        """
        log = self.write("cuckoodist.log", _line(30, "h", 1, "overseer", "dumped", "now"))
        self.write("cuckoodist.log.1", _line(20, "h", 1, "check_results", "reported", "then"))
        self.write("cuckoodist.log.10", _line(0, "h", 1, "feed_cuckoo", "received", "first"))
        self.write("cuckoodist.log.2", _line(10, "h", 1, "feed_cuckoo", "uploaded", "before"))
        self.write("cuckoodist.log.bak", _line(5, "h", 1, "feed_cuckoo", "received", "not a rotation"))
        self.assertEqual([os.path.basename(p) for p in log_files(log)],
                         ["cuckoodist.log.10", "cuckoodist.log.2", "cuckoodist.log.1", "cuckoodist.log"])
        config = self.write("config.yaml", json.dumps({"log_file": log, "stages": [
            {"type": "overseer", "dump_dir": os.path.join(self.directory, "dumps")}]}))
        options = TraceOptions()
        options.parseOptions([ID, "-c", config])
        self.assertEqual(options["dump-dirs"], [os.path.join(self.directory, "dumps")])
        self.assertEqual([e["message"] for e in trace(ID, options["logs"], options["dump-dirs"]).events],
                         ["first", "before", "then", "now"])

    def test_usage(self) -> None:
        from twisted.python.usage import UsageError

        for argv, fragment in [([ID], "nothing to read"), (["a\x1bb", "--log", "x"], "printable"),
                                ([], "one ANALYSIS_ID"), (["a", "b", "--log", "x"], "one ANALYSIS_ID")]:
            with self.assertRaises(UsageError) as caught:
                TraceOptions().parseOptions(argv)
            self.assertIn(fragment, str(caught.exception))


_NO_JSON_LOGS = (
    None if importlib.util.find_spec("cuckoodist.logs") is not None
    else "the daemon cannot write JSON logs yet: cuckoodist/logs.py (log_format: json) is missing"
)


class DaemonTraceTests(TestCase):
    """
    The logs of a real daemon run, through every stage.
    """

    timeout = 150
    skip = _NO_JSON_LOGS

    async def test_daemon_logs(self) -> None:
        """
        A daemon with C{log_format: json} logs each stage's part in one
        analysis, and trace puts them in order; an analysis Cuckoo fails
        ends with its failure and its dump.
        """
        peers = harness.Peers(analysis_seconds=0.5, machines=4)
        peers.start()
        self.addCleanup(peers.stop)
        prefix = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        log_file = os.path.abspath(self.mktemp())
        doc = harness.config_doc(peers, prefix, dump_dir, log_format="json", log_file=log_file, log_level="debug",
                                 metrics={"listen": ""})
        config = parse_config(doc)
        harness.start_daemon(self, config)
        good_id, good = harness.request(0, harness.sample(0), with_credentials=True)
        bad_id, bad = harness.request(1, harness.sample(1, fail=True))
        feed = config.stages[0].consumer_queue
        await harness.publish(config.amqp, [(feed, good), (feed, bad)])

        def settled() -> bool:
            analyses = peers.crits.state()["analyses"]
            return (analyses.get(good_id, {}).get("status") == "completed"
                    and any(r.analysis_id == bad_id for _, r, _ in DumpStore(dump_dir) if r is not None))

        await harness.wait_until(settled, 90, "one analysis to complete and one to be dumped")

        config_path = os.path.abspath(self.mktemp())
        with open(config_path, "w", encoding="utf-8") as fp:
            json.dump(doc, fp)
        options = TraceOptions()
        options.parseOptions([good_id, "-c", config_path, "--json"])
        found = trace(good_id, options["logs"], options["dump-dirs"])
        self.assertTrue(found.events, f"no event of {good_id} in {log_file} ({found.not_json} lines not JSON)")
        times = [e["time"] for e in found.events]
        self.assertEqual(times, sorted(times))
        stages = {e.get("stage") for e in found.events}
        self.assertTrue({"feed_cuckoo", "check_results", "parse_and_submit"} <= stages, stages)
        names = [e.get("event") for e in found.events]
        self.assertIn("received", names)
        self.assertIn("uploaded", names)
        self.assertLess(names.index("received"), names.index("uploaded"))
        uploaded = found.events[names.index("uploaded")]
        self.assertIsInstance(uploaded.get("task_id"), int)
        self.assertTrue(all(e.get("host") and e.get("pid") for e in found.events))
        text = json.dumps(found.events)
        self.assertNotIn(DEFAULT_API_KEY, text)

        out, err = io.StringIO(), io.StringIO()
        options = TraceOptions()
        options.parseOptions([bad_id, "-c", config_path])
        self.assertEqual(run(options, out, err), 0, err.getvalue())
        lines = out.getvalue().splitlines()
        self.assertTrue(any(line.split()[3] == "failed" for line in lines), lines)
        self.assertTrue(any(line.split()[1] == "(dump_dir)" and line.split()[3] == "dumped" for line in lines), lines)
        self.assertNotIn(DEFAULT_API_KEY, out.getvalue())
