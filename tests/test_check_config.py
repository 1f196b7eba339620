"""
C{cuckoodist check-config FILE...} as a user runs it, in child processes:
the start-up checks of C{twistd cuckoodist}, one line per file, exit status
0 or 1, never a traceback, whatever the file holds; with C{--connect}, a
login to the real broker.
"""

import os
import socket
import subprocess
import sys

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.harness import AMQP_URL, REPO, prefix

#: Seconds any one command may take here; a hang fails the test.
LIMIT = 60


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, COLUMNS="80")
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=LIMIT, env=env, cwd=REPO)


def check_config(*args: str) -> subprocess.CompletedProcess:
    return _run("-c", "import sys; from cuckoodist.cli import main; sys.exit(main())", "check-config", *args)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CheckConfigTests(SynchronousTestCase):
    def write(self, content: "str | bytes | dict") -> str:
        path = os.path.abspath(self.mktemp())
        if isinstance(content, dict):
            content = yaml.safe_dump(content)
        with open(path, "wb") as fp:
            fp.write(content.encode() if isinstance(content, str) else content)
        return path

    def good(self, **overrides: object) -> dict:
        doc = {
            "amqp": AMQP_URL,
            "log_file": os.path.abspath(self.mktemp()) + ".log",
            "metrics": {"listen": ""},
            "cuckoo": {"sim": {"url": "http://127.0.0.1:8090"}},
            "stages": [
                {"type": "feed_cuckoo", "cuckoo": "sim", "consumer_queue": f"{prefix()}/feed_cuckoo"},
                {"type": "overseer", "consumer_queue": f"{prefix()}/failed",
                 "dump_dir": os.path.abspath(self.mktemp())},
            ],
        }
        doc.update(overrides)
        return doc

    def assertNoTraceback(self, result: subprocess.CompletedProcess) -> None:
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("Traceback", result.stdout)

    def test_good_file(self) -> None:
        """
        A file the daemon takes: C{FILE: OK} on stdout, exit status 0, and
        its dump directory and log file made as the daemon would.
        """
        doc = self.good()
        path = self.write(doc)
        result = check_config(path)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, f"{path}: OK\n", ""))
        self.assertTrue(os.path.isdir(doc["stages"][1]["dump_dir"]))
        self.assertTrue(os.path.isfile(doc["log_file"]))

    def test_the_example(self) -> None:
        """
        The shipped example configuration passes (its relative dump_dir is
        made in a scratch directory, not in the checkout).
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        env = dict(os.environ, PYTHONPATH=REPO)
        example = os.path.join(REPO, "etc", "cuckoodist.yaml")
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from cuckoodist.cli import main; sys.exit(main())",
             "check-config", example], capture_output=True, text=True, timeout=LIMIT, env=env, cwd=cwd)
        self.assertEqual((result.returncode, result.stdout), (0, f"{example}: OK\n"))

    def test_each_kind_of_bad_file(self) -> None:
        """
        Every kind of bad file is one line on stderr naming the file and
        what is wrong, exit status 1, no traceback; the good file among
        them is still said OK.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        blocker = self.write("a file where a directory should be")
        bad_value = self.good()
        bad_value["stages"][0]["prefetch_count"] = 0
        unknown_key = self.good(log_levle="info")
        unknown_cuckoo = self.good()
        unknown_cuckoo["stages"][0]["cuckoo"] = "elsewhere"
        dump_dir_is_a_file = self.good()
        dump_dir_is_a_file["stages"][1]["dump_dir"] = blocker
        log_dir_missing = self.good(log_file="/nonexistent/directory/cuckoodist.log")
        cases = [
            ("/nonexistent/cuckoodist.yaml", "cannot read '/nonexistent/cuckoodist.yaml': No such file or directory"),
            (directory, f"cannot read '{directory}': Is a directory"),
            (self.write(b"\x00\xff\xfe garbage \x80\x81" * 20), "YAML error in"),
            (self.write("stages: [\n"), "YAML error in"),
            (self.write(""), "the configuration is empty"),
            (self.write("stages: []\nstages: []\n"), "duplicate key on line 2"),
            (self.write(bad_value), "Error in configuration at 'stages.0.prefetch_count'"),
            (self.write(unknown_key), "log_level"),
            (self.write(unknown_cuckoo), "Error in configuration at 'stages.0.cuckoo': unknown cuckoo 'elsewhere'"),
            (self.write(dump_dir_is_a_file), "Error in configuration at 'stages.1.dump_dir'"),
            (self.write(log_dir_missing), "Error in configuration at 'log_file'"),
        ]
        good = self.write(self.good())
        result = check_config(*[path for path, _ in cases], good)
        self.assertNoTraceback(result)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, f"{good}: OK\n")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), len(cases), result.stderr)
        for line, (path, fragment) in zip(lines, cases):
            self.assertTrue(line.startswith(f"{path}: "), line)
            self.assertIn(fragment, line)

    def test_same_line_as_the_daemon(self) -> None:
        """
        The error is the very line C{twistd cuckoodist} stops with.
        """
        doc = self.good()
        doc["stages"][0]["max_pending"] = "ten"
        path = self.write(doc)
        daemon = _run("-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                      "cuckoodist", "-c", path)
        checked = check_config(path)
        self.assertEqual(daemon.returncode, 1)
        self.assertEqual(checked.returncode, 1)
        self.assertEqual(daemon.stderr.strip(), "cuckoodist: " + checked.stderr.strip()[len(path) + 2:])

    def test_usage(self) -> None:
        """
        Without a file, a usage error (exit status 2).
        """
        result = check_config()
        self.assertEqual(result.returncode, 2)
        self.assertNoTraceback(result)


class ConnectTests(SynchronousTestCase):
    """
    C{--connect} logs in to the real broker; a broker that cannot be
    reached is one line naming it, without the password.
    """

    def write(self, amqp: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as fp:
            yaml.safe_dump({
                "amqp": amqp, "metrics": {"listen": ""},
                "stages": [{"type": "overseer", "consumer_queue": f"{prefix()}/failed",
                            "dump_dir": os.path.abspath(self.mktemp())}],
            }, fp)
        return path

    def test_reachable(self) -> None:
        path = self.write(AMQP_URL)
        result = check_config("--connect", path)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, f"{path}: OK\n", ""))

    def test_wrong_port(self) -> None:
        port = _closed_port()
        path = self.write(f"amqp://guest:not-the-password@127.0.0.1:{port}/")
        result = check_config("--connect", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr, f"{path}: cannot reach the broker at 127.0.0.1:{port}/: connection refused\n")

    def test_wrong_password(self) -> None:
        """
        The broker's refusal is said, and the password is not.
        """
        path = self.write(AMQP_URL.replace("guest:guest@", "guest:not-the-password@"))
        result = check_config("--connect", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn("authentication refused (403", result.stderr)
        self.assertNotIn("not-the-password", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1)
