"""
C{cuckoodist status} against the real broker: each stage's queue depth and
consumers, missing queues shown (and left missing), the delay queues that
exist, the dump directory's count and oldest entry, the daemon's readiness
(not answering, then ready with a daemon running), the table and the JSON
document, and one clear line with exit status 1 for a broker that cannot be
reached or a bad configuration.
"""

import io
import json
import os
import random
import socket
import subprocess
import sys
import time

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.queue_depth import queue_depths
from cuckoodist.amqp.topology import declare_delay, declare_queue, delay_name
from cuckoodist.commands.status import StatusOptions, configured_delays, status
from cuckoodist.config import load_config, parse_amqp_url
from tests import harness
from tests.harness import AMQP_URL, REPO, prefix


def _closed_port() -> int:
    """
    A loopback port nothing listens on (bound, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StatusTests(TestCase):
    timeout = 90

    def setUp(self) -> Deferred:
        self.p = prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        # Delays no other test or daemon uses, so that the delay queues
        # this configuration can use are this test's own: the one it
        # declares (the overseer's retry) and those it leaves missing.
        self.retry_delay = random.randint(100_000, 9_999_999) / 1000
        self.wait = random.randint(10_000, 99_999) / 10_000 + 0.00037
        self.cleanup_delay = random.randint(10_000_000, 80_000_000) / 1000 + 0.0001
        self.delay_queue = delay_name(self.retry_delay)
        self.queues: list[str] = []
        self.connection = AMQPConnectionService(reactor, parse_amqp_url(AMQP_URL), retry_policy=lambda n: 0.1)
        self.connection.startService()
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self.client = await self.connection.whenConnected(failAfterFailures=3)
        self.channel = await self.client.open_channel()
        await self.channel.enable_confirms()

    async def _cleanup(self) -> None:
        client = await self.connection.whenConnected()
        channel = await client.open_channel()
        for name in self.queues:
            await channel.queue_delete(queue=name)
        await channel.exchange_delete(exchange=self.delay_queue)
        await channel.channel_close()
        await self.connection.stopService()

    def doc(self, **overrides: object) -> dict:
        queues = {kind: f"{self.p}/{kind}" for kind in ("feed_cuckoo", "check_results", "parse_and_submit", "failed")}
        self.queues += list(queues.values()) + [f"{queues['parse_and_submit']}.cleanup", self.delay_queue]
        doc = {
            "amqp": AMQP_URL,
            "metrics": {"listen": f"tcp:{_closed_port()}:interface=127.0.0.1"},
            "cuckoo": {"sim": {"url": "http://127.0.0.1:1"}},
            "stages": [
                {"type": "feed_cuckoo", "cuckoo": "sim", "consumer_queue": queues["feed_cuckoo"],
                 "producer_queue": queues["check_results"], "failed_queue": queues["failed"]},
                {"type": "check_results", "consumer_queue": queues["check_results"],
                 "producer_queue": queues["parse_and_submit"], "failed_queue": queues["failed"],
                 "wait_between_requests": self.wait},
                {"type": "parse_and_submit", "consumer_queue": queues["parse_and_submit"],
                 "failed_queue": queues["failed"], "cuckoo_cleanup": True, "cleanup_delay": self.cleanup_delay},
                {"type": "overseer", "consumer_queue": queues["failed"], "dump_dir": self.dump_dir,
                 "max_retries": 1, "retry_delay": self.retry_delay},
            ],
        }
        doc.update(overrides)
        return doc

    def write(self, doc: dict) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as fp:
            yaml.safe_dump(doc, fp)
        return path

    async def status(self, path: str, *args: str) -> tuple[int, str, str]:
        options = StatusOptions()
        options.parseOptions(["-c", path, *args])
        out, err = io.StringIO(), io.StringIO()
        code = await status(reactor, options, out, err)
        return code, out.getvalue(), err.getvalue()

    async def prepare(self) -> str:
        """
        Feed queue with 3 messages, check queue with one consumer, the
        parse and failed queues missing; the overseer's delay queue with 2
        messages; 2 dump files (and files that are not dumps).
        """
        path = self.write(self.doc())
        feed, check = f"{self.p}/feed_cuckoo", f"{self.p}/check_results"
        await declare_queue(self.channel, feed)
        await declare_queue(self.channel, check)
        for i in range(3):
            await self.channel.publish(feed, b"request %d" % i)
        consuming = await self.client.open_channel()
        await consuming.basic_consume(queue=check, consumer_tag=f"{self.p}-consumer")
        exchange = await declare_delay(self.channel, self.retry_delay)
        for i in range(2):
            await self.channel.publish(feed, b"later %d" % i, exchange=exchange)
        os.makedirs(self.dump_dir)
        now = int(time.time())
        self.oldest = f"{now - 7200}-overseer-analysis1-0123456789ab.json"
        for name in (self.oldest, f"{now - 60}-parse_and_submit-analysis2-ba9876543210.json",
                     ".tmp-half-written", "notes.txt"):
            with open(os.path.join(self.dump_dir, name), "w") as fp:
                fp.write("{}")
        return path

    async def test_table(self) -> None:
        """
        The table shows each stage's queue with its depth and consumers,
        missing queues as missing, the delay queue that exists, the dump
        directory's count and oldest file, and a listener that does not
        answer; exit status 0.  The missing queues stay missing.
        """
        path = await self.prepare()
        code, out, err = await self.status(path)
        self.assertEqual((code, err), (0, ""))
        rows = {line.split()[2] if line[:1].isdigit() else line.split()[1]: line.split()
                for line in out.splitlines() if self.p in line}
        self.assertEqual(rows[f"{self.p}/feed_cuckoo"][-2:], ["3", "0"])
        self.assertEqual(rows[f"{self.p}/check_results"][-2:], ["0", "1"])
        self.assertEqual(rows[f"{self.p}/parse_and_submit"][-1], "missing")
        self.assertEqual(rows[f"{self.p}/parse_and_submit.cleanup"][-1], "missing")
        self.assertEqual(rows[f"{self.p}/failed"][-1], "missing")
        delay_line = next(line for line in out.splitlines() if line.startswith(self.delay_queue))
        self.assertEqual(delay_line.split()[-2:], ["2", "0"])
        dump_line = next(line for line in out.splitlines() if line.startswith(self.dump_dir))
        self.assertEqual(dump_line.split()[1:3], ["2", self.oldest])
        self.assertIn("(2 h 0 min ago)", dump_line)
        self.assertRegex(out, r"Daemon \(http://127\.0\.0\.1:\d+/readyz\): not answering: connection refused")
        missing = [f"{self.p}/parse_and_submit", f"{self.p}/failed"]
        self.assertEqual(await queue_depths(self.client, missing), dict.fromkeys(missing))

    async def test_json(self) -> None:
        """
        C{--json} prints one document with the same facts.
        """
        path = await self.prepare()
        code, out, err = await self.status(path, "--json")
        self.assertEqual((code, err), (0, ""))
        doc = json.loads(out)
        self.assertEqual(doc["config"], path)
        self.assertEqual(doc["broker"], "127.0.0.1:5672/")
        self.assertEqual([(s["index"], s["type"]) for s in doc["stages"]],
                         [(0, "feed_cuckoo"), (1, "check_results"), (2, "parse_and_submit"), (3, "overseer")])
        self.assertEqual(doc["stages"][0]["queues"], [
            {"role": "consumer", "queue": f"{self.p}/feed_cuckoo", "exists": True, "messages": 3, "consumers": 0}])
        self.assertEqual(doc["stages"][1]["queues"][0]["consumers"], 1)
        self.assertEqual(doc["stages"][2]["queues"], [
            {"role": "consumer", "queue": f"{self.p}/parse_and_submit", "exists": False, "messages": None,
             "consumers": None},
            {"role": "cleanup", "queue": f"{self.p}/parse_and_submit.cleanup", "exists": False, "messages": None,
             "consumers": None},
        ])
        self.assertEqual(doc["delay_queues"], [{
            "queue": self.delay_queue, "delay_seconds": self.retry_delay, "exists": True, "messages": 2,
            "consumers": 0}])
        # check_results' ladder of 16 steps, the overseer's one retry, the
        # clean-up delay; only the retry's queue exists.
        self.assertEqual(len(configured_delays(load_config(path))), 16 + 1 + 1)
        self.assertEqual(doc["missing_delay_queues"], 16 + 1)
        [dump] = doc["dump_dirs"]
        self.assertEqual({k: dump[k] for k in ("stage_index", "path", "state", "count", "error")},
                         {"stage_index": 3, "path": self.dump_dir, "state": "ok", "count": 2, "error": None})
        self.assertEqual(dump["oldest"]["name"], self.oldest)
        self.assertGreaterEqual(dump["oldest"]["age_seconds"], 7200)
        self.assertEqual(doc["readiness"]["state"], "not answering")
        self.assertIsNone(doc["readiness"]["ready"])

    async def test_no_dump_dir_yet(self) -> None:
        """
        A dump directory that does not exist yet means nothing was dumped:
        shown so, and not created.
        """
        path = self.write(self.doc())
        code, out, err = await self.status(path, "--json")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["dump_dirs"][0]["state"], "missing")
        self.assertFalse(os.path.exists(self.dump_dir))

    async def test_ready_daemon(self) -> None:
        """
        With the daemon running, its listener's C{/readyz} says ready, and
        its consumers are counted on their queues.
        """
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        port = _closed_port()
        doc = harness.config_doc(peers, self.p, self.dump_dir,
                                 metrics={"listen": f"tcp:{port}:interface=127.0.0.1"})
        path = self.write(doc)
        harness.start_daemon(self, load_config(path))

        for _ in range(150):
            code, out, _ = await self.status(path, "--json")
            if code == 0 and json.loads(out)["readiness"]["state"] == "ready":
                break
            await deferLater(reactor, 0.2, lambda: None)
        else:
            self.fail(f"the daemon never said it was ready: {out}")
        code, out, err = await self.status(path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"Daemon (http://127.0.0.1:{port}/readyz): ready", out)
        feed_line = next(line for line in out.splitlines() if f"{self.p}/feed_cuckoo" in line)
        self.assertEqual(feed_line.split()[-1], "1")

    async def test_broker_unreachable(self) -> None:
        """
        A wrong broker port ends the command with one line naming the node
        and the reason, and exit status 1; nothing on stdout.
        """
        port = _closed_port()
        path = self.write(self.doc(amqp=f"amqp://guest:secret-pw@127.0.0.1:{port}/"))
        code, out, err = await self.status(path)
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(err, f"cuckoodist status: cannot reach the broker at 127.0.0.1:{port}/: connection refused\n")
        self.assertNotIn("secret-pw", err)

    async def test_bad_config(self) -> None:
        """
        A configuration the daemon would refuse is one line, exit status 1.
        """
        doc = self.doc()
        doc["stages"][0]["prefetch"] = 3
        code, out, err = await self.status(self.write(doc))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("stages.0", err)


class StatusCommandLineTests(TestCase):
    """
    C{cuckoodist status} as a user runs it, in a child process.
    """

    timeout = 90

    def run_status(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=REPO, COLUMNS="80")
        return subprocess.run(
            [sys.executable, "-c", "import sys; from cuckoodist.cli import main; sys.exit(main())", "status", *args],
            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)

    def test_wrong_broker_port(self) -> None:
        """
        The new user's case of the issue: a wrong broker port says what is
        wrong in one line, exit status 1, no traceback.
        """
        port = _closed_port()
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as fp:
            yaml.safe_dump({
                "amqp": f"amqp://guest:guest@127.0.0.1:{port}/", "metrics": {"listen": ""},
                "stages": [{"type": "overseer", "consumer_queue": f"{prefix()}/failed",
                            "dump_dir": os.path.abspath(self.mktemp())}],
            }, fp)
        result = self.run_status("-c", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr,
                         f"cuckoodist status: cannot reach the broker at 127.0.0.1:{port}/: connection refused\n")

    def test_missing_config(self) -> None:
        """
        A configuration file that does not exist: one line, exit status 1.
        """
        result = self.run_status("-c", "/nonexistent/cuckoodist.yaml")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1)
        self.assertIn("cannot read '/nonexistent/cuckoodist.yaml'", result.stderr)
