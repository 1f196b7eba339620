# -*- test-case-name: tests.test_systemd -*-
"""
Telling systemd how the daemon is doing (C{sd_notify}), for C{Type=notify}.

systemd considers a C{Type=notify} unit started when the service sends
C{READY=1}: here, once the broker connection is up and every stage is
consuming (L{cuckoodist.readiness}), so that C{systemctl start} returns
when the daemon is really working and units ordered after it start then.
C{STOPPING=1} goes out the moment the daemon begins to stop, before the
stages drain, as Synapse does; C{STATUS=} lines keep C{systemctl status}
saying what the daemon waits for (the broker, a consumer) meanwhile.

The protocol is one datagram per message to the unix socket named by
C{$NOTIFY_SOCKET} (a leading C{@} means Linux's abstract namespace).
Without that variable the daemon is not run under systemd (or under
C{Type=simple}), and nothing is sent: L{Notifier.from_environ} gives
C{None} and the daemon adds no notifier at all.
"""

import socket
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cuckoodist.readiness import Readiness

__all__ = ["Notifier", "SystemdNotifyService", "notify_address"]

log = Logger()


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """
    The socket address C{$NOTIFY_SOCKET} names: a path, or, for C{@name},
    the abstract address C{\\0name} (as bytes), or C{None} when unset.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    return value


class Notifier:
    """
    Sends C{sd_notify} messages to one socket.

    A message that cannot be sent is logged once and otherwise ignored:
    the daemon's work does not depend on systemd hearing about it.

    @param address: from L{notify_address}.
    """

    def __init__(self, address: str | bytes) -> None:
        self._address = address
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Notifier | None":
        """
        A notifier for C{$NOTIFY_SOCKET}, or C{None} when it is unset.
        """
        address = notify_address(environ)
        return None if address is None else cls(address)

    def notify(self, *assignments: str) -> bool:
        """
        Send C{assignments} (C{"READY=1"}, C{"STATUS=..."}) in one datagram.

        @return: whether it was sent.
        """
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warn("Cannot notify systemd on $NOTIFY_SOCKET: {why}", why=e.strerror or str(e))
            return False
        return True


class SystemdNotifyService(Service):
    """
    Sends C{READY=1} once the daemon is first ready, C{STATUS=} whenever
    its readiness summary changes, and C{STOPPING=1} when it stops.

    Neither the connection nor the consumers announce their changes, so
    readiness is checked every C{interval} seconds: a few attribute reads,
    and a datagram only on a change.

    The daemon stops this service before anything else
    (C{stop_first}), so that systemd hears C{STOPPING=1} before the drain.

    @param reactor: the clock of the checks.
    @param notifier: where the messages go.
    @param readiness: the daemon's readiness.
    @param interval: seconds between checks.
    @cvar stop_first: read by the daemon's root service (L{cuckoodist.tap}).
    @ivar ready_sent: whether C{READY=1} went out.
    """

    stop_first = True

    def __init__(self, reactor: Any, notifier: Notifier, readiness: Readiness, interval: float = 1.0) -> None:
        self._notifier = notifier
        self._readiness = readiness
        self._interval = interval
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor
        self._status: str | None = None
        self.ready_sent = False

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True).addErrback(lambda f: log.failure("The systemd readiness check failed", f))

    def _check(self) -> None:
        verdict = self._readiness.check()
        status = verdict.summary()
        if verdict.ready and not self.ready_sent:
            self.ready_sent = True
            self._status = status
            self._notifier.notify("READY=1", f"STATUS={status}")
            log.info("Told systemd the daemon is ready")
        elif status != self._status:
            self._status = status
            self._notifier.notify(f"STATUS={status}")

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._notifier.notify("STOPPING=1", "STATUS=Stopping: draining the work in flight")
