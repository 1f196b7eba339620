# -*- test-case-name: tests.test_tap -*-
"""
The composition root: C{twistd cuckoodist -c CONFIG} builds the daemon here.

This is the only module that touches the global reactor.  Everything
below it receives the reactor (for time, TCP and threads) as an argument.
"""

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher, textFileLogObserver
from twisted.python import usage

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import Config, load_config
from cuckoodist.errors import ConfigError
from cuckoodist.http import HTTPClient
from cuckoodist.stages.base import Stage, StageContext
from cuckoodist.stages.check_results import CheckResults
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from cuckoodist.stages.overseer import Overseer
from cuckoodist.stages.parse_and_submit import ParseAndSubmit

__all__ = ["Options", "makeService", "build_daemon", "STAGES"]

STAGES = {
    "feed_cuckoo": FeedCuckoo,
    "check_results": CheckResults,
    "parse_and_submit": ParseAndSubmit,
    "overseer": Overseer,
}


class Options(usage.Options):
    """
    Command line of C{twistd cuckoodist}.
    """

    synopsis = "-c CONFIG"
    optParameters = [
        ["config", "c", "/etc/cuckoodist/cuckoodist.yaml", "Path to the YAML configuration."],
    ]

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class _HTTPService(Service):
    """
    Closes the shared HTTP connection pools when the daemon stops.
    """

    def __init__(self, http: HTTPClient) -> None:
        self.http = http

    def stopService(self) -> Any:
        super().stopService()
        return self.http.close()


class _LogFileService(Service):
    """
    Writes the log to C{log_file} at C{log_level}, beside twistd's own log.
    """

    def __init__(self, path: str, level: str) -> None:
        self._path = path
        self._level = _level(level)
        self._observer = None
        self._file = None

    def startService(self) -> None:
        super().startService()
        self._file = open(self._path, "a", encoding="utf-8")
        self._observer = FilteringLogObserver(
            textFileLogObserver(self._file),
            [LogLevelFilterPredicate(defaultLogLevel=self._level)],
        )
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._file.close()


class _DaemonService(MultiService):
    """
    The daemon's root service.  Stopping it drains the stages (together)
    before anything they drain through is stopped: only then, one at a
    time and in reverse order, the HTTP pools and the AMQP connection.
    A plain L{MultiService} stops every child at once, which closed the
    connection under the draining stages, so no in-flight work could be
    acked on SIGTERM.
    """

    _log = Logger()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        children = list(self)
        stages = [child for child in children if isinstance(child, Stage)]
        rest = [child for child in reversed(children) if not isinstance(child, Stage)]

        async def stop_in_order() -> None:
            await DeferredList([maybeDeferred(stage.stopService) for stage in stages], consumeErrors=True)
            for child in rest:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self._log.failure("Stopping {service} failed", service=child)

        return Deferred.fromCoroutine(stop_in_order())


def _level(name: str) -> LogLevel:
    """
    The twisted.logger level for a C{log_level} setting.
    """
    return LogLevel.levelWithName("warn" if name == "warning" else name)


def build_daemon(config: Config, reactor: Any) -> MultiService:
    """
    Assemble the daemon: one AMQP connection, one HTTP client, and a
    service per configured stage, under one L{MultiService}.

    Children start in order; on stop the stages drain first, then the
    HTTP pools close, then the AMQP connection closes (which makes the
    broker requeue whatever is still unacked).
    """
    root = _DaemonService()
    if config.log_file:
        _LogFileService(config.log_file, config.log_level).setServiceParent(root)
    connection = AMQPConnectionService(reactor, config.amqp)
    connection.setName("amqp")
    connection.setServiceParent(root)
    http = HTTPClient(reactor, config.http_timeout)
    _HTTPService(http).setServiceParent(root)
    level_filter = FilteringLogObserver(globalLogPublisher, [LogLevelFilterPredicate(_level(config.log_level))])
    context = StageContext(reactor=reactor, connection=connection, http=http, config=config, log_observer=level_filter)
    for stage_config in config.stages:
        STAGES[stage_config.type](context, stage_config).setServiceParent(root)
    return root


def makeService(options: Options) -> IService:
    """
    twistd's entry point.
    """
    from twisted.internet import reactor

    return build_daemon(options["parsed"], reactor)
