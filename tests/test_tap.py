"""
The twistd plugin's options and the daemon it builds.
"""

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.application.service import IServiceMaker
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.tap import Options, build_daemon

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "cuckoodist.yaml")


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
        A configuration error becomes a UsageError of one line naming the key.
        """
        path = self.mktemp()
        with open(path, "w") as fp:
            fp.write("stages:\n  - type: overseer\n    dump_dir: /tmp/x\n    max_retries: lots\n")
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["-c", path])
        message = str(caught.exception)
        self.assertIn("stages.0.max_retries", message)
        self.assertNotIn("\n", message)

    def test_example_builds(self) -> None:
        """
        The shipped example builds a daemon: the AMQP connection first (so it
        stops last), then the HTTP pools, then one service per stage.
        """
        options = Options()
        options.parseOptions(["-c", EXAMPLE])
        daemon = build_daemon(options["parsed"], MemoryReactorClock())
        names = [service.name for service in daemon]
        self.assertEqual(names[0], "amqp")
        stage_names = [n for n in names if n and ":" in n]
        self.assertEqual(
            [n.split(":")[0] for n in stage_names],
            [s.type for s in options["parsed"].stages],
        )


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
