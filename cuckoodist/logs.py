# -*- test-case-name: tests.test_logs,tests.test_tap -*-
"""
What the daemon writes to its logs, and how: the level filter, the
current sample's fields, the redaction of secrets, and the two formats of
C{log_format}.

Every output of the daemon (C{log_file}, and twistd's own log: stdout
under systemd, or C{-l FILE}) is one chain built by L{daemon_observer}:

  1. the level filter (L{level_filter}), first, because it is the cheapest
     and drops most events at C{info};
  2. the current sample's fields (L{cuckoodist.sample_context}), copied
     into the event while the code that emitted it is still on the stack;
  3. the L{Redactor}, which formats the event once, scrubs the text, every
     string field and the traceback, and hands on a I{new} event (the
     original, shared with every other observer, is left as it was);
  4. the format: L{text_observer} (twistd's classic lines, unchanged for
     existing users) or L{JSONLinesObserver}.

The JSON lines are a contract with C{cuckoodist trace}: one object per
line, ASCII (so UTF-8 whatever the locale), C{time}, C{level},
C{namespace}, C{host}, C{pid}, C{message}, then the sample's C{stage},
C{queue}, C{analysis_id}, C{task_id} and the C{event} name with its
fields (plain JSON values only), and a failure's C{traceback}.  Unknown
values are left out rather than written as C{null}.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sys
from string import Formatter
from typing import IO, Any, Callable, Iterable, Mapping
from urllib.parse import quote

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from cuckoodist.sample_context import with_sample_fields

__all__ = [
    "JSONLinesObserver",
    "REDACTED",
    "RedactingObserver",
    "Redactor",
    "daemon_observer",
    "file_observer",
    "json_line",
    "level_filter",
    "text_observer",
    "twistd_observer",
]

#: What a secret is replaced with.
REDACTED = "***"

#: Shorter configured secrets are not searched for: redacting every "ab"
#: would garble the log, and such a value protects nothing anyway.
MIN_SECRET_LENGTH = 4

#: Twisted's HTTP client logs every new pooled connection at info level
#: ("Starting factory"); with hundreds of analyses an hour that drowns the
#: lines that matter.  ClientService, under the AMQP connection service's
#: name, logs each reconnection attempt with the repr of an endpoint
#: object; L{cuckoodist.amqp.connection_log} says what matters instead
#: (which node, refused or refused login, the next try).
_QUIET_NAMESPACES = (
    "twisted.web.client._HTTP11ClientFactory",
    "cuckoodist.amqp.connection.AMQPConnectionService",
)

#: Keys whose values are credentials wherever they appear: a URL query or
#: form (C{api_key=...}), a JSON or Python mapping (C{"api_key": "..."}).
_SECRET_KEYS = r"api_?key|api_?token|token|password|passwd|secret"

#: Secrets that arrive in messages or peers' answers, which the
#: configuration cannot list.  Each alternative captures, in its named
#: group, the part to keep; what follows it up to the end of the match is
#: the secret.
_PATTERNS = (
    # A CRITs key in a query string or form body: ...&api_key=KEY
    rf"(?i:(?P<query>(?<![A-Za-z0-9_])(?:{_SECRET_KEYS})=)[^&\s#'\"<>]+)",
    # JSON or a Python literal, also inside another JSON string (escaped
    # quotes): "api_key": "KEY", 'api_key': 'KEY', \"api_key\": \"KEY\"
    rf"(?i:(?P<mapping>\\*[\"'](?:{_SECRET_KEYS})\\*[\"']\s*:\s*\\*[\"'])[^\"'\\]+)",
    # The CRITs header: ApiKey user:KEY (the user name is kept).
    r"(?i:(?P<apikey>\bApiKey\s+[^\s:'\"]+:)[^\s'\",;]+)",
    # Cuckoo's header, and HTTP basic: Bearer TOKEN, Basic CREDENTIALS
    r"(?i:(?P<bearer>\b(?:Bearer|Basic)\s+)[^\s'\",;]+)",
    # The password of a URL's user info: amqp://user:PASSWORD@host
    r"(?i:(?P<userinfo>\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+(?=@))",
)

#: What every match of L{_PATTERNS} contains (in any case): a word, or a
#: URL's user info.  A text with none of them and no configured secret,
#: the common case, skips the full expression, which costs several times
#: this search.  Keep in step with L{_PATTERNS}.
_TRIGGERS = ("key", "token", "passw", "secret", "bearer", "basic", r"://[^\s/@'\"]*@")

#: The keys of a JSON line that an event's own fields may not replace.
_RESERVED = frozenset({"time", "level", "namespace", "host", "pid", "message", "traceback"})

#: C{debug}, C{info}, C{warn}, C{error}, C{critical}.
_LEVEL_NAMES = {level: level.name for level in LogLevel.iterconstants()}

#: Fields of the contract itself, never dropped as parts of a split secret.
_IDENTIFIERS = frozenset({"stage", "queue", "analysis_id", "task_id", "event"})


class Redactor:
    """
    Scrubs secrets from log text: the configured ones, wherever they
    appear, and any that match L{_PATTERNS}.

    One compiled expression, one pass per string: this runs on every line
    the daemon writes.

    @param secrets: the configuration's secrets (L{from_config}); empty
        and very short ones are ignored.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                literals.update({secret, quote(secret, safe="")})
        # Longest first: a secret containing another is replaced whole.
        alternatives = []
        self._literals: re.Pattern[str] | None = None
        if literals:
            alternation = "|".join(re.escape(s) for s in sorted(literals, key=len, reverse=True))
            self._literals = re.compile(alternation)
            alternatives.append(f"(?P<literal>{alternation})")
        alternatives.extend(_PATTERNS)
        self._pattern = re.compile("|".join(alternatives))
        # Plain words only: the engine scans for them at C speed.
        self._trigger = re.compile("|".join(
            [f"(?i:{'|'.join(_TRIGGERS)})"] + [re.escape(s) for s in literals]
        ))

    @classmethod
    def from_config(cls, config: Any) -> "Redactor":
        """
        The redactor of a daemon: the CRITs API key, every Cuckoo token and
        the AMQP password of every node.
        """
        secrets = [cuckoo.token for cuckoo in config.cuckoo.values()]
        secrets += [node.password for node in config.amqp_nodes]
        if config.crits is not None:
            secrets.append(config.crits.api_key)
        return cls(secrets)

    def redact(self, text: str) -> str:
        """
        C{text} with every secret replaced by L{REDACTED}.
        """
        if not text:
            return text
        if self._trigger.search(text) is None:
            return text
        return self._pattern.sub(self._replacement, text)

    def _spans_fields(self, event: Mapping[str, Any], scrubbed: Mapping[str, Any], changed: set[str]) -> bool:
        """
        Whether a secret in C{event}'s message remains once its fields are
        scrubbed one by one: then it spans fields (or the format itself).
        Only asked when the message needed scrubbing, which is rare.
        """
        text = formatEvent({**event, **{key: scrubbed[key] for key in changed}})
        return self.redact(text) != text

    def _replacement(self, match: "re.Match[str]") -> str:
        kept = match.lastgroup
        if kept is None or kept == "literal":
            return REDACTED
        # What a pattern keeps (a user name, a key's name) may itself be a
        # configured secret: amqp://guest:guest@ keeps "guest".
        prefix = match.group(kept)
        if self._literals is not None:
            prefix = self._literals.sub(REDACTED, prefix)
        return prefix + REDACTED

    def scrub(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """
        A copy of C{event} safe to write out: its message formatted and
        scrubbed (C{log_format} becomes C{"{log_text}"}), every string field
        scrubbed, and a failure's traceback as scrubbed text in
        C{log_traceback} instead of the L{Failure} itself.

        A secret may also be split over fields that each look harmless and
        only meet in the message.  When the message still holds a secret
        once each field is scrubbed, the fields its format names are left
        out, except those L{redact} had to change themselves (their
        scrubbed value stays) and the sample's identifiers.  The message
        still says what they said.
        """
        original = formatEvent(event)
        message = self.redact(original)
        scrubbed: dict[str, Any] = {}
        changed = set()
        for key, value in event.items():
            if key.startswith("log_"):
                continue
            if isinstance(value, str):
                clean = self.redact(value)
                if clean != value:
                    changed.add(key)
                value = clean
            scrubbed[key] = value
        if message != original and self._spans_fields(event, scrubbed, changed):
            for name in _format_fields(event.get("log_format")):
                if name not in changed and name not in _IDENTIFIERS:
                    scrubbed.pop(name, None)
        for key in ("log_time", "log_level", "log_namespace", "log_system"):
            if key in event:
                scrubbed[key] = event[key]
        scrubbed["log_format"] = "{log_text}"
        scrubbed["log_text"] = message
        failure = event.get("log_failure")
        if failure is not None:
            scrubbed["log_traceback"] = self.redact(_traceback_text(failure))
        return scrubbed


def _format_fields(log_format: Any) -> set[str]:
    """
    The top-level field names a C{log_format} string refers to.
    """
    if not isinstance(log_format, str):
        return set()
    names = set()
    try:
        for _, field, _, _ in Formatter().parse(log_format):
            if field:
                names.add(re.split(r"[.\[(]", field, 1)[0])
    except ValueError:
        pass
    return names


def _traceback_text(failure: Any) -> str:
    try:
        return failure.getTraceback()
    except Exception as e:
        return f"(unable to obtain the traceback: {type(e).__name__})"


@implementer(ILogObserver)
class RedactingObserver:
    """
    Hands C{observer} the L{Redactor.scrub}bed copy of each event.
    """

    def __init__(self, redactor: Redactor, observer: Callable[[dict], None]) -> None:
        self._redactor = redactor
        self._observer = observer

    def __call__(self, event: dict) -> None:
        self._observer(self._redactor.scrub(event))


def level_filter(level: LogLevel) -> LogLevelFilterPredicate:
    """
    The filter of the daemon's log: events below C{level}, and Twisted's
    per-connection chatter below warnings, are left out.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    for namespace in _QUIET_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, max(level, LogLevel.warn))
    return predicate


def daemon_observer(output: Callable[[dict], None], redactor: Redactor, predicate: LogLevelFilterPredicate) -> ILogObserver:
    """
    The chain in front of one of the daemon's outputs: filter, sample
    fields, redaction, then C{output} (see the module's docstring).
    """
    return FilteringLogObserver(with_sample_fields(RedactingObserver(redactor, output)), [predicate])


def _with_traceback(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    A scrubbed event with its traceback appended to its text, the way
    Twisted's text formats show a failure.
    """
    traceback = event.get("log_traceback")
    if not traceback:
        return event
    return {**event, "log_text": "\n".join((event.get("log_text", ""), traceback))}


def text_observer(out: IO[str]) -> ILogObserver:
    """
    twistd's classic text lines (C{2026-12-02T05:32:39+0000
    [cuckoodist.feed_cuckoo#info] Submitted ...}), from scrubbed events.
    """
    return FileLogObserver(out, lambda event: formatEventAsClassicLogText(_with_traceback(event)))


def file_observer(out: IO[str], log_format: str) -> ILogObserver:
    """
    The observer writing C{log_format} (C{text} or C{json}) to C{out}.
    """
    return JSONLinesObserver(out) if log_format == "json" else text_observer(out)


def json_line(event: Mapping[str, Any], host: str) -> str | None:
    """
    One event as a JSON line (the contract in the module's docstring), or
    C{None} for an event with nothing to say (no message, no traceback).
    """
    if event.get("log_format") == "{log_text}" and isinstance(event.get("log_text"), str):
        message = event["log_text"]  # scrubbed: formatted already
    else:
        message = formatEvent(event)
    traceback = event.get("log_traceback")
    if traceback is None and event.get("log_failure") is not None:
        traceback = _traceback_text(event["log_failure"])
    if not message and not traceback:
        return None
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": float(when) if _plain(when) and isinstance(when, (int, float)) and not isinstance(when, bool) else None,
        "level": _LEVEL_NAMES.get(level, "info"),
        "namespace": event.get("log_namespace") if isinstance(event.get("log_namespace"), str) else None,
        "host": host,
        "pid": os.getpid(),
        "message": message,
    }
    for key in ("stage", "queue", "analysis_id", "task_id", "event"):
        value = event.get(key)
        if key == "task_id":
            if isinstance(value, int) and not isinstance(value, bool):
                record[key] = value
        elif isinstance(value, str) and value:
            record[key] = value
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in record or key in _RESERVED or key in _IDENTIFIERS:
            continue
        if _plain(value):
            record[key] = value
    if traceback:
        record["traceback"] = traceback
    record = {key: value for key, value in record.items() if value is not None}
    return json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n"


def _plain(value: Any) -> bool:
    """
    Whether C{value} is a plain JSON scalar (finite numbers only).
    """
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one JSON line (L{json_line}) to C{out}, flushed,
    as Twisted's file observers do.

    @param host: the host name every line carries; the machine's by default.
    """

    def __init__(self, out: IO[str], host: str | None = None) -> None:
        self._out = out
        self._host = host if host is not None else socket.gethostname()

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            line = json_line(event, self._host)
        except Exception as e:
            # A logging bug must not lose the line altogether.
            line = json_line({"log_format": "unloggable event ({why})", "why": type(e).__name__,
                              "log_level": LogLevel.error, "log_time": event.get("log_time")}, self._host)
        if line is not None:
            self._out.write(line)
            self._out.flush()


def twistd_observer(config: Any, twistd_options: Mapping[str, Any], reactor: Any, level: LogLevel) -> ILogObserver:
    """
    The observer twistd's own log is to use, in place of the one twistd
    would make: to the same place (L{_twistd_destination}), but through
    L{daemon_observer}, so that it is redacted, carries the samples' fields
    and follows C{log_format}.

    @param twistd_options: twistd's parsed options (C{logfile},
        C{nodaemon}, C{syslog}, C{prefix}).
    @param level: the level below which events are left out.
    """
    redactor = Redactor.from_config(config)
    if twistd_options.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        # Syslog adds its own time, host and pid: the redacted text goes.
        legacy = LegacyLogObserverWrapper(SyslogObserver(twistd_options.get("prefix") or "twisted").emit)
        return daemon_observer(lambda event: legacy(dict(_with_traceback(event))), redactor, level_filter(level))
    out = _twistd_destination(twistd_options, reactor)
    return daemon_observer(file_observer(out, config.log_format), redactor, level_filter(level))


def _twistd_destination(twistd_options: Mapping[str, Any], reactor: Any) -> IO[str]:
    """
    Where twistd would log (as C{twisted.scripts._twistd_unix.UnixAppLogger}
    decides): stdout for C{-l -} or C{-n} without C{-l}, else the C{-l}
    file (C{twistd.log} by default), rotated on SIGUSR1 as twistd does.
    """
    from twisted.python.logfile import LogFile

    name = twistd_options.get("logfile") or ""
    nodaemon = twistd_options.get("nodaemon", False)
    if name == "-":
        if not nodaemon:
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    if nodaemon and not name:
        return sys.stdout
    log_file = LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file
