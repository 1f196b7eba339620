"""
C{cuckoodist submit} as a user runs it, in a child process, against the
real broker and a daemon running every stage on the simulators: files
reach CRITs with the Cuckoo options given, a file too large is refused
while the others go, and the progress display suits where stderr goes.
"""

import hashlib
import json
import os
import pty
import re
import socket
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.config import parse_config
from cuckoodist.simulators.crits import DEFAULT_API_KEY
from tests import harness

#: Seconds one command may take here; a hang fails the test.
LIMIT = 60
#: Bytes the test feed stage accepts; the "large" file has more.
MAX_SAMPLE = 4096


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=harness.REPO, COLUMNS="80")


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from cuckoodist.cli import main; sys.exit(main())", "submit", *args]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(*args), capture_output=True, text=True, timeout=LIMIT, env=_env(), cwd=harness.REPO)


def _run_on_terminal(*args: str) -> tuple[int, str, str]:
    """
    Run submit with stderr on a pseudo-terminal, as on a console.

    @return: exit status, stdout, and what the terminal received.
    """
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(_argv(*args), stdout=subprocess.PIPE, stderr=terminal, env=_env(), cwd=harness.REPO)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            shown += chunk
        out = process.stdout.read()
        process.stdout.close()
        code = process.wait(LIMIT)
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    return code, out.decode(), shown.decode()


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as fp:
        fp.write(data)
    return path


class SubmitTests(TestCase):
    timeout = 150

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=0.5, machines=4)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(self.peers, self.prefix, self.dump_dir, metrics={"listen": ""})
        doc["stages"][0]["max_sample_size"] = MAX_SAMPLE
        self.config = parse_config(doc)
        self.config_path = os.path.abspath(self.mktemp())
        with open(self.config_path, "w", encoding="utf-8") as fp:
            json.dump(doc, fp)  # YAML reads JSON
        self.files = os.path.abspath(self.mktemp())
        os.makedirs(self.files)

    async def test_submit_reaches_crits(self) -> None:
        """
        Three files reach the simulated CRITs, each in the analysis its
        line names, of the object given for it, through Cuckoo tasks with
        the package, options, priority and timeout given; a file over the
        feed stage's max_sample_size is refused with its reason and the
        exit status is 1.
        """
        harness.start_daemon(self, self.config)
        samples = [harness.sample(i) for i in range(3)]
        paths = [_write(self.files, f"sample-{i}.exe", data) for i, data in enumerate(samples)]
        large = _write(self.files, "large.bin", b"MZ" + b"\x00" * MAX_SAMPLE)
        object_ids = [hashlib.md5(data).hexdigest()[:24] for data in samples]
        args = [paths[0], large, *paths[1:], "-c", self.config_path, "--source", "cuckoodist-test",
                "--package", "dll", "--options", "function=DllMain,procmemdump=yes", "--priority", "3",
                "--analysis-timeout", "1"]
        # One --object-id per file, in the files' order.
        for object_id in [object_ids[0], "0" * 24, *object_ids[1:]]:
            args += ["--object-id", object_id]

        result = await deferToThread(_run, *args)

        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[-1], f"done: 3 of 4 file(s) submitted to {self.prefix}/feed_cuckoo, 1 refused")
        self.assertIn(f"refused {large}: {MAX_SAMPLE + 2} bytes, over the {MAX_SAMPLE} bytes allowed by "
                      f"max_sample_size of the feed_cuckoo stage on {self.prefix}/feed_cuckoo", lines)
        submitted = {}
        for line in lines:
            match = re.fullmatch(r"submitted (\S+) (.+)", line)
            if match:
                submitted[match.group(2)] = match.group(1)
        self.assertEqual(sorted(submitted), sorted(paths))
        self.assertEqual(len(set(submitted.values())), 3)
        # Off a terminal, a run this short shows no progress at all.
        self.assertEqual(result.stderr, "")
        self.assertNotIn(DEFAULT_API_KEY, result.stdout + result.stderr)

        crits = self.peers.crits

        def done() -> bool:
            analyses = crits.state()["analyses"]
            return all(analyses.get(a, {}).get("status") == "completed" for a in submitted.values())

        await harness.wait_until(done, 90, "the three analyses to complete in CRITs")
        analyses = crits.state()["analyses"]
        for path, object_id in zip(paths, object_ids):
            analysis = analyses[submitted[path]]
            self.assertEqual((analysis["object_type"], analysis["object_id"]), ("Sample", object_id))
            self.assertTrue(analysis["results"])
        tasks = self.peers.cuckoo.state()["tasks"].values()
        self.assertEqual(sorted(t["filename"] for t in tasks), [f"sample-{i}.exe" for i in range(3)])
        for task in tasks:
            self.assertEqual((task["package"], task["options_string"], task["priority"], task["timeout"]),
                             ("dll", "function=DllMain,procmemdump=yes", 3, 1))
        self.assertEqual(sorted(t["md5"] for t in tasks), sorted(hashlib.md5(d).hexdigest() for d in samples))


