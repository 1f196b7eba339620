# -*- test-case-name: tests.test_report -*-
"""
Build CRITs result rows from the small pieces of a Cuckoo report.

All three readers, the text walk (L{cuckoodist.report._text}), the event
walk (L{cuckoodist.report.extract}) and the reference one
(L{cuckoodist.report.plain}), find the pieces through one section walk
(L{cuckoodist.report._walker}) and hand every piece (the C{info} dict, one
signature, one process header with its kept calls, one summary item, one
network entry) to a L{RowCollector}.  All decisions about row contents
therefore live here, once, and the readers can only differ in how they read
a value.

Each row subtype always carries the same C{extra} keys, because CRITs builds
a table's columns from the first row of a subtype.  Values of the wrong type
are replaced by an empty value or the entry is skipped; nothing here raises
on report content.

Reports are hostile, so what reaches a row is bounded here too, once for
all three extractors: a string longer than L{MAX_STRING} is cut to that
length, and a call argument nesting deeper than L{MAX_NESTING} is left out
(C{None}).  Both are counted, so the analyst can be told the results are
not the whole story.  (The readers have their own, wider caps for what they
build; see L{cuckoodist.report._text} and L{cuckoodist.report._guard}.)

What a report can make us keep is bounded too, because a hostile report of
millions of small values (a summary list, network hosts, processes) would
otherwise become millions of rows held in memory and posted to CRITs:

  - each subtype keeps at most L{ExtractOptions.rows_max} rows, and all rows
    together at most L{ExtractOptions.kept_bytes_max} bytes by L{_cost}, a
    conservative estimate of their memory; rows past either are left out and
    counted in L{Extraction.rows_dropped};
  - a call whose arguments are larger than L{MAX_ARGUMENTS_SIZE} (by
    L{arguments_size}, which never exceeds the arguments' JSON text length)
    keeps no arguments, counted in L{Extraction.values_skipped}.

The decisions are made here, on values, so all three readers agree; the
streaming readers only have to make sure they never build a value much
larger than these bounds before handing it over.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from cuckoodist.report.times import format_date, format_log_time
from cuckoodist.results import ResultRow

__all__ = [
    "PARSERS",
    "REPORT_PARSERS",
    "STAGE_PARSERS",
    "ExtractOptions",
    "Extraction",
    "RowCollector",
    "PROCESS_HEADER_KEYS",
    "SUMMARY_SUBTYPES",
    "MAX_STRING",
    "MAX_NESTING",
    "MAX_ARGUMENTS_SIZE",
    "SIZE_DEPTH",
    "arguments_size",
    "OVERSIZED",
    "PIECES",
]

#: The longest string a row carries, in characters.  CRITs shows rows in
#: tables; a longer string is a hostile report or a buffer dump, and cutting
#: it keeps the request bodies and our memory bounded.
MAX_STRING = 64 * 1024
#: How deeply a call argument's value may nest (levels of lists and dicts)
#: and still be posted.  CRITs reads rows back with C{ast.literal_eval},
#: whose parser has its own small nesting limit; real arguments nest two or
#: three levels.
MAX_NESTING = 16
#: The largest size (L{arguments_size}) of one call's arguments that is
#: posted; larger ones are left out whole.  Real calls are a few hundred
#: characters; 1 Mi also bounds what a streaming reader builds for one call.
MAX_ARGUMENTS_SIZE = 1024 * 1024
#: L{arguments_size} counts a container nested deeper than this as one
#: value without looking inside, as the text walk does not build deeper.
SIZE_DEPTH = 64
#: Estimated bytes of one row without its text (the row, its C{extra} dict),
#: and of one call argument (its C{{"name", "value"}} dict) or one value
#: inside an argument.  Measured: 64 + 184 bytes, 232 bytes, 8 to 60 bytes.
_ROW_BYTES = 320
_ARGUMENT_BYTES = 256
_VALUE_BYTES = 64

#: The parsers that read report.json, in their default configuration order.
#: The only list of parser names: L{cuckoodist.config} and
#: L{cuckoodist.stages.parse_and_submit} import theirs from here.
REPORT_PARSERS = ("info", "signatures", "behavior", "network")
#: Every parser a parse_and_submit stage may enable: the report's, then
#: C{dropped}, which reads the dropped-files archive instead.
STAGE_PARSERS = REPORT_PARSERS + ("dropped",)
#: The report parsers, as a set: what L{ExtractOptions.parsers} is a subset of.
PARSERS = frozenset(REPORT_PARSERS)

#: The keys of a process dict that rows (and format detection) look at.
PROCESS_HEADER_KEYS = frozenset({"pid", "ppid", "process_id", "parent_id",
                                 "process_name", "first_seen", "module_path"})

_FILE_KEYS_20 = ("file_opened", "file_created", "file_recreated", "file_read",
                 "file_written", "file_deleted", "file_exists", "file_failed",
                 "file_moved", "file_copied", "directory_created", "directory_removed",
                 "directory_enumerated", "dll_loaded")
_REGISTRY_KEYS_20 = ("regkey_opened", "regkey_read", "regkey_written", "regkey_deleted")

#: Summary key (2.0, 1.x or CAPE) -> the row subtype its values become.
SUMMARY_SUBTYPES: Mapping[str, str] = {
    **{key: "file" for key in _FILE_KEYS_20},
    **{key: "registry_key" for key in _REGISTRY_KEYS_20},
    "mutex": "mutex",
    "files": "file", "keys": "registry_key", "mutexes": "mutex",
    "read_files": "file", "write_files": "file", "delete_files": "file",
    "read_keys": "registry_key", "write_keys": "registry_key",
    "delete_keys": "registry_key",
}

#: Summary keys only CAPEv2 writes; seeing one identifies the format.
_CAPE_SUMMARY_KEYS = frozenset({"read_files", "write_files", "delete_files", "read_keys",
                                "write_keys", "delete_keys", "executed_commands",
                                "resolved_apis", "created_services", "started_services"})

_PAIR_KEYS = frozenset({"file_moved", "file_copied"})

_HTTP_EXTRA = ("method", "host", "port", "path", "version")


@attrs.frozen
class ExtractOptions:
    """
    What to extract from a report.

    @ivar parsers: the enabled parsers, a subset of L{PARSERS}.
    @ivar api_calls_max: how many C{api_call} rows to keep at most, over all
        processes, in report order.  CRITs chokes on huge result lists, and
        the first calls are the interesting ones.
    @ivar task_id: the Cuckoo task id, used as C{analysis_id} when the report
        does not say.
    @ivar rows_max: how many rows of one subtype to keep at most.  A real
        report gives a few thousand rows in all; a million would be a
        hostile report, and more than CRITs can show.
    @ivar kept_bytes_max: how many bytes (estimated by L{_cost}) all kept
        rows may hold together, so a report cannot make the parse hold more
        than this whatever its rows look like.
    """

    parsers: frozenset[str]
    api_calls_max: int = 5000
    task_id: int | None = None
    rows_max: int = 50_000
    kept_bytes_max: int = 64 * 1024 * 1024


@attrs.frozen
class Extraction:
    """
    The rows extracted from one report.

    @ivar format: the detected report layout, C{"2.0"}, C{"1.2"} or C{"cape"}.
    @ivar rows: the rows, grouped by subtype in a fixed order (info,
        signature, process, api_call, file, registry_key, mutex, Host,
        Domain, HTTP Request, User-Agent), each group in report order.
    @ivar api_calls_seen: how many calls the report holds in total, so the
        caller can say "N of M pushed".
    @ivar values_truncated: how many strings were cut to L{MAX_STRING}.
    @ivar values_skipped: how many call argument values were left out
        because they nest deeper than L{MAX_NESTING}, or calls' arguments
        because they are larger than L{MAX_ARGUMENTS_SIZE}.
    @ivar rows_dropped: how many rows were left out because their subtype
        already had L{ExtractOptions.rows_max} rows or all rows together
        L{ExtractOptions.kept_bytes_max} bytes.
    """

    format: str
    rows: tuple[ResultRow, ...]
    api_calls_seen: int
    values_truncated: int = 0
    values_skipped: int = 0
    rows_dropped: int = 0


def _int(value: Any) -> int | None:
    """
    @return: C{value} if it is a JSON integer (not a C{bool}), else C{None}.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


