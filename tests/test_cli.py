"""
The command lines as a user runs them, in child processes: C{cuckoodist}
and its sub-commands, and C{twistd cuckoodist}.  Every refusal of bad input
is one line on stderr and a non-zero exit status, never a traceback, and
every wait on an absent broker is bounded.
"""

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist import __version__

from tests.harness import REPO

#: Seconds any one command may take here; a hang fails the test.
LIMIT = 60


def _closed_port() -> int:
    """
    A loopback port nothing listens on (bound, then released).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, COLUMNS="80")
    return subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT, env=env, cwd=REPO)


def cuckoodist(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", "import sys; from cuckoodist.cli import main; sys.exit(main())", *args])


def twistd(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args])


class Simulators:
    """
    C{cuckoodist simulate} on free ports in a child process, for as long
    as the C{with} block runs; yields the CRITs simulator's base URL.
    """

    def __enter__(self) -> str:
        env = dict(os.environ, PYTHONPATH=REPO)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cuckoodist.cli", "simulate", "--cuckoo-port", "0", "--crits-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for line in self.process.stdout:
            if line.startswith("CRITs simulator: "):
                return line.split()[2].split("/api/")[0]
        raise AssertionError("cuckoodist simulate did not start")

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(LIMIT)
        self.process.stdout.close()


class CommandLineTestCase(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(text)
        return os.path.abspath(path)

    def directory(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def assertOneLineError(self, result: subprocess.CompletedProcess, *fragments: str) -> str:
        """
        The process failed with one line on stderr containing C{fragments}.
        """
        lines = result.stderr.splitlines()
        self.assertNotEqual(result.returncode, 0, result)
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        return lines[0]

    def bad_config(self) -> str:
        return self.write("stages:\n  - type: overseer\n    dump_dir: x\n    max_retries: lots\n")

    def config_with_broker(self, port: int) -> str:
        return self.write(
            f"amqp: amqp://guest:guest@127.0.0.1:{port}/\n"
            "crits: {url: 'http://127.0.0.1:9', username: analyst, api_key: k}\n"
            "cuckoo: {sim: {url: 'http://127.0.0.1:9'}}\n"
            "stages:\n  - {type: feed_cuckoo, cuckoo: sim}\n  - {type: overseer, dump_dir: "
            + os.path.abspath(self.mktemp()) + "}\n")


class VersionAndHelpTests(CommandLineTestCase):
    def test_versions(self) -> None:
        """
        C{cuckoodist --version}, C{cuckoodist COMMAND --version} and
        C{twistd cuckoodist --version} print cuckoodist's version.
        """
        for result in [cuckoodist("--version"), cuckoodist("demo", "--version"),
                       cuckoodist("resubmit", "--version"), twistd("cuckoodist", "--version")]:
            self.assertEqual((result.returncode, result.stdout), (0, f"cuckoodist {__version__}\n"), result)

    def test_help(self) -> None:
        """
        Every command's help has its synopsis, a description and an example,
        and no developer docstring.
        """
        expected = {
            ("demo",): ("demo -c CONFIG [--count N]", "Publish N synthetic samples", "  cuckoodist demo -c "),
            ("resubmit",): ("resubmit DUMP_DIR [--only-stage STAGE]", "Publish the messages the overseer dumped",
                            "  cuckoodist resubmit dump -c etc/cuckoodist.yaml"),
            ("simulate",): ("simulate [options]", "Serve a simulated Cuckoo REST API", "  cuckoodist simulate\n"),
            (): ("cuckoodist [--version] COMMAND", "Tools around the cuckoodist pipeline", "  cuckoodist simulate &"),
        }
        for args, fragments in expected.items():
            result = cuckoodist(*args, "--help")
            self.assertEqual(result.returncode, 0, result)
            for fragment in fragments:
                self.assertIn(fragment, result.stdout)
            self.assertIn("Examples:\n", result.stdout)
            self.assertNotIn("L{", result.stdout)
            self.assertNotIn("C{", result.stdout)
        result = twistd("cuckoodist", "--help")
        self.assertIn("cuckoodist -c CONFIG", result.stdout)
        self.assertIn("  twistd -n --pidfile= cuckoodist -c etc/cuckoodist.yaml\n", result.stdout)

    def test_demo_synopsis_options_are_accepted(self) -> None:
        """
        Every option the demo's synopsis shows is accepted: the refusal is
        about the (missing) file, not the option.
        """
        result = cuckoodist("demo", "--help")
        synopsis = result.stdout.splitlines()[0]
        self.assertNotIn("--crits-url", synopsis)
        missing = os.path.abspath(self.mktemp())
        result = cuckoodist("demo", "-c", missing, "--count", "2", "--timeout", "5", "--broker-timeout", "5",
                            "--run-daemon", "--keep-queues")
        self.assertOneLineError(result, f"cannot read {missing!r}")


class TwistdErrorTests(CommandLineTestCase):
    def test_bad_config(self) -> None:
        """
        C{twistd -n cuckoodist -c BAD.yaml} prints one line naming the key
        and exits 1, with no usage block before it.
        """
        result = twistd("-n", "--pidfile=", "cuckoodist", "-c", self.bad_config())
        line = self.assertOneLineError(result, "Error in configuration at 'stages.0.max_retries'")
        self.assertTrue(line.startswith("cuckoodist: "), line)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")

    def test_missing_file(self) -> None:
        """
        A configuration file that does not exist is one line too.
        """
        missing = os.path.abspath(self.mktemp())
        result = twistd("-n", "--pidfile=", "cuckoodist", "-c", missing)
        self.assertOneLineError(result, f"cannot read {missing!r}")
        self.assertEqual(result.stdout, "")

    def test_unwritable_dump_dir(self) -> None:
        """
        A dump directory below a regular file (refused even to root) is one
        line naming the key.
        """
        plain = self.write("x")
        config = self.write(f"stages:\n  - {{type: overseer, dump_dir: '{plain}/dump'}}\n")
        result = twistd("-n", "--pidfile=", "cuckoodist", "-c", config)
        self.assertOneLineError(result, "Error in configuration at 'stages.0.dump_dir'")


class SubCommandErrorTests(CommandLineTestCase):
    def test_missing_file(self) -> None:
        """
        Each sub-command names the missing file or directory in one line.
        """
        missing = os.path.abspath(self.mktemp())
        self.assertOneLineError(cuckoodist("demo", "-c", missing), f"cannot read {missing!r}")
        self.assertOneLineError(cuckoodist("resubmit", missing), f"{missing} is not a directory")
        dumps = self.directory()
        self.assertOneLineError(cuckoodist("resubmit", dumps, "-c", missing), f"cannot read {missing!r}")

    def test_bad_config(self) -> None:
        """
        Each sub-command that reads a configuration names the bad key.
        """
        bad = self.bad_config()
        self.assertOneLineError(cuckoodist("demo", "-c", bad), "stages.0.max_retries")
        self.assertOneLineError(cuckoodist("resubmit", self.directory(), "-c", bad), "stages.0.max_retries")
        self.assertOneLineError(cuckoodist("demo", "-c", self.write("stages: [{type: overseer, dump_dir: x}]\n")),
                                "needs a feed_cuckoo stage and a crits section")

    def test_bad_values(self) -> None:
        """
        Bad option values and unknown commands are one line each.
        """
        self.assertOneLineError(cuckoodist("simulate", "--cuckoo-port", "99999"), "not a TCP port")
        self.assertOneLineError(cuckoodist("simulate", "--fail-rate", "2"), "--fail-rate")
        self.assertOneLineError(cuckoodist("demo", "-c", "x", "--count", "0"), "--count")
        self.assertOneLineError(cuckoodist("demo", "-c", "x", "--timeout", "nan"), "--timeout")
        self.assertOneLineError(cuckoodist("no-such-command"), "no-such-command")
        self.assertOneLineError(cuckoodist(), "a command is required")

    def test_port_in_use(self) -> None:
        """
        C{simulate} on a port that is taken says which, in one line.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            result = cuckoodist("simulate", "--cuckoo-port", str(port), "--crits-port", "0")
        self.assertOneLineError(result, f"127.0.0.1:{port}", "Cuckoo simulator")

    def test_unreachable_crits(self) -> None:
        """
        C{demo} against a CRITs that does not answer says so before it
        publishes anything.
        """
        result = cuckoodist("demo", "-c", self.config_with_broker(_closed_port()))
        self.assertOneLineError(result, "cannot reach the CRITs simulator at http://127.0.0.1:9/_sim/state")

    def test_unreachable_broker(self) -> None:
        """
        C{resubmit} and C{demo} give up on a closed broker port within their
        broker timeout, in one line naming the broker.
        """
        port = _closed_port()
        dumps = self.directory()
        with open(os.path.join(dumps, "1.json"), "w") as fp:
            fp.write('{"version": 1, "stage": "feed_cuckoo", "queue": "q", "reason": "r", "message": "{}"}')
        result = cuckoodist("resubmit", dumps, "--amqp", f"amqp://guest:guest@127.0.0.1:{port}/", "--timeout", "2")
        self.assertOneLineError(result, "did not confirm every message within 2 s")
        self.assertTrue(os.path.exists(os.path.join(dumps, "1.json")))

        with Simulators() as crits_url:
            with open(self.config_with_broker(port), encoding="utf-8") as fp:
                config = self.write(fp.read().replace("http://127.0.0.1:9", crits_url))
            result = cuckoodist("demo", "-c", config, "--broker-timeout", "2")
        self.assertOneLineError(result, f"the broker at 127.0.0.1:{port} did not take the samples within 2 s",
                                "(connection refused)")
