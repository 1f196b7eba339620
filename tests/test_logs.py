"""
The daemon's logs (L{cuckoodist.logs}): secrets redacted from every line,
the JSON lines that C{cuckoodist trace} reads, the text lines as they
always were, and a real daemon's logs end to end.
"""

import io
import json
import os
import signal
import sys

from twisted.application.service import Application, IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.config import parse_config
from cuckoodist.dump import DumpStore
from cuckoodist.logs import (
    REDACTED,
    JSONLinesObserver,
    Redactor,
    daemon_observer,
    json_line,
    level_filter,
    text_observer,
    twistd_observer,
)
from cuckoodist.sample_context import Sample, bound
from cuckoodist.simulators.crits import CritsSimulator
from cuckoodist.simulators.server import SimulatorServer
from tests import harness

API_KEY = "c0ffee0123456789abcdef0123456789abcdef99"
MESSAGE_KEY = "feedface99999999aaaaaaaabbbbbbbbcccccccc"
TOKEN = "cuckoo-token-Zq8Xw2Lp"
AMQP_PASSWORD = "s3cret-Amqp"

#: The events a per-sample line may name (the contract with trace).
EVENTS = {
    "received", "uploaded", "polled", "reported", "parsed", "posted", "finished",
    "failed", "retried", "dumped", "deleted", "http", "forwarded",
}


def _config():
    return parse_config({
        "amqp": [f"amqp://cuckoodist:{AMQP_PASSWORD}@rabbit1:5672/v", f"amqp://cuckoodist:{AMQP_PASSWORD}@rabbit2:5672/v"],
        "crits": {"url": "http://crits.example", "username": "analyst", "api_key": API_KEY},
        "cuckoo": {"a": {"url": "http://a.example:8090", "token": TOKEN}, "b": {"url": "http://b.example:8090"}},
        "stages": [{"type": "overseer", "dump_dir": "/nonexistent"}],
    })


class RedactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.redactor = Redactor.from_config(_config())

    def assertClean(self, text: str, *secrets: str) -> str:
        clean = self.redactor.redact(text)
        for secret in secrets:
            self.assertNotIn(secret, clean)
        self.assertIn(REDACTED, clean)
        return clean

    def test_configured_secrets(self) -> None:
        """
        The CRITs API key, every Cuckoo token and the AMQP password are
        replaced wherever they appear, also percent-encoded.
        """
        for secret in (API_KEY, TOKEN, AMQP_PASSWORD):
            self.assertEqual(self.redactor.redact(f"x {secret} y"), f"x {REDACTED} y")
        self.assertClean("password=s3cret%2DAmqp", AMQP_PASSWORD)
        self.assertEqual(self.redactor.redact("nothing secret here"), "nothing secret here")
        self.assertEqual(self.redactor.redact(""), "")

    def test_api_key_in_url_query(self) -> None:
        """
        A CRITs key a message brings, in a URL's query, is redacted and the
        rest of the URL kept.
        """
        clean = self.assertClean(
            f"GET https://crits.example/api/v1/samples/?c-md5=abc&username=u&api_key={MESSAGE_KEY}&file=1", MESSAGE_KEY
        )
        self.assertIn("c-md5=abc&username=u&api_key=***&file=1", clean)

    def test_api_key_in_json(self) -> None:
        """
        JSON (and JSON quoted inside JSON, and Python reprs) carrying an
        C{api_key} lose its value.
        """
        self.assertEqual(
            self.redactor.redact(json.dumps({"crits_data": {"api_key": MESSAGE_KEY, "username": "u"}})),
            '{"crits_data": {"api_key": "***", "username": "u"}}',
        )
        nested = json.dumps({"Msg": json.dumps({"crits_data": {"api_key": MESSAGE_KEY}})})
        self.assertClean(nested, MESSAGE_KEY)
        self.assertClean(repr({"api_key": MESSAGE_KEY}), MESSAGE_KEY)

    def test_headers(self) -> None:
        """
        C{Authorization: ApiKey user:KEY} and C{Bearer TOKEN} are redacted
        whatever the token.
        """
        self.assertEqual(self.redactor.redact(f"Authorization: ApiKey analyst:{MESSAGE_KEY}"), "Authorization: ApiKey analyst:***")
        self.assertEqual(self.redactor.redact("Authorization: Bearer other.token-1"), "Authorization: Bearer ***")
        self.assertEqual(self.redactor.redact("{'Authorization': 'bearer abc'}"), "{'Authorization': 'bearer ***'}")

    def test_url_passwords(self) -> None:
        """
        The password of any C{amqp(s)://user:pass@} URL goes, configured
        or not, and so does a user name that is the password (as in
        C{guest:guest}).
        """
        self.assertEqual(self.redactor.redact("amqps://bob:hunter2@broker:5671/v"), "amqps://bob:***@broker:5671/v")
        guest = Redactor(["guest"])
        self.assertEqual(guest.redact("amqp://guest:guest@127.0.0.1:5672/"), "amqp://***:***@127.0.0.1:5672/")

    def test_short_secrets_ignored(self) -> None:
        """
        A secret too short to search for does not garble every line.
        """
        self.assertEqual(Redactor(["ab", ""]).redact("abc ab"), "abc ab")

    def test_scrub_fields_and_message(self) -> None:
        """
        L{Redactor.scrub} returns a new event: message and string fields
        scrubbed, other values and Twisted's keys kept, the original left
        alone.
        """
        event = {
            "log_format": "posting to {url} as {who}", "url": f"http://c/?api_key={MESSAGE_KEY}", "who": "analyst",
            "n": 3, "log_level": LogLevel.info, "log_time": 12.5, "log_namespace": "x", "log_logger": object(),
        }
        original = dict(event)
        scrubbed = self.redactor.scrub(event)
        self.assertEqual(event, original)
        self.assertEqual(scrubbed["log_text"], "posting to http://c/?api_key=*** as analyst")
        self.assertEqual((scrubbed["url"], scrubbed["who"], scrubbed["n"]), ("http://c/?api_key=***", "analyst", 3))
        self.assertEqual((scrubbed["log_time"], scrubbed["log_level"]), (12.5, LogLevel.info))
        self.assertNotIn("log_logger", scrubbed)

    def test_secret_split_across_fields(self) -> None:
        """
        A secret whose halves come in two fields, harmless apart, is
        redacted from the message, and the halves are left out of the
        event; the sample's identifiers stay.
        """
        half = len(API_KEY) // 2
        event = {"log_format": "key {a}{b}", "a": API_KEY[:half], "b": API_KEY[half:], "analysis_id": "A", "other": "kept"}
        scrubbed = self.redactor.scrub(event)
        self.assertEqual(scrubbed["log_text"], "key ***")
        self.assertNotIn("a", scrubbed)
        self.assertNotIn("b", scrubbed)
        self.assertEqual((scrubbed["analysis_id"], scrubbed["other"]), ("A", "kept"))
        line = json_line(scrubbed, "h")
        self.assertNotIn(API_KEY[:half], line)
        self.assertNotIn(API_KEY[half:], line)

    def test_failure_traceback(self) -> None:
        """
        A failure whose exception names a secret comes out as a scrubbed
        traceback, in the text and JSON lines alike.
        """
        try:
            raise ValueError(f"refused Authorization: Bearer {TOKEN} with key {MESSAGE_KEY}; api_key={MESSAGE_KEY}")
        except ValueError:
            failure = Failure()
        event = {"log_format": "Bug", "log_failure": failure, "log_level": LogLevel.critical, "log_time": 1.0}
        scrubbed = self.redactor.scrub(event)
        self.assertNotIn("log_failure", scrubbed)
        self.assertIn("ValueError", scrubbed["log_traceback"])
        out = io.StringIO()
        text_observer(out)(scrubbed)
        JSONLinesObserver(out, "h")(scrubbed)
        for secret in (TOKEN,):
            self.assertNotIn(secret, out.getvalue())
        text, line = out.getvalue().split("\n\t", 1)[0], out.getvalue().splitlines()[-1]
        self.assertTrue(text.endswith("Bug"), text)
        self.assertIn("ValueError", json.loads(line)["traceback"])
        # A message-borne key only in the traceback is caught by its pattern.
        self.assertNotIn(f"api_key={MESSAGE_KEY}", out.getvalue())