#: Types a value bound check can pass as they are.
_NUMBERS = frozenset({int, float, bool, type(None)})
#: Types of argument values that cannot nest.
_SCALARS = _NUMBERS | {str}
_VALUE = itemgetter("value")


def _deeper_than(value: Any, room: int) -> bool:
    """
    Whether C{value} nests more than C{room} levels of lists and dicts.
    Iterative, so no value can exhaust the stack.
    """
    level = [value]
    while level:
        if room <= 0:
            return True
        room -= 1
        level = [item for container in level
                 for item in (container.values() if type(container) is dict else container)
                 if type(item) is dict or type(item) is list]
    return False


class _Oversized:
    """
    The type of L{OVERSIZED}.
    """

    def __repr__(self) -> str:
        return "OVERSIZED"


#: What a streaming reader hands over, as a call's arguments, instead of
#: arguments it stopped building once they passed L{MAX_ARGUMENTS_SIZE}.
OVERSIZED = _Oversized()

#: The parts of each report piece that rows (and format detection) read,
#: for readers that must not build a whole piece: a dict names the keys
#: read (and what is read of their values), C{None} a scalar (a container
#: there counts as C{None}: every reader of these fields treats both alike),
#: an C{int} n the first n items of a list, as scalars.
PIECES: Mapping[str, Any] = {
    "info": {"machine": {"name": None}, "id": None, "started": None, "ended": None,
             "version": None},
    "signature": {"description": None, "name": None, "severity": None},
    "host": {"ip": None},
    "domain": {"domain": None, "ip": None},
    "http": {"uri": None, "user-agent": None, **{key: None for key in _HTTP_EXTRA}},
    # A pair is a list of exactly two strings; three items tell it is not.
    "pair": 3,
    "call": {key: None for key in ("api", "category", "status", "return", "return_value",
                                   "timestamp", "time", "thread_id", "tid", "repeated",
                                   "id")},
}


