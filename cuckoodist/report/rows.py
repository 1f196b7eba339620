# -*- test-case-name: tests.test_report -*-
"""
Build CRITs result rows from the small pieces of a Cuckoo report.

Both extractors, the streaming one (L{cuckoodist.report.extract}) and the
reference one (L{cuckoodist.report.plain}), walk the report their own way but
hand every piece (the C{info} dict, one signature, one process header with its
kept calls, one summary list, one network entry) to a L{RowCollector}.  All
decisions about row contents therefore live here, once, and the two
extractors can only differ in how they find the pieces.

Each row subtype always carries the same C{extra} keys, because CRITs builds
a table's columns from the first row of a subtype.  Values of the wrong type
are replaced by an empty value or the entry is skipped; nothing here raises
on report content.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from cuckoodist.report.times import format_date, format_log_time
from cuckoodist.results import ResultRow

__all__ = [
    "PARSERS",
    "ExtractOptions",
    "Extraction",
    "RowCollector",
    "PROCESS_HEADER_KEYS",
    "SUMMARY_SUBTYPES",
]

#: The parsers a stage may enable.
PARSERS = frozenset({"info", "signatures", "behavior", "network"})

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
    """

    parsers: frozenset[str]
    api_calls_max: int = 5000
    task_id: int | None = None


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
    """

    format: str
    rows: tuple[ResultRow, ...]
    api_calls_seen: int


def _int(value: Any) -> int | None:
    """
    @return: C{value} if it is a JSON integer (not a C{bool}), else C{None}.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
        self._groups["signature"].append(ResultRow(
            "signature", _str(signature.get("description")),
            {"severity": severity, "name": _str(signature.get("name"))}))

    # -- behavior --------------------------------------------------------

    @property
    def call_room(self) -> int:
        """
        How many more calls may be kept.
        """
        return self._room

    def add_process(self, header: Mapping[str, Any], kept_calls: Sequence[dict],
                    calls_seen: int) -> None:
        """
        Add one process and the calls kept from it.

        @param header: the process dict (only L{PROCESS_HEADER_KEYS} are read).
        @param kept_calls: the process's first dict calls, at most
            L{call_room} of them.
        @param calls_seen: how many dict calls the process has in total.
        """
        kept_calls = kept_calls[:self._room]
        self.add_process_rows(header, [self.api_call(call, index)
                                       for index, call in enumerate(kept_calls)],
                              calls_seen)

    def add_process_rows(self, header: Mapping[str, Any],
                         call_rows: Sequence[tuple[str, dict[str, Any]]],
                         calls_seen: int) -> None:
        """
        Like L{add_process}, with the kept calls already turned into
        L{api_call} rows.  A streaming reader converts each call as soon as
        it is read and drops it, instead of holding thousands of call dicts
        until the process ends (measured: 2 microseconds a call cheaper).

        @param call_rows: L{api_call} of the process's first dict calls, at
            most L{call_room} of them.
        """
        self.evidence.process_keys(key for key in header if key in PROCESS_HEADER_KEYS)
        self.api_calls_seen += calls_seen
        call_rows = call_rows[:self._room]
        self._room -= len(call_rows)
        if "behavior" not in self._parsers:
            return
        name = _str(header.get("process_name"))
        pid = _first_int(header, "pid", "process_id")
        self._groups["process"].append(ResultRow("process", name, {
            "process_id": pid,
            "parent_id": _first_int(header, "ppid", "parent_id"),
            "first_seen": format_log_time(header.get("first_seen")),
        }))
        calls = self._groups["api_call"]
        for api, extra in call_rows:
            extra["process"] = name
            extra["process_id"] = pid
            calls.append(ResultRow("api_call", api, extra))

    def api_call(self, call: Mapping[str, Any], index: int) -> tuple[str, dict[str, Any]]:
        """
        Turn one kept call into its row's result and extra columns; the
        process columns are placeholders that L{add_process_rows} fills in,
        since a process's name may come after its calls.

        @param index: the call's position among the process's kept calls,
            its C{id} when the call has none.
        """
        # Exact-type checks first: this runs for every kept call, and the
        # helpers it falls back to give the same answers.
        get = call.get
        status = get("status")
        value = get("return")
        if value is None:
            value = get("return_value")
        kind = type(value)
        returned = value if kind is str else _hex(value) if kind is int else _return(call)
        timestamp = get("timestamp")
        if type(timestamp) is not str:
            timestamp = self._call_time(get("time"))
        value = get("thread_id")
        if value is None:
            value = get("tid")
        kind = type(value)
        thread = value if kind is str else str(value) if kind is int else _thread_id(call)
        repeated = get("repeated")
        if type(repeated) is not int:
            repeated = _int(repeated) or 0
        call_id = get("id")
        if type(call_id) is not int:
            call_id = _int(call_id)
            if call_id is None:
                call_id = index
        arguments = get("arguments")
        return _str(get("api")), {
            "category": _str(get("category")),
            "status": bool(status) if isinstance(status, (bool, int)) else False,
            "return": returned,
            "timestamp": timestamp,
            "thread_id": thread,
            "repeated": repeated,
            "id": call_id,
            "process": None,
            "process_id": None,
            "arguments": [{"name": key, "value": item} for key, item in arguments.items()]
            if type(arguments) is dict else _arguments(arguments),
        }

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

    def add_summary(self, key: str, values: Any) -> None:
        if not self.wants_summary(key) or not isinstance(values, list):
            return
        subtype = SUMMARY_SUBTYPES[key]
        group = self._groups[subtype]
        pairs = key in _PAIR_KEYS
        for value in values:
            if pairs and isinstance(value, list) and len(value) == 2 \
                    and all(isinstance(v, str) for v in value):
                value = "%s -> %s" % (value[0], value[1])
            if isinstance(value, str):
                group.append(ResultRow(subtype, value, {"category": key}))

    # -- network ---------------------------------------------------------

    def add_host(self, host: Any) -> None:
        self.evidence.host(host)
        if "network" not in self._parsers:
            return
        ip = host.get("ip") if isinstance(host, dict) else host
        if isinstance(ip, str):
            self._groups["Host"].append(ResultRow("Host", ip, {}))

    def add_domain(self, domain: Any) -> None:
        if "network" not in self._parsers or not isinstance(domain, dict):
            return
        name = domain.get("domain")
        if isinstance(name, str):
            self._groups["Domain"].append(ResultRow("Domain", name,
                                                    {"ip": _str(domain.get("ip"))}))

    def add_http(self, request: Any) -> None:
        if "network" not in self._parsers or not isinstance(request, dict):
            return
        uri = request.get("uri")
        if isinstance(uri, str):
            self._groups["HTTP Request"].append(ResultRow(
                "HTTP Request", uri, {key: _scalar(request.get(key)) for key in _HTTP_EXTRA}))
        agent = request.get("user-agent")
        if isinstance(agent, str) and agent and agent not in self._agents:
            self._agents.add(agent)
            self._groups["User-Agent"].append(ResultRow("User-Agent", agent, {}))

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
            self._groups["info"].append(ResultRow("info", _str(machine), {
                "started": format_date(info.get("started")),
                "ended": format_date(info.get("ended")),
                "analysis_id": analysis_id if analysis_id is not None
                else self._options.task_id,
            }))
        rows = tuple(row for group in self._groups.values() for row in group)
        return Extraction(self.evidence.decide(), rows, self.api_calls_seen)