class CommandLineTests(SynchronousTestCase):
    """
    What needs no broker: C{--no-crits} checks and builds each request;
    misuse and an absent broker are one line on stderr.
    """

    def setUp(self) -> None:
        self.files = os.path.abspath(self.mktemp())
        os.makedirs(self.files)
        self.paths = [_write(self.files, f"s{i}.exe", harness.sample(i)) for i in range(3)]
        self.empty = _write(self.files, "empty.bin", b"")
        # A broker port nothing listens on: a dry run must not connect.
        self.common = ["--no-crits", "--amqp", "amqp://guest:guest@127.0.0.1:9/", "--queue", "q"]

    def test_terminal(self) -> None:
        """
        With stderr on a terminal: a bar redrawn in place, ending on
        C{done} and a new line; stdout has a line per file.
        """
        code, out, shown = _run_on_terminal(*self.paths, self.empty, *self.common)
        self.assertEqual(code, 1, out + shown)
        lines = out.splitlines()
        self.assertEqual(len([l for l in lines if l.startswith("checked ")]), 3)
        self.assertIn(f"refused {self.empty}: the file is empty", lines)
        self.assertEqual(lines[-1], "done: 3 of 4 file(s) checked, 1 refused; nothing published (--no-crits)")
        self.assertIn("\r\x1b[Kfiles [", shown)
        self.assertRegex(shown, r"\r\x1b\[Kfiles \[#+\] 4/4 \S+/s done\r?\n$")

    def test_no_progress(self) -> None:
        """
        C{--no-progress} leaves stderr empty, even on success.
        """
        result = _run(*self.paths, *self.common, "--no-progress")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(len(result.stdout.splitlines()), 4)
        self.assertEqual(len(re.findall(r"^checked [0-9a-f-]{36} ", result.stdout, re.M)), 3)

    def test_usage(self) -> None:
        """
        Each misuse is one line on stderr and exit status 2.
        """
        for args, fragment in [
            ([*self.paths], "--object-id once per file"),
            ([*self.paths, "--amqp", "amqp://127.0.0.1/", "--queue", "q", "--source", "s",
              "--object-id", "a"], "--object-id once per file (3 file(s), 1 --object-id)"),
            ([self.paths[0], "--queue", "q", "--object-id", "a"], "--source is required"),
            ([self.paths[0], *self.common, "--source", "s"], "takes no --object-id or --source"),
            ([self.paths[0], *self.common, "--priority", "4"], "--priority takes 1, 2 or 3"),
            ([*self.paths[:2], *self.common, "--analysis-id", "x", "--analysis-id", "x"], "must be different"),
            (["--no-crits"], "at least one FILE"),
        ]:
            result = _run(*args)
            self.assertEqual(result.returncode, 2, (args, result))
            self.assertEqual(len(result.stderr.splitlines()), 1, (args, result.stderr))
            self.assertIn(fragment, result.stderr, args)

    def test_unreachable_broker(self) -> None:
        """
        A broker that does not answer: exit status 1 within
        C{--broker-timeout}, one line on stderr, no file claimed.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = _run(self.paths[0], "--amqp", f"amqp://guest:guest@127.0.0.1:{port}/", "--queue", "q",
                      "--object-id", "a", "--source", "s", "--broker-timeout", "2")
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.stdout.splitlines(), ["done: 0 of 1 file(s) submitted to q, 0 refused"])
        [line] = result.stderr.splitlines()
        self.assertIn("the broker did not confirm every request within 2 s; 1 file(s) not confirmed", line)