def arguments_size(value: Any, limit: int = MAX_ARGUMENTS_SIZE, depth: int = 0) -> int:
    """
    The size of a call's arguments: one for each value, plus the length of
    each string (at most L{MAX_STRING}, as strings are cut) and key.  It is
    never more than the value's JSON text length, so a call whose text is
    shorter than L{MAX_ARGUMENTS_SIZE} needs no count.  Containers deeper
    than L{SIZE_DEPTH} count one.  Breadth first and iterative; it stops as
    soon as the size passes C{limit}.

    @param depth: the nesting level of C{value} itself, for a reader that
        counts a piece of a larger value.
    """
    if value is OVERSIZED:
        return limit + 1
    total = 0
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is str:
                total += min(len(item), MAX_STRING) + 1
                continue
            total += 1
            if depth >= SIZE_DEPTH:
                continue
            if kind is dict:
                total += sum(min(len(key), MAX_STRING) + 1 for key in item)
                below.extend(item.values())
            elif kind is list:
                below.extend(item)
        if total > limit:
            return total
        level = below
        depth += 1
    return total


def _weight(value: Any) -> int:
    """
    Estimated bytes of a kept argument value: its strings' lengths and
    L{_VALUE_BYTES} for each value inside a container.
    """
    if type(value) is str:
        return len(value)
    if type(value) is not dict and type(value) is not list:
        return 0
    total = 0
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if type(item) is str:
                total += len(item)
            elif type(item) is dict:
                total += sum(map(len, item)) + _VALUE_BYTES * len(item)
                below.extend(item.values())
            elif type(item) is list:
                total += _VALUE_BYTES * len(item)
                below.extend(item)
        level = below
    return total


def _scalar(value: Any) -> str | int | None:
    if isinstance(value, str) or _int(value) is not None:
        return value
    return None