class JSONLineTests(SynchronousTestCase):
    def _lines(self, *events: dict) -> list[dict]:
        out = io.StringIO()
        observer = JSONLinesObserver(out, host="host-1")
        for event in events:
            observer(event)
        text = out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_contract(self) -> None:
        """
        One object a line: time, level, namespace, host, pid, message, the
        sample's identifiers and the event's plain fields; unknown values
        (None, or an empty identifier) left out.
        """
        (line,) = self._lines({
            "log_format": "Submitted as task {task_id} on {url}", "log_level": LogLevel.info, "log_time": 1700000000.25,
            "log_namespace": "cuckoodist.feed_cuckoo", "stage": "feed_cuckoo", "queue": "worker/feed_cuckoo",
            "analysis_id": "A1", "task_id": 12, "event": "uploaded", "url": "http://c", "cuckoo": "sim",
            "bytes": 100, "final": False, "ratio": 0.5, "missing": None, "how": "",
        })
        self.assertEqual(line, {
            "time": 1700000000.25, "level": "info", "namespace": "cuckoodist.feed_cuckoo", "host": "host-1",
            "pid": os.getpid(), "message": "Submitted as task 12 on http://c", "stage": "feed_cuckoo",
            "queue": "worker/feed_cuckoo", "analysis_id": "A1", "task_id": 12, "event": "uploaded",
            "url": "http://c", "cuckoo": "sim", "bytes": 100, "final": False, "ratio": 0.5, "how": "",
        })
        self.assertEqual(list(line)[:6], ["time", "level", "namespace", "host", "pid", "message"])

    def test_levels(self) -> None:
        """
        Levels are named as Twisted names them.
        """
        lines = self._lines(*({"log_format": "x", "log_level": level, "log_time": 0.0} for level in LogLevel.iterconstants()))
        self.assertEqual([line["level"] for line in lines], ["debug", "info", "warn", "error", "critical"])

    def test_unserialisable_values(self) -> None:
        """
        Values that are not plain JSON (objects, containers, NaN, a
        non-integer task id) are left out rather than crashing the
        observer or writing invalid JSON; the message still shows them.
        """
        (line,) = self._lines({
            "log_format": "stopping {service}", "service": object(), "nan": float("nan"), "inf": float("inf"),
            "items": [1, 2], "mapping": {"a": 1}, "task_id": "12", "event": None, "analysis_id": 5,
            "log_level": LogLevel.warn, "log_time": 3.0, "time": "overwrites nothing", "message": "nor this",
        })
        self.assertIn("stopping <object object", line["message"])
        for key in ("service", "nan", "inf", "items", "mapping", "task_id", "event", "analysis_id"):
            self.assertNotIn(key, line)
        self.assertEqual(line["time"], 3.0)

    def test_unformattable_and_empty(self) -> None:
        """
        An event whose format fails still makes a line; one with nothing
        to say makes none; control characters and non-ASCII text stay on
        their one line.
        """
        lines = self._lines(
            {"log_format": "{missing}", "log_time": 1.0},
            {"log_time": 2.0},
            {"log_format": "a\nb\u2028\u00e9\ud800", "log_time": 3.0},
        )
        self.assertEqual(len(lines), 2)
        self.assertIn("Unable to format event", lines[0]["message"])
        self.assertEqual(lines[1]["message"], "a\nb\u2028\u00e9\ud800")

    def test_legacy_event(self) -> None:
        """
        Events from twisted.python.log (Twisted's own modules) come out
        too.
        """
        from twisted.python import log as legacy

        out = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(out, "h"))
        legacy_observer = legacy.LogPublisher(publisher, publisher)
        legacy_observer.msg("Starting factory", system="-")
        (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
        self.assertEqual(line["message"], "Starting factory")


class ChainTests(SynchronousTestCase):
    def test_filter_fields_redaction(self) -> None:
        """
        L{daemon_observer}: events below the level are dropped, Twisted's
        connection chatter is quieted, a line emitted while a sample is
        current carries its identifiers, and what comes out is redacted.
        """
        out = io.StringIO()
        observer = daemon_observer(JSONLinesObserver(out, "h"), Redactor([API_KEY]), level_filter(LogLevel.info))
        log = Logger(namespace="cuckoodist.parse_and_submit", observer=observer)
        chatter = Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=observer)
        with bound(Sample("parse_and_submit", "q", analysis_id="A9", task_id=4)):
            log.debug("dropped")
            chatter.info("Starting factory")
            log.info("posting with {key}", key=API_KEY, event="posted", posted="results")
        (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
        self.assertEqual(
            line, dict(line, message="posting with ***", key="***", stage="parse_and_submit", queue="q",
                       analysis_id="A9", task_id=4, event="posted", posted="results"),
        )

    def test_text_unchanged(self) -> None:
        """
        The text format writes what Twisted's text observer always wrote,
        tracebacks included, for lines without secrets.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        events = [
            {"log_format": "Task {task} is {status}", "task": 3, "status": "reported", "log_level": LogLevel.info,
             "log_time": 1700000000.0, "log_namespace": "cuckoodist.check_results"},
            {"log_format": "Bug: {what}", "what": "x", "log_failure": failure, "log_level": LogLevel.critical,
             "log_time": 1700000001.0, "log_namespace": "n", "log_system": "sys"},
        ]
        ours, theirs = io.StringIO(), io.StringIO()
        observer = daemon_observer(text_observer(ours), Redactor([API_KEY]), level_filter(LogLevel.debug))
        for event in events:
            observer(dict(event))
            textFileLogObserver(theirs)(dict(event))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("ZeroDivisionError", ours.getvalue())


class TwistdTests(SynchronousTestCase):
    def test_root_sets_application_observer(self) -> None:
        """
        What L{cuckoodist.tap.makeService} returns under twistd sets the
        application's log observer, the one twistd then logs to, unless
        one is set already; the daemon is its child.
        """
        from twisted.application.service import MultiService

        from cuckoodist.tap import _TwistdRoot

        observer = daemon_observer(JSONLinesObserver(io.StringIO(), "h"), Redactor(), level_filter(LogLevel.info))
        daemon = MultiService()
        application = Application("cuckoodist")
        _TwistdRoot(daemon, observer).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertIs(list(list(IService(application))[0])[0], daemon)
        other = Application("cuckoodist")
        mine = object()
        other.setComponent(ILogObserver, mine)
        _TwistdRoot(MultiService(), observer).setServiceParent(other)
        self.assertIs(other.getComponent(ILogObserver), mine)

    def test_twistd_log_file(self) -> None:
        """
        With C{-l FILE}, twistd's log is that file, in C{log_format}, and
        redacted.
        """
        path = self.mktemp()
        config = parse_config({
            "log_format": "json", "crits": {"url": "http://c", "username": "u", "api_key": API_KEY},
            "stages": [{"type": "overseer", "dump_dir": "/nonexistent"}],
        })
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        observer = twistd_observer(config, {"logfile": path, "nodaemon": True}, reactor, LogLevel.info)
        Logger(namespace="x", observer=observer).info("key {k}", k=API_KEY)
        Logger(namespace="x", observer=observer).debug("left out")
        with open(path) as fp:
            (line,) = [json.loads(text) for text in fp]
        self.assertEqual((line["message"], line["k"]), ("key ***", "***"))

    def test_stdout_under_nodaemon(self) -> None:
        """
        Under C{-n} without C{-l}, as under systemd, twistd's log is
        stdout; C{-l -} without C{-n} is refused as twistd refuses it.
        """
        from cuckoodist.logs import _twistd_destination

        self.assertIs(_twistd_destination({"nodaemon": True, "logfile": None}, reactor), sys.stdout)
        self.assertIs(_twistd_destination({"nodaemon": True, "logfile": "-"}, reactor), sys.stdout)
        self.assertRaises(SystemExit, _twistd_destination, {"nodaemon": False, "logfile": "-"}, reactor)


class _Exit(ProcessProtocol):
    def __init__(self) -> None:
        self.ended = Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class DaemonLogTests(TestCase):
    """
    A twistd daemon with C{log_format: json} at debug, a Cuckoo that wants
    its token, a configured CRITs key and requests with keys of their own,
    one analysis Cuckoo fails and one request naming a CRITs with a key in
    its URL.
    """

    timeout = 150

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=0.3, machines=8, token=TOKEN)
        # A CRITs that knows the configured user and the requests' own.
        self.peers.crits = CritsSimulator(reactor, users={"analyst": API_KEY, "sender": MESSAGE_KEY})
        self.peers.crits_server = SimulatorServer(reactor, self.peers.crits.resource)
        self.peers.start()
        self.addCleanup(self.peers.stop)

    def _request(self, i: int, fail: bool = False, own_key: bool = True, crits_url: str = "") -> tuple[str, bytes]:
        analysis_id, body = harness.request(i, harness.sample(i, fail=fail))
        doc = json.loads(body)
        if own_key:
            doc["crits_data"].update(username="sender", api_key=MESSAGE_KEY)
        if crits_url:
            doc["crits_data"]["crits_url"] = crits_url
        return analysis_id, json.dumps(doc).encode()

    async def test_json_logs(self) -> None:
        """
        Every line of both logs (C{log_file} and twistd's C{-l}) parses;
        every per-sample line names its analysis and stage (and its task
        once uploaded); one sample's events go from received to finished;
        http lines carry their duration; and no line holds the CRITs key,
        the requests' key, the Cuckoo token or the AMQP password.
        """
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        log_file = os.path.abspath(self.mktemp() + ".json.log")
        twistd_log = os.path.abspath(self.mktemp() + ".twistd.log")
        doc = harness.config_doc(self.peers, p, dump_dir, log_format="json", log_level="debug", log_file=log_file)
        doc["crits"]["api_key"] = API_KEY
        doc["cuckoo"]["sim"]["token"] = TOKEN
        config = harness.parse_config(doc)
        queues = sorted({q for s in config.stages for q in (s.consumer_queue, getattr(s, "producer_queue", ""), getattr(s, "failed_queue", "")) if q})
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(config.amqp, queues)))
        path = os.path.abspath(self.mktemp() + ".yaml")
        with open(path, "w") as fp:
            json.dump(doc, fp)

        exit_watch = _Exit()
        command = harness.twistd_command(path, twistd_log)
        process = reactor.spawnProcess(
            exit_watch, command[0], command, env={**os.environ, "PYTHONPATH": harness.REPO}, path=harness.REPO
        )

        def stop() -> Deferred:
            if process.pid is not None:
                process.signalProcess(signal.SIGTERM)
            return exit_watch.ended

        self.addCleanup(stop)

        good = dict(self._request(i, own_key=i % 2 == 0) for i in range(3))
        failing_id, failing = self._request(10, fail=True)
        foreign_id, foreign = self._request(11, crits_url=f"http://elsewhere.example/?api_key={MESSAGE_KEY}")
        feed = config.stages[0].consumer_queue
        await harness.publish(config.amqp, [(feed, body) for body in [*good.values(), failing, foreign]])

        crits = self.peers.crits

        def settled() -> bool:
            if exit_watch.ended.called:
                raise AssertionError(f"the daemon exited early; see {twistd_log}")
            analyses = crits.state()["analyses"]
            done = all(analyses.get(a, {}).get("status") == "completed" for a in good)
            return done and analyses.get(failing_id, {}).get("status") == "error" and len(list(DumpStore(dump_dir))) == 2

        await harness.wait_until(settled, 90, "every analysis to end in CRITs")
        # The Cuckoo tasks are deleted cleanup_delay later: wait for those
        # lines too, then stop the daemon so that both logs are complete.
        wanted_md5 = {json.loads(body)["crits_data"]["md5"] for body in good.values()}
        await harness.wait_until(
            lambda: all(t["deleted"] for t in self.peers.cuckoo.state()["tasks"].values() if t["md5"] in wanted_md5),
            30, "the finished tasks to be deleted",
        )
        # twistd ends by the signal that stopped it: no exit status to check.
        process.signalProcess(signal.SIGTERM)
        await exit_watch.ended

        secrets = {"CRITs key": API_KEY, "requests' key": MESSAGE_KEY, "Cuckoo token": TOKEN, "AMQP password": config.amqp.password}
        for log_path in (log_file, twistd_log):
            with open(log_path, "rb") as fp:
                raw = fp.read()
            for name, secret in secrets.items():
                self.assertNotIn(secret.encode(), raw, f"{name} in {log_path}")
            lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
            self._check_lines(lines, good, failing_id, foreign_id)

    def _check_lines(self, lines: list[dict], good: dict, failing_id: str, foreign_id: str) -> None:
        self.assertTrue(lines)
        for line in lines:
            self.assertIsInstance(line["time"], float)
            self.assertIn(line["level"], {"debug", "info", "warn", "error", "critical"})
            self.assertIsInstance(line["pid"], int)
            self.assertIsInstance(line["message"], str)
            self.assertIsInstance(line["host"], str)
            self.assertNotIn(None, line.values())
        per_sample = [line for line in lines if line.get("event") in EVENTS - {"http"}]
        for line in per_sample:
            self.assertIn("stage", line, line)
            if line["event"] != "dumped" or line.get("analysis_id"):
                self.assertIn("analysis_id", line, line)
            if line["stage"] in ("check_results", "parse_and_submit") or line["event"] in ("uploaded", "polled", "reported", "parsed"):
                self.assertIsInstance(line.get("task_id"), int, line)
        self.assertTrue({line.get("event") for line in lines} >= {"received", "uploaded", "polled", "reported", "parsed",
                                                              "posted", "finished", "failed", "dumped", "deleted", "http"})
        for analysis_id in good:
            events = [line for line in lines if line.get("analysis_id") == analysis_id]
            names = [line["event"] for line in events if "event" in line]
            self.assertTrue({"received", "uploaded", "reported", "parsed", "posted", "finished"} <= set(names), names)
            self.assertLess(names.index("uploaded"), names.index("finished"))
            (uploaded,) = [line for line in events if line.get("event") == "uploaded"]
            self.assertEqual((uploaded["cuckoo"], uploaded["url"]), ("sim", self.peers.cuckoo_server.url.rstrip("/")))
            (parsed,) = [line for line in events if line.get("event") == "parsed"]
            self.assertGreater(parsed["rows"], 0)
            self.assertGreater(parsed["bytes"], 0)
            self.assertEqual(len({line["task_id"] for line in events if "task_id" in line}), 1)
        failed = [line for line in lines if line.get("analysis_id") == failing_id and line.get("event") == "failed"]
        self.assertTrue(failed)
        self.assertIn("failed_analysis", failed[-1]["reason"])
        self.assertIs(failed[-1]["final"], True)
        foreign = [line for line in lines if line.get("analysis_id") == foreign_id and line.get("event") == "failed"]
        self.assertIn("api_key=***", foreign[0]["reason"])
        http = [line for line in lines if line.get("event") == "http"]
        self.assertTrue(http)
        for line in http:
            self.assertIsInstance(line["duration_ms"], (int, float))
        self.assertTrue(any(line.get("analysis_id") for line in http))
