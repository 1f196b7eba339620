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
from cuckoodist.metrics import Metrics
from cuckoodist.preflight import preflight
from cuckoodist.registry import STAGES
from cuckoodist.stages.base import Stage, StageContext

__all__ = ["Options", "makeService", "build_daemon"]


class Options(usage.Options):
    """
    Command line of C{twistd cuckoodist}.

    A configuration that cannot be used ends the start with one line on
    stderr and exit status 1: twistd prints its whole usage before a
    L{usage.UsageError}, which buries the one line that matters, so
    L{postOptions} raises L{SystemExit} with that line instead.
    """

    synopsis = "-c CONFIG"
    longdesc = (
        "Run the pipeline stages that CONFIG lists (feed_cuckoo, check_results, "
        "parse_and_submit, overseer), against the RabbitMQ, Cuckoo and CRITs it names, "
        "until SIGTERM, which drains in-flight work for grace_period seconds. A bad "
        "configuration, or a log_file or dump_dir that cannot be written, stops the start "
        "with one line naming the key. etc/cuckoodist.yaml is a commented example that runs "
        "as is against 'cuckoodist simulate'.")
    examples = (
        "twistd -n --pidfile= cuckoodist -c etc/cuckoodist.yaml",
        "twistd --pidfile=/run/cuckoodist.pid -l /var/log/cuckoodist.log cuckoodist -c /etc/cuckoodist/cuckoodist.yaml",
    )
    optParameters = [
        ["config", "c", "/etc/cuckoodist/cuckoodist.yaml", "Path to the YAML configuration."],
    ]

    def opt_version(self) -> None:
        """
        Display the cuckoodist version and exit.
        """
        from cuckoodist import __version__

        print(f"cuckoodist {__version__}")
        raise SystemExit(0)

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + "\nExamples:\n" + "".join(f"  {line}\n" for line in self.examples)

    def postOptions(self) -> None:
        """
        Load and check the configuration, then the paths it names.

        @raise SystemExit: with the one line naming the key, so that the
            process prints it to stderr and exits with status 1.
        """
        try:
            config = load_config(self["config"])
            preflight(config)
        except ConfigError as e:
            raise SystemExit(f"cuckoodist: {e}") from None
        self["parsed"] = config


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
            [level_filter(self._level)],
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


#: Twisted's HTTP client logs every new pooled connection at info level
#: ("Starting factory"); with hundreds of analyses an hour that drowns the
#: lines that matter.
_QUIET_NAMESPACES = ("twisted.web.client._HTTP11ClientFactory",)


def level_filter(level: LogLevel) -> LogLevelFilterPredicate:
    """
    The filter of the daemon's log: events below C{level}, and Twisted's
    per-connection chatter below warnings, are left out.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    for namespace in _QUIET_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, max(level, LogLevel.warn))
    return predicate


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
    metrics = Metrics()
    if config.log_file:
        _LogFileService(config.log_file, config.log_level).setServiceParent(root)
    connection = AMQPConnectionService(reactor, config.amqp_nodes, queue_type=config.queue_type)
    connection.setName("amqp")
    connection.setServiceParent(root)
    http = HTTPClient(reactor, config.http_timeout)
    _HTTPService(http).setServiceParent(root)
    stage_log = FilteringLogObserver(globalLogPublisher, [level_filter(_level(config.log_level))])
    context = StageContext(
        reactor=reactor,
        connection=connection,
        http=http,
        config=config,
        log_observer=stage_log,
        stage_types=STAGES,
        metrics=metrics,
    )
    for stage_config in config.stages:
        STAGES[stage_config.type](context, stage_config).setServiceParent(root)
    return root


def makeService(options: Options) -> IService:
    """
    twistd's entry point.
    """
    from twisted.internet import reactor

    return build_daemon(options["parsed"], reactor)