def _hex(value: int) -> str:
    """
    Format a return value like Cuckoo 1.x did; negative NTSTATUS values are
    shown as the unsigned 32-bit (or 64-bit) number Windows uses.
    """
    if value < 0:
        value &= 0xFFFFFFFF if value >= -(1 << 31) else 0xFFFFFFFFFFFFFFFF
    return "0x%08x" % (value,)


def _text_field(call: Mapping[str, Any], keys: tuple[str, str], render: Callable[[int], str]) -> str:
    """
    The first of C{keys} that C{call} has, as text: 1.x writes these fields
    as strings, 2.0 as integers (rendered with C{render}).
    """
    for key in keys:
        value = call.get(key)
        if isinstance(value, str):
            return value
        number = _int(value)
        if number is not None:
            return render(number)
    return ""


def _return(call: Mapping[str, Any]) -> str:
    return _text_field(call, ("return", "return_value"), _hex)


def _thread_id(call: Mapping[str, Any]) -> str:
    return _text_field(call, ("thread_id", "tid"), str)


def _arguments(value: Any) -> list[dict[str, Any]]:
    """
    Normalise call arguments to the 1.x list of C{{"name", "value"}}: 2.0
    dicts are converted in key order; list entries without a string name
    are dropped.
    """
    if isinstance(value, dict):
        return [{"name": name, "value": item} for name, item in value.items()]
    if isinstance(value, list):
        return [{"name": entry["name"], "value": entry.get("value")}
                for entry in value
                if isinstance(entry, dict) and isinstance(entry.get("name"), str)]
    return []


