"""
C{cuckoodist migrate-config}: the Go workers' JSON configurations (the Go
project README's examples, in C{tests/data/go_configs/}) become one
cuckoodist.yaml that the daemon's own checks take, with the same queues,
prefetch counts, URLs and keys, and a comment for what cannot be carried
over; and a fleet migrated from Go JSON runs a sample end to end on the
real broker and the simulators.
"""

import io
import json
import os
import stat
import subprocess
import sys

import yaml
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.commands.migrate_config import MigrateConfigOptions, run
from cuckoodist.config import parse_config
from cuckoodist.simulators.crits import DEFAULT_API_KEY
from tests import harness
from tests.harness import AMQP_URL, REPO

GO_CONFIGS = os.path.join(REPO, "tests", "data", "go_configs")
README_EXAMPLES = ["parse_and_submit.conf.json", "parse_and_submit_dropped.conf.json"]
FLEET = ["feed_cuckoo.conf.json", "check_results.conf.json", *README_EXAMPLES, "overseer.conf.json"]


def migrate(*arguments: str) -> tuple[int, str, str]:
    options = MigrateConfigOptions()
    options.parseOptions(list(arguments))
    out, err = io.StringIO(), io.StringIO()
    code = run(options, out, err)
    return code, out.getvalue(), err.getvalue()


def go(name: str) -> str:
    return os.path.join(GO_CONFIGS, name)


def go_doc(name: str) -> dict:
    with open(go(name), encoding="utf-8") as fp:
        return json.load(fp)


