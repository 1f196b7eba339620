# -*- test-case-name: tests.test_trace -*-
"""
C{cuckoodist trace ANALYSIS_ID}: every logged event of one analysis,
across stages, processes and hosts, in time order.

A sample crosses four stages, often in several daemons on several hosts,
and each writes its own log.  With C{log_format: json} every line is one
JSON object, and the lines a delivery causes carry its C{analysis_id}
(L{cuckoodist.sample_context}) and an C{event} name (received, uploaded,
polled, reported, parsed, posted, finished, failed, retried, dumped,
deleted, http).  This command reads the given logs (by default the
configuration's C{log_file} and the siblings twistd's C{LogFile} rotated
it to, C{FILE.1}, C{FILE.2}...), keeps the lines of one analysis, adds
what the overseer's dump directory holds for it (when and why it was
dumped), and prints them merged by time: one line per event, or the
JSON objects with C{--json}.

Logs can be gigabytes, so each is read as a stream of lines, and only a
line that contains the analysis id, quoted as JSON writes it, is parsed
at all.  Lines that are not JSON (a C{log_format: text} log, twistd's
own lines) are counted and skipped, as is a line cut short (the last
line of a log being written); when nothing matched, the count says why.
"""

from __future__ import annotations

import datetime
import glob
import gzip
import json
import os
import re
import sys
from typing import IO, Any, Iterable

import attrs
from twisted.python import usage

from cuckoodist.commands.arguments import OptionsAnywhere
from cuckoodist.config import load_config
from cuckoodist.dump import DumpStore
from cuckoodist.errors import ConfigError

__all__ = ["Trace", "TraceOptions", "format_event", "log_files", "read_dumps", "read_log", "run", "trace"]

#: Event keys every line shows in its own column, not among the fields.
_COLUMNS = ("time", "level", "namespace", "host", "pid", "message", "stage", "queue", "analysis_id", "task_id", "event")
#: Characters of a message shown on one line.
_MAX_MESSAGE = 2000
#: Bytes of one log line we parse; a longer line is no event of ours.
_MAX_LINE = 16 * 1024 * 1024


def _analysis_id(value: str) -> str:
    if not value or not value.isprintable() or len(value) > 128:
        raise usage.UsageError("ANALYSIS_ID must be 1 to 128 printable characters")
    return value


