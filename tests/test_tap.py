"""
The twistd plugin's options and the daemon it builds.
"""

import os
import stat
import sys

import yaml

from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.application.service import IServiceMaker
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from cuckoodist.tap import Options, build_daemon

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "cuckoodist.yaml")


def example_with_dump_dir(path: str, dump_dir: str, **top: str) -> str:
    """
    Write to C{path} a copy of the shipped example whose overseer dumps
    into C{dump_dir} (the example's own /var/lib path is not ours to
    create) and whose top-level keys are replaced by C{top}.

    @return: C{path}.
    """
    with open(EXAMPLE, encoding="utf-8") as fp:
        doc = yaml.safe_load(fp)
    doc["stages"][-1]["dump_dir"] = dump_dir
    doc.update(top)
    with open(path, "w", encoding="utf-8") as fp:
        yaml.safe_dump(doc, fp)
    return path


class OptionsTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """
        twistd finds the plugin by its tapname.
        """
        import twisted.plugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins) if IPlugin.providedBy(p)}
        self.assertIn("cuckoodist", makers)
        self.assertIsInstance(makers["cuckoodist"].options(), Options)

    def test_bad_config_is_one_line(self) -> None:
        """
        A configuration error ends the process (SystemExit, so status 1)
        with one line naming the key, which Python prints to stderr.
        """
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write("stages:\n  - type: overseer\n    dump_dir: /tmp/x\n    max_retries: lots\n")
        options = Options()
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["-c", path])
        message = caught.exception.code
        self.assertIsInstance(message, str)
        self.assertTrue(message.startswith("cuckoodist: Error in configuration at 'stages.0.max_retries': "), message)
        self.assertNotIn("\n", message)

    def test_unknown_option_is_a_usage_error(self) -> None:
        """
        Command-line mistakes stay usage errors, for twistd to show the usage.
        """
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--no-such-option"])

    def test_version(self) -> None:
        """
        C{twistd cuckoodist --version} prints cuckoodist's version, not Twisted's.
        """
        import contextlib
        import io

        from cuckoodist import __version__

        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(out.getvalue(), f"cuckoodist {__version__}\n")

    def test_help_has_usage_text(self) -> None:
        """
        The help names the synopsis, describes the daemon and shows an
        example, not a developer docstring.
        """
        text = str(Options())
        self.assertTrue(text.startswith("-c CONFIG\n"), text)
        self.assertIn("Run the pipeline stages that CONFIG lists", text)
        self.assertIn("  twistd -n --pidfile= cuckoodist -c etc/cuckoodist.yaml\n", text)
        self.assertNotIn("L{", text)

    def test_example_builds(self) -> None:
        """
        The shipped example builds a daemon: the AMQP connection first (so it
        stops last), then the HTTP pools, then one service per stage.
        """
        options = Options()
        options.parseOptions(["-c", example_with_dump_dir(self.mktemp(), self.mktemp())])
        daemon = build_daemon(options["parsed"], MemoryReactorClock())
        names = [service.name for service in daemon]
        self.assertEqual(names[0], "amqp")
        stage_names = [n for n in names if n and ":" in n]
        self.assertEqual(
            [n.split(":")[0] for n in stage_names],
            [s.type for s in options["parsed"].stages],
        )


class OperationsServicesTests(SynchronousTestCase):
    def build(self, environ: dict | None = None, **top: object) -> list:
        from cuckoodist.config import parse_config

        config = parse_config({"stages": [{"type": "overseer", "dump_dir": "/nonexistent"}], **top})
        return [service.name for service in build_daemon(config, MemoryReactorClock(), environ)]

    def test_ops_listener(self) -> None:
        """
        The operations listener is the service C{ops}, unless
        C{metrics.listen} is C{""}.
        """
        self.assertIn("ops", self.build())
        self.assertNotIn("ops", self.build(metrics={"listen": ""}))

    def test_systemd_only_when_asked(self) -> None:
        """
        The systemd notifier exists only when C{$NOTIFY_SOCKET} is set, and
        is the last service (started once the stages are).
        """
        self.assertNotIn("systemd", self.build())
        self.assertNotIn("systemd", self.build({"NOTIFY_SOCKET": ""}))
        self.assertEqual(self.build({"NOTIFY_SOCKET": "/run/systemd/notify"})[-1], "systemd")


class LogLevelTests(SynchronousTestCase):
    def test_stage_lines_follow_log_level(self) -> None:
        """
        With log_level warning, a stage's info lines are dropped and its
        warnings pass.
        """
        from twisted.logger import globalLogPublisher

        from cuckoodist.config import parse_config

        config = parse_config({"log_level": "warning", "stages": [{"type": "overseer", "dump_dir": "/nonexistent"}]})
        daemon = build_daemon(config, MemoryReactorClock())
        [stage] = [s for s in daemon if getattr(s, "kind", None) == "overseer"]
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        stage.log.info("quiet {n}", n=1)
        stage.log.warn("loud {n}", n=2)
        self.assertEqual([e["log_format"] for e in seen], ["loud {n}"])