class ReadmeExampleTests(SynchronousTestCase):
    """
    The Go README's two chained parse_and_submit workers.
    """

    def setUp(self) -> None:
        self.code, self.text, self.err = migrate(*map(go, README_EXAMPLES))
        self.doc = yaml.safe_load(self.text)

    def test_daemon_takes_it(self) -> None:
        """
        The output is a configuration C{parse_config} takes, and exit
        status 0.
        """
        self.assertEqual(self.code, 0, self.err)
        parse_config(self.doc)

    def test_same_settings(self) -> None:
        """
        One stage per worker, in order, with the worker's queues, prefetch
        count and parser keys; one shared broker URL and log level.
        """
        config = parse_config(self.doc)
        for stage, name in zip(config.stages, README_EXAMPLES, strict=True):
            source = go_doc(name)
            self.assertEqual(stage.type, "parse_and_submit")
            self.assertEqual(
                (stage.consumer_queue, stage.producer_queue, stage.failed_queue, stage.prefetch_count,
                 stage.push_api_calls_max, stage.cuckoo_cleanup, list(stage.enabled_parsers)),
                (source["ConsumerQueue"], source["ProducerQueue"], source["FailedQueue"], source["PrefetchCount"],
                 source["PushApiCallsMax"], source["CuckooCleanup"], source["EnabledParsers"]))
        self.assertEqual(self.doc["amqp"], go_doc(README_EXAMPLES[0])["Amqp"])
        self.assertEqual(config.amqp.host, "localhost")
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.log_file, "/var/log/parse_and_submit.log")

    def test_comments(self) -> None:
        """
        What does not carry over is said: the second log file, the loop in
        the README's chain, the clean-up a relaying stage does not do, the
        crits section to fill in, the Cuckoos to list.
        """
        self.assertIn("# parse_and_submit_dropped.conf.json had LogFile /var/log/parse_and_submit_dropped.log; "
                      "not carried over: one log file per daemon", self.text)
        self.assertEqual(self.text.count("# messages would loop"), 2)
        self.assertIn("# CuckooCleanup: true with a ProducerQueue", self.text)
        self.assertIn("# crits:\n#   url: https://crits.example.org", self.text)
        self.assertIn("# cuckoo: list every Cuckoo", self.text)

    def test_check_config_passes(self) -> None:
        """
        C{cuckoodist check-config} (the daemon's start-up checks) takes it
        once its log file is one this test may write.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(self.text.replace("/var/log/parse_and_submit.log", path + ".log"))
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from cuckoodist.cli import main; sys.exit(main())",
             "check-config", path], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, f"{path}: OK\n", ""))


class FleetTests(SynchronousTestCase):
    """
    A whole Go fleet, one file per worker.
    """

    def test_fleet(self) -> None:
        code, text, err = migrate(*map(go, FLEET))
        self.assertEqual((code, err), (0, ""))
        config = parse_config(yaml.safe_load(text))
        self.assertEqual([s.type for s in config.stages],
                         ["feed_cuckoo", "check_results", "parse_and_submit", "parse_and_submit", "overseer"])
        feed, check, _, _, overseer = config.stages
        feed_go, check_go, overseer_go = go_doc(FLEET[0]), go_doc(FLEET[1]), go_doc(FLEET[4])
        cuckoo = config.cuckoo[feed.cuckoo]
        self.assertEqual((cuckoo.url, cuckoo.verify_ssl), (feed_go["CuckooURL"], feed_go["VerifySSL"]))
        self.assertEqual(
            (feed.consumer_queue, feed.producer_queue, feed.failed_queue, feed.prefetch_count, feed.max_pending,
             feed.check_free_space),
            (feed_go["ConsumerQueue"], feed_go["ProducerQueue"], feed_go["FailedQueue"], feed_go["PrefetchCount"],
             feed_go["MaxPending"], feed_go["CheckFreeSpace"]))
        self.assertEqual(
            (check.consumer_queue, check.producer_queue, check.prefetch_count, check.wait_between_requests),
            (check_go["ConsumerQueue"], check_go["ProducerQueue"], check_go["PrefetchCount"],
             check_go["WaitBetweenRequests"]))
        self.assertEqual((overseer.consumer_queue, overseer.prefetch_count, overseer.dump_dir),
                         (overseer_go["ConsumerQueue"], overseer_go["PrefetchCount"], overseer_go["DumpDir"]))
        for name in ("check_results", "overseer"):
            self.assertIn(f"# {name}.conf.json had LogFile /var/log/{name}.log; not carried over", text)

    def test_conflicts_and_unknown_keys(self) -> None:
        """
        Two brokers, a key cuckoodist has not, a key a Go file left out
        whose Go zero value differs from cuckoodist's default: each gets a
        comment; the second broker's password is in no comment and no
        stderr line.
        """
        first = dict(go_doc("check_results.conf.json"), Amqp="amqp://alice:first-secret@rabbit1:5672")
        second = dict(go_doc("parse_and_submit.conf.json"), Amqp="amqp://bob:second-secret@rabbit2:5672",
                      ProducerQueue="", Shiny=7)
        del second["CuckooCleanup"]
        paths = []
        for name, doc in (("check_results.conf.json", first), ("parse_and_submit.conf.json", second)):
            path = os.path.abspath(self.mktemp())
            os.makedirs(path)
            paths.append(os.path.join(path, name))
            with open(paths[-1], "w") as fp:
                json.dump(doc, fp)
        code, text, err = migrate(*paths)
        self.assertEqual(code, 0)
        self.assertEqual(yaml.safe_load(text)["amqp"], "amqp://alice:first-secret@rabbit1:5672")
        self.assertIn("# parse_and_submit.conf.json used another broker, amqp://bob:***@rabbit2:5672", text)
        self.assertNotIn("second-secret", text)
        self.assertNotIn("secret", err)
        self.assertIn("another broker", err)
        self.assertIn("# Shiny: no parse_and_submit setting in cuckoodist; not carried over: Shiny: 7", text)
        self.assertIn("# CuckooCleanup is not in the Go file, so the Go worker used false; "
                      "cuckoodist's default cuckoo_cleanup is true", text)

    def test_placeholders_need_editing(self) -> None:
        """
        A Go file still holding its example's placeholders gives a file the
        daemon would refuse: said at its top and on stderr (without the
        value), exit status 1.
        """
        path = os.path.abspath(self.mktemp()) + "-overseer.conf.json"
        with open(path, "w") as fp:
            json.dump({"Amqp": "amqp://USER:PASSWORD@HOST:PORT", "ConsumerQueue": "worker/failed",
                       "PrefetchCount": 10, "DumpDir": "/folder/to/dump/failed/messages"}, fp)
        code, text, err = migrate(path)
        self.assertEqual(code, 1)
        self.assertTrue(text.startswith("# cuckoodist check-config will refuse this file as it is: "
                                        "Error in configuration at 'amqp'"), text)
        self.assertIn("the result needs editing", err)
        self.assertNotIn("PASSWORD", err)

    def test_bad_inputs(self) -> None:
        """
        A file that cannot be read, is not JSON, is not an object, or does
        not tell its type: one line each, no output, exit status 1; naming
        the type as TYPE=FILE settles the last.
        """
        def write(name: str, data: bytes) -> str:
            path = os.path.join(os.path.abspath(self.mktemp()), name)
            os.makedirs(os.path.dirname(path))
            with open(path, "wb") as fp:
                fp.write(data)
            return path

        vague = write("worker.json", b'{"Amqp": "amqp://guest:guest@localhost:5672", "ConsumerQueue": "q/x"}')
        inputs = ["/nonexistent/feed.json", write("a.json", b"\xff\x00 not json"), write("b.json", b"[1, 2]"), vague]
        code, text, err = migrate(*inputs)
        self.assertEqual((code, text), (1, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 4, err)
        for line, path, fragment in zip(lines, inputs, ["cannot read it", "not JSON", "not a JSON object",
                                                        "cannot tell which worker"]):
            self.assertTrue(line.startswith(f"cuckoodist migrate-config: {path}: {fragment}"), line)
        code, text, err = migrate(f"check_results={vague}")
        self.assertEqual((code, err), (0, ""))
        [stage] = parse_config(yaml.safe_load(text)).stages
        self.assertEqual((stage.type, stage.consumer_queue), ("check_results", "q/x"))

    def test_output_file_is_private(self) -> None:
        """
        C{-o} writes the YAML (which holds the broker's password) with mode
        0600, and prints nothing.
        """
        output = os.path.abspath(self.mktemp())
        code, text, err = migrate(*map(go, README_EXAMPLES), "-o", output)
        self.assertEqual((code, text, err), (0, "", ""))
        self.assertEqual(stat.S_IMODE(os.stat(output).st_mode), 0o600)
        with open(output, encoding="utf-8") as fp:
            parse_config(yaml.safe_load(fp))


class MigratedFleetRunsTests(TestCase):
    """
    A Go fleet's files, pointed at the local broker and the simulators,
    migrated and run: a sample goes from the feed queue to CRITs.
    """

    timeout = 180

    async def test_sample_reaches_crits(self) -> None:
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        queues = {kind: f"{p}/{kind}" for kind in ("feed_cuckoo", "check_results", "parse_and_submit", "failed")}
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        common = {"Amqp": AMQP_URL, "FailedQueue": queues["failed"], "VerifySSL": True, "LogFile": "",
                  "LogLevel": "info"}
        workers = {
            "feed_cuckoo": dict(go_doc("feed_cuckoo.conf.json"), **common, CuckooURL=peers.cuckoo_server.url,
                                ConsumerQueue=queues["feed_cuckoo"], ProducerQueue=queues["check_results"],
                                CheckFreeSpace=False),
            "check_results": dict(go_doc("check_results.conf.json"), **common, WaitBetweenRequests=1,
                                  ConsumerQueue=queues["check_results"], ProducerQueue=queues["parse_and_submit"]),
            "parse_and_submit": dict(go_doc("parse_and_submit.conf.json"), **common, ProducerQueue="",
                                     ConsumerQueue=queues["parse_and_submit"], CuckooCleanup=True,
                                     EnabledParsers=["info", "signatures", "behavior", "dropped"]),
            "overseer": dict(go_doc("overseer.conf.json"), Amqp=AMQP_URL, ConsumerQueue=queues["failed"],
                             DumpDir=os.path.join(directory, "dump")),
        }
        paths = []
        for kind, doc in workers.items():
            paths.append(os.path.join(directory, f"{kind}.conf.json"))
            with open(paths[-1], "w") as fp:
                json.dump(doc, fp)
        code, text, err = migrate(*paths)
        self.assertEqual((code, err), (0, ""))
        doc = yaml.safe_load(text)
        # What the comment asks the operator to fill in, and this test's own
        # listener setting (tests run in parallel).
        doc["crits"] = {"url": peers.crits_server.url, "username": "analyst", "api_key": DEFAULT_API_KEY}
        doc["metrics"] = {"listen": ""}
        config = parse_config(doc)
        harness.start_daemon(self, config)
        messages, expected = harness.requests(queues["feed_cuckoo"], 1)
        await harness.publish(config.amqp, messages)

        def done() -> bool:
            analyses = peers.crits.state()["analyses"]
            return all(analyses.get(a, {}).get("status") == "completed" for a in expected)

        await harness.wait_until(done, 120, "the sample to complete in CRITs")