class TraceOptions(OptionsAnywhere):
    """
    Command line of C{cuckoodist trace}.  The id may come before or after
    the options.
    """

    synopsis = "ANALYSIS_ID [-c CONFIG] [--log FILE]... [--dump-dir DIR]... [--json]"
    longdesc = (
        "Print every event the daemons logged for one analysis (received, uploaded as task N to "
        "a Cuckoo, polled, reported, parsed, posted, finished, or failed and why, retried, "
        "dumped), from every stage, process and host, merged in time order: one line per event "
        "with its UTC time, host/pid, stage, event and message, or the JSON objects with --json. "
        "The logs must be written with 'log_format: json'. By default they are CONFIG's "
        "log_file and its rotated siblings (FILE.1, FILE.2, ...); --log replaces them and may "
        "be given once per file, e.g. the logs of several hosts. The dump directory of CONFIG's "
        "overseer (or --dump-dir) adds when and why the analysis was dumped. Exit status: 0 "
        "when something was found, 1 when nothing was, 2 for bad usage.")
    examples = (
        "cuckoodist trace 3f2c9a0e-5d1b-4c57-9f0a-0d6f2b0c7e11 -c etc/cuckoodist.yaml",
        "cuckoodist trace ID --log host1/cuckoodist.log --log host2/cuckoodist.log --dump-dir dump --json",
    )
    optParameters = [
        ["config", "c", None, "Read log_file and the overseer's dump_dir from this configuration."],
    ]
    optFlags = [
        ["json", None, "Print the events as JSON objects, one a line."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["logs"] = []
        self["dump-dirs"] = []

    def opt_log(self, path: str) -> None:
        """
        A JSON log to read (repeatable); replaces CONFIG's log_file and its rotated siblings.
        """
        self["logs"].append(path)

    def opt_dump_dir(self, path: str) -> None:
        """
        A dump directory to read (repeatable); replaces the overseer's dump_dir of CONFIG.
        """
        self["dump-dirs"].append(path)

    def parseArgs(self, *args: str) -> None:
        if len(args) != 1:
            raise usage.UsageError("name one ANALYSIS_ID to trace")
        self["analysis_id"] = _analysis_id(args[0])

    def postOptions(self) -> None:
        if self["config"]:
            try:
                config = load_config(self["config"])
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
            if not self["logs"] and config.log_file:
                self["logs"] = log_files(config.log_file)
            if not self["dump-dirs"]:
                self["dump-dirs"] = [s.dump_dir for s in config.stages if s.type == "overseer"]
        if not self["logs"] and not self["dump-dirs"]:
            raise usage.UsageError(
                "nothing to read: give --log FILE, or -c CONFIG with a log_file or an overseer's dump_dir")


def log_files(path: str) -> list[str]:
    """
    C{path} and the files it was rotated to, oldest first: twistd's
    C{LogFile} renames C{FILE} to C{FILE.1} and older ones to C{FILE.2},
    C{FILE.3}...; logrotate may compress them (C{FILE.2.gz}).
    """
    rotated = []
    for sibling in glob.glob(glob.escape(path) + ".*"):
        match = re.fullmatch(re.escape(path) + r"\.([0-9]+)(\.gz)?", sibling)
        if match:
            rotated.append((int(match.group(1)), sibling))
    return [name for _, name in sorted(rotated, reverse=True)] + [path]


@attrs.define
class Trace:
    """
    What was found for one analysis, and what was passed over.

    @ivar events: the analysis' events, each a JSON object as logged (with
        C{source} added: the file it came from), in time order once
        L{sort}ed.
    @ivar not_json: lines that were no JSON object (text-format logs,
        twistd's own lines, a line cut short).
    @ivar problems: files or directories that could not be read, and why.
    """

    events: list[dict[str, Any]] = attrs.Factory(list)
    not_json: int = 0
    problems: list[str] = attrs.Factory(list)

    def sort(self) -> None:
        """
        Order the events by time; events of one time keep the order they
        were read in (a file's lines, files in the order given).
        """
        self.events.sort(key=lambda event: event["time"])


def _needles(analysis_id: str) -> tuple[bytes, ...]:
    """
    The analysis id as a JSON string, quotes included, as an ASCII or a
    UTF-8 encoder writes it: a line without either is not one of its events.
    """
    return tuple({json.dumps(analysis_id).encode("ascii"), json.dumps(analysis_id, ensure_ascii=False).encode("utf-8")})


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1024 * 1024)


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < 1e11 else None


def read_log(path: str, analysis_id: str, found: Trace) -> None:
    """
    Add to C{found} the events of C{analysis_id} in the log at C{path},
    streaming it.

    A file that cannot be opened or read is noted in C{found.problems}.
    """
    needles = _needles(analysis_id)
    try:
        with _open(path) as fp:
            for line in fp:
                start = line.lstrip(b"\x1e \t")
                if not start.strip():
                    continue
                if not start.startswith(b"{"):
                    found.not_json += 1
                    continue
                if not any(needle in start for needle in needles) or len(start) > _MAX_LINE:
                    continue
                event = _decoded(start)
                if event is None:
                    found.not_json += 1
                elif event.get("analysis_id") == analysis_id and (time := _time(event.get("time"))) is not None:
                    event["time"] = time
                    event.setdefault("source", path)
                    found.events.append(event)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        found.problems.append(f"cannot read {_shown(path)}: {getattr(e, 'strerror', None) or e}")


def _decoded(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def read_dumps(directory: str, analysis_id: str, found: Trace) -> None:
    """
    Add to C{found} an event for each dump file of C{analysis_id} in
    C{directory}: when, by which stage, after how many attempts and why
    it was dumped.  The dumped message itself is never shown: it may hold
    a CRITs API key and the sample.
    """
    for path, record, _problem in DumpStore(directory):
        if record is None or record.analysis_id != analysis_id:
            continue
        attempts = f" after {record.attempts} attempt(s)" if record.attempts else ""
        event: dict[str, Any] = {
            "time": _time(record.dumped_at) or 0.0,
            "level": "error",
            "message": f"in the dump directory{attempts}: {record.reason} ({path}; 'cuckoodist resubmit' puts it back)",
            "stage": record.stage,
            "queue": record.queue,
            "analysis_id": record.analysis_id,
            "event": "dumped",
            "reason": record.reason,
            "attempts": record.attempts,
            "path": path,
            "source": "dump",
        }
        if record.task_id is not None:
            event["task_id"] = record.task_id
        found.events.append(event)


def trace(analysis_id: str, logs: Iterable[str], dump_dirs: Iterable[str]) -> Trace:
    """
    Everything known about C{analysis_id} in C{logs} and C{dump_dirs}, in
    time order.
    """
    found = Trace()
    for path in logs:
        read_log(path, analysis_id, found)
    for directory in dump_dirs:
        read_dumps(directory, analysis_id, found)
    found.sort()
    return found


def _shown(text: Any) -> str:
    """
    Text fit for one terminal line: runs of white space as one space,
    other unprintable characters escaped, clipped.
    """
    text = " ".join(str(text).split())
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def format_event(event: dict[str, Any]) -> str:
    """
    One event as a line: UTC time, host/pid, stage, event, message.
    """
    when = datetime.datetime.fromtimestamp(event["time"], datetime.timezone.utc)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if event.get("source") == "dump":
        where = "(dump_dir)"
    else:
        where = str(event.get("host") or "?") + (f"/{event['pid']}" if event.get("pid") is not None else "")
    name = event.get("event") or event.get("level") or "-"
    message = event.get("message")
    if not message:
        message = " ".join(f"{k}={v}" for k, v in event.items() if k not in _COLUMNS and k != "source")
    return f"{stamp} {_shown(where):<20} {_shown(event.get('stage') or '-'):<16} {_shown(name):<9} {_shown(message)}"


def _printable_json(event: dict[str, Any]) -> str:
    return json.dumps(event, default=str)


def run(options: TraceOptions, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """
    Run C{cuckoodist trace}.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    analysis_id = options["analysis_id"]
    found = trace(analysis_id, options["logs"], options["dump-dirs"])
    for problem in found.problems:
        print(f"cuckoodist trace: {problem}", file=err)
    try:
        for event in found.events:
            print(_printable_json(event) if options["json"] else format_event(event), file=out)
        out.flush()
    except BrokenPipeError:
        # "trace ID | head": the reader has seen enough.  Point stdout at
        # nothing, or the interpreter's last flush complains at exit.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if found.events:
        return 0
    where = ", ".join(_shown(p) for p in [*options["logs"], *options["dump-dirs"]])
    print(f"cuckoodist trace: nothing found for analysis {analysis_id} in {where}", file=err)
    if found.not_json:
        print(f"cuckoodist trace: {found.not_json} lines were not JSON: set log_format: json", file=err)
    return 1