def _first_int(header: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        number = _int(header.get(key))
        if number is not None:
            return number
    return None


class FormatEvidence:
    """
    Clues about which Cuckoo wrote a report, gathered while walking it.

    Only cheap, always-visited places count (top-level keys, C{info},
    process headers, summary keys, network hosts), so both extractors see
    the same clues whatever the parsers or the call cap.
    """

    def __init__(self) -> None:
        self.cape = False
        self.version: str | None = None
        self.epoch_times = False
        self.pid_keys = False
        self.legacy_keys = False

    def top_key(self, key: str) -> None:
        if key == "CAPE":
            self.cape = True

    def info(self, info: Any) -> None:
        if not isinstance(info, dict):
            return
        version = info.get("version")
        if isinstance(version, str):
            self.version = version
            if "cape" in version.lower():
                self.cape = True
        if isinstance(info.get("started"), (int, float)) and not isinstance(
                info.get("started"), bool):
            self.epoch_times = True

    def process_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key == "pid":
                self.pid_keys = True
            elif key == "process_id":
                self.legacy_keys = True
            elif key == "module_path":
                self.cape = True

    def summary_key(self, key: str) -> None:
        if key in _CAPE_SUMMARY_KEYS:
            self.cape = True

    def host(self, host: Any) -> None:
        if isinstance(host, dict):
            self.cape = True

    def decide(self) -> str:
        """
        @return: C{"cape"}, C{"1.2"} or C{"2.0"}; 2.0 when nothing says.
        """
        if self.cape:
            return "cape"
        if self.version is not None:
            if self.version.startswith("1."):
                return "1.2"
            if self.version.startswith("2.0"):
                return "2.0"
        if self.pid_keys or self.epoch_times:
            return "2.0"
        if self.legacy_keys:
            return "1.2"
        return "2.0"


class RowCollector:
    """
    Accumulates rows, by subtype, from report pieces handed over in report
    order, and enforces the C{api_call} cap.

    Not shared between threads: each extraction makes its own.

    @ivar evidence: the L{FormatEvidence} being gathered.
    @ivar api_calls_seen: calls counted so far.
    """

    def __init__(self, options: ExtractOptions) -> None:
        self._options = options
        self._parsers = options.parsers
        self._room = max(0, options.api_calls_max) if "behavior" in self._parsers else 0
        self._info: Any = None
        self._groups: dict[str, list[ResultRow]] = {
            name: [] for name in ("info", "signature", "process", "api_call", "file",
                                  "registry_key", "mutex", "Host", "Domain",
                                  "HTTP Request", "User-Agent")}
        self._agents: set[str] = set()
        # Second -> its formatted date, for call times; at most one entry
        # per kept call.
        self._dates: dict[int, str] = {}
        self.evidence = FormatEvidence()
        self.api_calls_seen = 0
        self.values_truncated = 0
        self.values_skipped = 0
        self.rows_dropped = 0
        self._bytes_left = options.kept_bytes_max
        self._calls_admitted = 0

    # -- bounds ------------------------------------------------------------

    def _text(self, value: Any) -> str:
        """
        L{_str}, cut to L{MAX_STRING} (and counted) if longer.
        """
        if not isinstance(value, str):
            return ""
        if len(value) <= MAX_STRING:
            return value
        self.values_truncated += 1
        return value[:MAX_STRING]

    def _bounded(self, value: Any, room: int = MAX_NESTING) -> Any:
        """
        C{value} with its strings (keys included) cut to L{MAX_STRING}, or
        C{None} if it nests more than C{room} levels deep.  Each cut string
        and each value left out counts once.
        """
        kind = type(value)
        if kind in _NUMBERS:
            return value
        if kind is str:
            return self._text(value)
        if kind is not dict and kind is not list:
            return value
        if room <= 0 or _deeper_than(value, room):
            self.values_skipped += 1
            return None
        if kind is list:
            return [self._bounded(item, room - 1) for item in value]
        return {self._text(key): self._bounded(item, room - 1)
                for key, item in value.items()}

    def _admit(self, kept: int, cost: int) -> bool:
        """
        Charge one row of C{cost} bytes (see L{_ROW_BYTES}) to the budget,
        if its subtype, which already keeps C{kept} rows, and the bytes left
        allow.

        @return: whether the row may be kept; if not, it is counted.
        """
        if kept >= self._options.rows_max or cost > self._bytes_left:
            self.rows_dropped += 1
            return False
        self._bytes_left -= cost
        return True

    def _add(self, row: ResultRow, cost: int = 0) -> bool:
        """
        Keep C{row} if the budget allows (see L{_admit}).

        @param cost: the bytes its C{extra} holds beyond its text.
        @return: whether it was kept.
        """
        group = self._groups[row.subtype]
        if not self._admit(len(group), _ROW_BYTES + len(row.result) + cost):
            return False
        group.append(row)
        return True

    # -- info and signatures -------------------------------------------------

    def set_info(self, info: Any) -> None:
        """
        Remember the C{info} section; like C{json.loads}, a repeated key's
        last value wins.
        """
        self._info = info

    def add_signature(self, signature: Any) -> None:
        if "signatures" not in self._parsers or not isinstance(signature, dict):
            return
        severity = _int(signature.get("severity"))
        name = self._text(signature.get("name"))
        self._add(ResultRow("signature", self._text(signature.get("description")),
                            {"severity": severity, "name": name}), len(name))

    # -- behavior --------------------------------------------------------

    @property
    def call_room(self) -> int:
        """
        How many more calls may be kept.
        """
        return self._room

    def add_process(self, process: Mapping[str, Any]) -> None:
        """
        Add one process read whole, and its first dict calls.

        @param process: the process dict (only L{PROCESS_HEADER_KEYS} and
            C{calls} are read).
        """
        calls = process.get("calls")
        dict_calls = [call for call in calls if type(call) is dict] if type(calls) is list else []
        self.add_process_rows(process, [self.api_call(call, index)
                                        for index, call in enumerate(dict_calls[:self._room])],
                              len(dict_calls))

    def add_process_rows(self, header: Mapping[str, Any],
                         call_rows: Sequence[tuple[str, dict[str, Any]]],
                         calls_seen: int) -> None:
        """
        Add one process from its header fields and its kept calls, already
        turned into L{api_call} rows.  A streaming reader converts each call
        as soon as it is read and drops it, instead of holding thousands of
        call dicts until the process ends (measured: 2 microseconds a call
        cheaper).

        @param header: the process's fields (only L{PROCESS_HEADER_KEYS} are
            read).
        @param calls_seen: how many dict calls the process has in total.
        @param call_rows: L{api_call} of the process's first dict calls, at
            most L{call_room} of them (C{None} for those the budget left out).
        """
        self.evidence.process_keys(key for key in header if key in PROCESS_HEADER_KEYS)
        self.api_calls_seen += calls_seen
        call_rows = call_rows[:self._room]
        self._room -= len(call_rows)
        if "behavior" not in self._parsers:
            return
        name = self._text(header.get("process_name"))
        pid = _first_int(header, "pid", "process_id")
        first_seen = format_log_time(header.get("first_seen"))
        self._add(ResultRow("process", name, {
            "process_id": pid,
            "parent_id": _first_int(header, "ppid", "parent_id"),
            "first_seen": first_seen,
        }), len(first_seen))
        calls = self._groups["api_call"]
        for call_row in call_rows:
            if call_row is not None:
                api, extra = call_row
                extra["process"] = name
                extra["process_id"] = pid
                calls.append(ResultRow("api_call", api, extra))

    def api_call(self, call: Mapping[str, Any], index: int,
                 short: bool = False) -> tuple[str, dict[str, Any]] | None:
        """
        Turn one kept call into its row's result and extra columns; the
        process columns are placeholders that L{add_process_rows} fills in,
        since a process's name may come after its calls.  The row is
        charged to the budget now, so a reader holds no more rows than the
        budget allows while a process's calls go by.

        @param index: the call's position among the process's kept calls,
            its C{id} when the call has none.
        @param short: the caller vouches that no string in C{call} is longer
            than L{MAX_STRING} (its text is not), which spares the length
            checks on the hot path (and the arguments' size count: see
            L{arguments_size}).
        @return: the row's result and extra columns, or C{None} if the
            budget leaves the row out.
        """
        # Exact-type checks first: this runs for every kept call, and the
        # helpers it falls back to give the same answers.
        get = call.get
        status = get("status")
        returned = get("return")
        if returned is None:
            returned = get("return_value")
        thread = get("thread_id")
        if thread is None:
            thread = get("tid")
        kind = type(returned)
        returned = returned if kind is str else _hex(returned) if kind is int else _return(call)
        kind = type(thread)
        thread = thread if kind is str else str(thread) if kind is int else _thread_id(call)
        timestamp = get("timestamp")
        if type(timestamp) is not str:
            timestamp = self._call_time(get("time"))
        repeated = get("repeated")
        if type(repeated) is not int:
            repeated = _int(repeated) or 0
        call_id = get("id")
        if type(call_id) is not int:
            call_id = _int(call_id)
            if call_id is None:
                call_id = index
        arguments = get("arguments")
        if not short and arguments_size(arguments) > MAX_ARGUMENTS_SIZE:
            self.values_skipped += 1
            arguments = None
        arguments = ([{"name": key, "value": item} for key, item in arguments.items()]
                     if type(arguments) is dict else _arguments(arguments))
        api = get("api")
        category = get("category")
        if not short:
            api, category = self._text(api), self._text(category)
            returned, timestamp, thread = (self._text(returned), self._text(timestamp),
                                           self._text(thread))
            arguments = self._bounded_arguments(arguments)
        elif not _SCALARS.issuperset(map(type, map(_VALUE, arguments))):
            arguments = self._bounded_arguments(arguments)
        api = _str(api)
        category = _str(category)
        cost = (_ROW_BYTES + len(api) + len(category) + len(returned) + len(timestamp)
                + len(thread) + _ARGUMENT_BYTES * len(arguments)
                + sum(len(entry["name"]) + _weight(entry["value"]) for entry in arguments))
        if not self._admit(self._calls_admitted, cost):
            return None
        self._calls_admitted += 1
        return api, {
            "category": category,
            "status": bool(status) if isinstance(status, (bool, int)) else False,
            "return": returned,
            "timestamp": timestamp,
            "thread_id": thread,
            "repeated": repeated,
            "id": call_id,
            "process": None,
            "process_id": None,
            "arguments": arguments,
        }

    def _bounded_arguments(self, arguments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """
        L{_bounded} on each argument's name and value.
        """
        return [{"name": self._text(entry["name"]), "value": self._bounded(entry["value"])}
                for entry in arguments]

    def _call_time(self, value: Any) -> str:
        """
        L{format_log_time}, faster for the epoch floats of 2.0 calls: calls
        come many to a second, so the date part of each second is formatted
        once (it was a third of the time spent on a call row).
        """
        if type(value) is not float or not math.isfinite(value):
            return format_log_time(value)
        whole = math.floor(value)
        date = self._dates.get(whole)
        if date is None:
            # format_log_time of a whole second ends in ",000", or is "".
            date = self._dates[whole] = format_log_time(whole)[:-4]
        if not date:
            return ""
        return "%s,%03d" % (date, min(999, int((value - whole) * 1000)))

    def wants_summary(self, key: str) -> bool:
        """
        Note a summary key and say whether its values become rows.
        """
        self.evidence.summary_key(key)
        return "behavior" in self._parsers and key in SUMMARY_SUBTYPES

    @staticmethod
    def pairs(key: str) -> bool:
        """
        Whether the summary list C{key} holds C{[source, destination]} pairs.
        """
        return key in _PAIR_KEYS

    def add_summary_item(self, key: str, value: Any) -> None:
        """
        Add one value of the summary list C{key}, which L{wants_summary}
        accepted.  Streaming readers hand the items over one at a time.
        """
        if key in _PAIR_KEYS and isinstance(value, list) and len(value) == 2 \
                and all(isinstance(v, str) for v in value):
            value = "%s -> %s" % (value[0], value[1])
        if isinstance(value, str):
            self._add(ResultRow(SUMMARY_SUBTYPES[key], self._text(value), {"category": key}))

    # -- network ---------------------------------------------------------

    def add_host(self, host: Any) -> None:
        self.evidence.host(host)
        if "network" not in self._parsers:
            return
        ip = host.get("ip") if isinstance(host, dict) else host
        if isinstance(ip, str):
            self._add(ResultRow("Host", self._text(ip), {}))

    def add_domain(self, domain: Any) -> None:
        if "network" not in self._parsers or not isinstance(domain, dict):
            return
        name = domain.get("domain")
        if isinstance(name, str):
            ip = self._text(domain.get("ip"))
            self._add(ResultRow("Domain", self._text(name), {"ip": ip}), len(ip))

    def add_http(self, request: Any) -> None:
        if "network" not in self._parsers or not isinstance(request, dict):
            return
        uri = request.get("uri")
        if isinstance(uri, str):
            extra = {key: self._bounded(_scalar(request.get(key))) for key in _HTTP_EXTRA}
            self._add(ResultRow("HTTP Request", self._text(uri), extra),
                      sum(len(value) for value in extra.values() if type(value) is str))
        agent = request.get("user-agent")
        if isinstance(agent, str) and agent and agent not in self._agents:
            if self._add(ResultRow("User-Agent", self._text(agent), {})):
                # Only a kept agent is remembered, so the set is bounded too.
                self._agents.add(agent)

    # -- result ------------------------------------------------------------

    def finish(self) -> Extraction:
        """
        @return: the L{Extraction} of everything collected.
        """
        info = self._info
        self.evidence.info(info)
        if "info" in self._parsers and isinstance(info, dict):
            machine = info.get("machine")
            if isinstance(machine, dict):
                machine = machine.get("name")
            analysis_id = _int(info.get("id"))
            # Outside the budget: one row, whose strings are cut, and the
            # one an analyst needs most.
            self._groups["info"].append(ResultRow("info", self._text(machine), {
                "started": format_date(info.get("started")),
                "ended": format_date(info.get("ended")),
                "analysis_id": analysis_id if analysis_id is not None
                else self._options.task_id,
            }))
        rows = tuple(row for group in self._groups.values() for row in group)
        return Extraction(self.evidence.decide(), rows, self.api_calls_seen,
                          self.values_truncated, self.values_skipped, self.rows_dropped)
