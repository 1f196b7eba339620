# -*- test-case-name: tests.test_tap -*-
"""
The composition root: C{twistd cuckoodist -c CONFIG} builds the daemon here.

This is the only module that touches the global reactor.  Everything
below it receives the reactor (for time, TCP and threads) as an argument.

Logs.  Every output the daemon writes to goes through
L{cuckoodist.logs.daemon_observer} (level filter, the sample's fields,
secret redaction, then C{log_format}: C{text} or C{json}): C{log_file},
and twistd's own log.  For the latter, L{makeService} returns the daemon
under L{_TwistdRoot}, which sets the observer as the twistd
C{Application}'s L{ILogObserver} component, the hook twistd reads before
it starts logging; the observer writes where twistd would have (stdout
with C{-n}, C{-l FILE} rotated on SIGUSR1, syslog with C{--syslog}, which
gets the redacted text lines).  Only an explicit C{twistd --logger}
bypasses it, and with it the redaction.
"""

import os
from typing import Any, Mapping

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import FilteringLogObserver, ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.components import Componentized
from twisted.python import usage

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import Config, load_config
from cuckoodist.dashboard.install import install_dashboard
from cuckoodist.errors import ConfigError
from cuckoodist.http import HTTPClient
from cuckoodist.logs import Redactor, daemon_observer, file_observer, level_filter, twistd_observer
from cuckoodist.metrics import Metrics
from cuckoodist.ops_server import OpsService, ops_root
from cuckoodist.preflight import preflight
from cuckoodist.readiness import Readiness
from cuckoodist.registry import STAGES
from cuckoodist.stages.base import Stage, StageContext
from cuckoodist.systemd import Notifier, SystemdNotifyService

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
    Writes the log to C{log_file} at C{log_level} in C{log_format}, redacted
    (L{cuckoodist.logs.daemon_observer}), beside twistd's own log.
    """

    def __init__(self, config: Config) -> None:
        self._path = config.log_file
        self._level = _level(config.log_level)
        self._format = config.log_format
        self._redactor = Redactor.from_config(config)
        self._observer = None
        self._file = None

    def startService(self) -> None:
        super().startService()
        self._file = open(self._path, "a", encoding="utf-8")
        self._observer = daemon_observer(file_observer(self._file, self._format), self._redactor, level_filter(self._level))
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
    acked on SIGTERM.  A child with a true C{stop_first} (the systemd
    notifier, which says C{STOPPING=1}) is stopped before anything else.
    """

    _log = Logger()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        children = list(self)
        first = [child for child in children if getattr(child, "stop_first", False)]
        for child in first:
            try:
                child.stopService()
            except Exception:
                self._log.failure("Stopping {service} failed", service=child)
        stages = [child for child in children if isinstance(child, Stage)]
        rest = [child for child in reversed(children) if not isinstance(child, Stage) and child not in first]

        async def stop_in_order() -> None:
            await DeferredList([maybeDeferred(stage.stopService) for stage in stages], consumeErrors=True)
            for child in rest:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self._log.failure("Stopping {service} failed", service=child)

        return Deferred.fromCoroutine(stop_in_order())


class _TwistdRoot(MultiService):
    """
    What twistd runs: the daemon, under a service that tells twistd which
    observer its own log is to use.

    twistd makes its C{Application} after L{makeService}, hands it to
    C{setServiceParent}, and only then starts logging, to the
    application's L{ILogObserver} component when it has one (Twisted's
    documented way for an application to choose its log observer; an
    explicit C{--logger} still wins).  So C{setServiceParent} is where
    the daemon's observer is set.
    """

    def __init__(self, daemon: MultiService, observer: ILogObserver) -> None:
        super().__init__()
        self.observer = observer
        daemon.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)


def _level(name: str) -> LogLevel:
    """
    The twisted.logger level for a C{log_level} setting.
    """
    return LogLevel.levelWithName("warn" if name == "warning" else name)


def build_daemon(config: Config, reactor: Any, environ: Mapping[str, str] | None = None) -> MultiService:
    """
    Assemble the daemon: one AMQP connection, one HTTP client, a service
    per configured stage, the operations listener (C{ops}, unless
    C{metrics.listen} is C{""}) with the dashboard on it (C{dashboard},
    L{cuckoodist.dashboard}) and, under systemd, the notifier
    (C{systemd}), under one L{MultiService}.

    Children start in order; on stop the systemd notifier says
    C{STOPPING=1} first, then the stages drain, then the operations
    listener stops (it answers C{/readyz} with 503 during the drain), the
    HTTP pools close, and the AMQP connection closes (which makes the
    broker requeue whatever is still unacked).

    @param environ: the process environment, for C{$NOTIFY_SOCKET}; the
        default, none, sends systemd nothing.
    """
    root = _DaemonService()
    metrics = Metrics()
    if config.log_file:
        _LogFileService(config).setServiceParent(root)
    connection = AMQPConnectionService(reactor, config.amqp_nodes, queue_type=config.queue_type, metrics=metrics)
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
    stages = [STAGES[stage_config.type](context, stage_config) for stage_config in config.stages]
    for stage in stages:
        stage.setServiceParent(root)
    readiness = Readiness(connection, stages)
    if config.metrics.listen:
        ops = OpsService(reactor, config.metrics.listen, ops_root(metrics, readiness, reactor))
        ops.setName("ops")
        ops.setServiceParent(root)
        install_dashboard(ops.root, context, stages).setServiceParent(root)
    notifier = Notifier.from_environ(environ or {})
    if notifier is not None:
        notify = SystemdNotifyService(reactor, notifier, readiness)
        notify.setName("systemd")
        notify.setServiceParent(root)
    return root


def makeService(options: Options) -> IService:
    """
    twistd's entry point.

    twistd's own log (stdout with C{-n}, or C{-l FILE}) is written by the
    daemon's observer (L{_TwistdRoot}, L{cuckoodist.logs.twistd_observer}):
    to where twistd would write it, but redacted, with the samples' fields,
    in C{log_format}, and without debug lines unless C{log_level} is
    C{debug}.
    """
    from twisted.internet import reactor

    config = options["parsed"]
    daemon = build_daemon(config, reactor, os.environ)
    twistd_options = getattr(options, "parent", None)
    if twistd_options is None:
        return daemon
    level = min(_level(config.log_level), LogLevel.info)
    return _TwistdRoot(daemon, twistd_observer(config, twistd_options, reactor, level))
