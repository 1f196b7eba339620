# -*- test-case-name: tests.test_amqp_connection -*-
"""
What the operator is told about the broker connection.

A broker that refuses us is retried forever, so logging every attempt
floods the log with the same traceback.  L{ConnectionLog} logs one warning
when the connection's state changes (up to down, or one reason for being
down to another, per node of a cluster) and one info line when it comes
back.  Each line names the node as C{host:port/vhost}, never the user's
password, and says why in words an operator can act on.
"""

from typing import Any

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed
from txamqp.message import Message

__all__ = ["ConnectionLog", "why_connect_failed"]


def _close_method(reason: Any) -> Message | None:
    """
    The broker's C{connection.close} inside a txAMQP error, if any.
    """
    seen = 0
    while seen < 5:
        seen += 1
        if isinstance(reason, Failure):
            reason = reason.value
        if isinstance(reason, Message):
            return reason if len(reason.fields) >= 2 else None
        if isinstance(reason, Closed) and reason.args:
            reason = reason.args[0]
            continue
        return None
    return None


def _innermost(reason: Any) -> BaseException | None:
    for _ in range(5):
        if isinstance(reason, Failure):
            reason = reason.value
        if isinstance(reason, Closed) and reason.args:
            reason = reason.args[0]
            continue
        break
    return reason if isinstance(reason, BaseException) else None


def _tls_reason(e: SSL.Error) -> str:
    for item in e.args[0] if e.args and isinstance(e.args[0], list) else []:
        if isinstance(item, tuple) and item:
            return str(item[-1])
    return str(e) or "unknown error"


def why_connect_failed(reason: Any, handshake_started: bool) -> str:
    """
    Say in a few words why a connection attempt failed.

    @param reason: a L{Failure} or exception from connecting or logging in.
    @param handshake_started: whether the TCP (and TLS) connection was up,
        so that a bare close means the broker refused the login.
    """
    method = _close_method(reason)
    if method is not None:
        code, text = method.fields[0], method.fields[1]
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if code == 403:
            return f"authentication refused ({code} {text})"
        if code == 530:
            return f"virtual host refused, unknown or not permitted ({code} {text})"
        return f"closed by the broker ({code} {text})"
    inner = _innermost(reason)
    if isinstance(inner, SSL.Error):
        return f"TLS handshake failed ({_tls_reason(inner)})"
    if isinstance(inner, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, error.DNSLookupError):
        return "host name not found"
    if isinstance(inner, (error.TimeoutError, CancelledError, TimeoutError)):
        return "timed out"
    if isinstance(inner, (error.ConnectionDone, error.ConnectionLost)) and handshake_started:
        return "the broker closed the connection during the AMQP handshake (authentication refused?)"
    if isinstance(inner, error.ConnectError):
        return f"cannot connect ({inner.osError or type(inner).__name__})" if getattr(inner, "osError", None) else "cannot connect"
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(reason)


class ConnectionLog:
    """
    Logs the connection's changes of state, once each.

    With several nodes each attempt may go to another one, so a reason to
    be down is remembered per node: a node that keeps refusing is reported
    once, not once per round.

    @param where: C{host:port/vhost} of the (first) node, for calls that
        name none.
    """

    def __init__(self, where: str, log: Logger | None = None) -> None:
        self._where = where
        self._log = log or Logger()
        self._state: str | None = None
        self._was_up = False
        self._reasons: dict[str, str] = {}

    def failed(self, why: str, retry_in: float | None, where: str | None = None) -> None:
        """
        An attempt at C{where} failed: warn if this is a new reason there.
        """
        where = where or self._where
        self._state = "down"
        if self._reasons.get(where) == why:
            return
        self._reasons[where] = why
        retry = "" if retry_in is None else f"; retrying with backoff, next in {retry_in:.1f} s"
        self._log.warn("Cannot connect to RabbitMQ at {where}: {why}{retry}", where=where, why=why, retry=retry)

    def connected(self, where: str | None = None) -> None:
        """
        Logged in at C{where}: say so once, as a reconnection if the
        connection had been up before.
        """
        if self._state == "up":
            return
        again, self._was_up = self._was_up, True
        self._state = "up"
        self._reasons.clear()
        self._log.info(
            "{what} RabbitMQ at {where}",
            what="Reconnected to" if again else "Connected to",
            where=where or self._where,
        )

    def lost(self, why: str, where: str | None = None) -> None:
        """
        An established connection to C{where} went away (a stop is not
        reported here).
        """
        self._state = "lost"
        self._log.warn(
            "Lost the RabbitMQ connection to {where} ({why}); reconnecting", where=where or self._where, why=why
        )