class PreflightTests(SynchronousTestCase):
    """
    C{twistd cuckoodist -c CONFIG} checks the log file and the dump
    directories before it starts, and stops with one line naming the key.
    These use real paths that fail for root too: a path below a regular
    file can be neither created nor opened by anyone.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.plain_file = os.path.join(self.base, "plain")
        with open(self.plain_file, "w") as fp:
            fp.write("not a directory")

    def refused(self, dump_dir: str, **top: str) -> str:
        """
        Parse options for the example with these paths, and return the
        one-line usage error it must raise.
        """
        config = example_with_dump_dir(self.mktemp(), dump_dir, **top)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["-c", config])
        message = caught.exception.code
        self.assertIsInstance(message, str)
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        prefix = "cuckoodist: "
        self.assertTrue(message.startswith(prefix), message)
        return message[len(prefix):]

    def test_log_file_in_missing_directory(self) -> None:
        """
        A log file whose directory does not exist is named as C{log_file}.
        """
        missing = os.path.join(self.base, "no-such-dir", "cuckoodist.log")
        message = self.refused(
            os.path.join(self.base, "dump"), log_file=missing
        )
        self.assertTrue(message.startswith("Error in configuration at 'log_file': "), message)
        self.assertIn("does not exist", message)

    def test_log_file_under_a_file(self) -> None:
        """
        A log file below a regular file cannot be opened, even by root.
        """
        message = self.refused(
            os.path.join(self.base, "dump"), log_file=os.path.join(self.plain_file, "log")
        )
        self.assertTrue(message.startswith("Error in configuration at 'log_file': "), message)

    def test_log_file_is_a_directory(self) -> None:
        """
        A directory cannot be opened for append.
        """
        message = self.refused(os.path.join(self.base, "dump"), log_file=self.base)
        self.assertEqual(
            message,
            f"Error in configuration at 'log_file': cannot open {self.base!r} "
            "for appending (Is a directory)",
        )

    def test_dump_dir_under_a_file(self) -> None:
        """
        A dump directory that cannot be created is named by its stage index.
        """
        dump_dir = os.path.join(self.plain_file, "dump")
        message = self.refused(dump_dir)
        self.assertEqual(
            message,
            f"Error in configuration at 'stages.3.dump_dir': cannot create the "
            f"directory {dump_dir!r} (Not a directory)",
        )

    def test_dump_dir_is_a_file(self) -> None:
        """
        A regular file where the dump directory should be is refused.
        """
        message = self.refused(self.plain_file)
        self.assertTrue(message.startswith("Error in configuration at 'stages.3.dump_dir': "), message)

    def test_dump_dir_not_writable(self) -> None:
        """
        An existing directory nobody may create files in is refused as not
        writable: /sys refuses new files even to root.
        """
        if not sys.platform.startswith("linux") or not os.path.isdir("/sys"):
            raise SkipTest("needs Linux's /sys")
        message = self.refused("/sys")
        self.assertTrue(
            message.startswith("Error in configuration at 'stages.3.dump_dir': directory '/sys' is not writable ("),
            message,
        )

    def test_dump_dir_read_only_mode(self) -> None:
        """
        A directory of mode 0500 is refused for a user without root's
        override.
        """
        if os.geteuid() == 0:
            raise SkipTest("root writes through mode bits; see test_dump_dir_not_writable")
        dump_dir = os.path.join(self.base, "ro")
        os.mkdir(dump_dir, 0o500)
        self.addCleanup(os.chmod, dump_dir, 0o700)
        self.assertIn("is not writable (Permission denied)", self.refused(dump_dir))

    def test_good_paths(self) -> None:
        """
        A missing dump directory is created with mode 0700, the probe file
        is gone afterwards, and the log file exists and is appendable.
        """
        dump_dir = os.path.join(self.base, "new", "dump")
        log_file = os.path.join(self.base, "cuckoodist.log")
        options = Options()
        options.parseOptions(["-c", example_with_dump_dir(self.mktemp(), dump_dir, log_file=log_file)])
        self.assertEqual(options["parsed"].log_file, log_file)
        self.assertEqual(stat.S_IMODE(os.stat(dump_dir).st_mode), 0o700)
        self.assertEqual(os.listdir(dump_dir), [])
        self.assertTrue(os.path.isfile(log_file))


class LogFilterTests(SynchronousTestCase):
    def test_connection_chatter_left_out(self) -> None:
        """
        The daemon's log filter keeps the stages' lines at the configured
        level and leaves out Twisted's line per new HTTP connection, unless
        it is a warning.
        """
        from twisted.logger import LogLevel, PredicateResult

        from cuckoodist.tap import level_filter

        chatter = "twisted.web.client._HTTP11ClientFactory"
        predicate = level_filter(LogLevel.info)
        self.assertEqual(predicate({"log_namespace": chatter, "log_level": LogLevel.info}), PredicateResult.no)
        self.assertEqual(predicate({"log_namespace": chatter, "log_level": LogLevel.warn}), PredicateResult.maybe)
        self.assertEqual(predicate({"log_namespace": "cuckoodist.overseer", "log_level": LogLevel.info}), PredicateResult.maybe)
        self.assertEqual(level_filter(LogLevel.warn)({"log_namespace": "cuckoodist.overseer", "log_level": LogLevel.info}), PredicateResult.no)
