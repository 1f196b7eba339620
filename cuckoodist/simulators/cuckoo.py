# -*- test-case-name: tests.test_sim_cuckoo -*-
"""
An in-process Cuckoo Sandbox REST API (2.0.7, or 1.2 on request).

It answers the routes cuckoodist uses with the status codes, JSON shapes,
error bodies and authentication of the real servers, as recorded in
C{docs/peers.md#cuckoo-common} and the Cuckoo sections after it: Flask
0.12 for 2.0.x (pretty-printed, key-sorted JSON; C{{"message": ...}}
errors; werkzeug HTML pages for unhandled errors) and Bottle for 1.2 (HTML
error pages, 4-space JSON).

Time is the injected clock's: a task is C{pending} until one of C{machines}
virtual machines is free, then C{running}, C{completed} and C{reported}
across C{analysis_seconds}.  State is computed lazily from the clock when a
request arrives, so the simulator schedules no timers of its own (only slow
bodies do) and a test's L{twisted.internet.task.Clock} stays empty.

Two routes exist only here and never need authentication; they are for
tests and demos, never for production clients:

  - C{GET /_sim/state}: every task (deleted ones too, flagged) and a count
    of requests per route.
  - C{POST /_sim/control}: change the failure knobs at run time with a JSON
    object; see L{CuckooSimulator.control_settings}.
"""

from __future__ import annotations

import bisect
import calendar
import hashlib
import heapq
import hmac
import io
import json
import re
import tarfile
import time
import zlib
from email.utils import formatdate
from itertools import chain, islice
from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from cuckoodist.simulators.reports import FORMATS, write_report
from cuckoodist.simulators.server import (
    FaultInjector,
    FormError,
    RequestCounter,
    header,
    check_fraction,
    check_non_negative,
    parse_control,
    parse_form,
    query_args,
    request_path,
    send_body,
)

__all__ = ["CuckooSimulator", "DEFAULT_FAIL_MARKER"]

_log = Logger()

#: A sample that contains these bytes ends as C{failed_analysis}.
DEFAULT_FAIL_MARKER = b"CUCKOODIST-FAIL-ANALYSIS"

#: Share of C{analysis_seconds} spent C{running}; the rest is processing
#: (C{completed}) before C{reported}.
_RUNNING_SHARE = 0.8

_TASK_STATUSES = ("pending", "running", "completed", "reported")

_WERKZEUG = {
    400: ("Bad Request", "The browser (or proxy) sent a request that this server could not understand."),
    404: ("Not Found", "The requested URL was not found on the server.  If you entered the URL "
          "manually please check your spelling and try again."),
    405: ("Method Not Allowed", "The method is not allowed for the requested URL."),
    500: ("Internal Server Error", "The server encountered an internal error and was unable to "
          "complete your request.  Either the server is overloaded or there is an error in the "
          "application."),
}

_BOTTLE_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                   405: "Method Not Allowed", 500: "Internal Server Error"}

_AUTH_MESSAGE = "Authentication in the form of an 'Authorization: Bearer <TOKEN>' header is required"


class _HTTPError(Exception):
    """
    Answer the current request with an error, in the active API flavour.

    @ivar code: the HTTP status.
    @ivar message: the C{message} of a 2.0 JSON error, or the text of an
        HTML page; L{None} for werkzeug's stock page (an unhandled error).
    """

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


@attrs.define
class _Sample:
    """
    A stored binary (Cuckoo keeps them even when their tasks are deleted).
    """

    id: int
    size: int
    md5: str
    sha1: str
    sha256: str
    sha512: str
    crc32: str
    head: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "file_size": self.size, "file_type": "data", "md5": self.md5,
                "crc32": self.crc32, "sha1": self.sha1, "sha256": self.sha256,
                "sha512": self.sha512, "ssdeep": None}


@attrs.define
class _Task:
    """
    One analysis task and where it is in its life.
    """

    id: int
    sample: _Sample
    filename: str
    fields: dict[str, Any]
    options: dict[str, str]
    added_on: float
    clock: float
    fails: bool
    status: str = "pending"
    started_on: float | None = None
    completed_on: float | None = None
    run_until: float | None = None
    report_at: float | None = None
    guest: str | None = None
    guest_stopped: float | None = None
    deleted: bool = False

    @property
    def next_transition(self) -> float | None:
        """
        When this task next changes status on its own, if ever.
        """
        if self.deleted:
            return None
        if self.status == "running":
            return self.run_until
        if self.status == "completed":
            return self.report_at
        return None


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _parse_bool(value: Any) -> bool:
    """
    Cuckoo 2.0.7's C{parse_bool}: named truth values, else C{int()}.

    @raise ValueError: anything else (the real server answers 500).
    """
    if value in ("true", "True", "yes", "1", "on"):
        return True
    if value in ("false", "False", "None", "no", "0", "off"):
        return False
    if isinstance(value, int):
        return bool(value)
    return bool(int(value))


def _parse_options(text: str) -> dict[str, str]:
    """
    Cuckoo's C{"k=v,k2=v2"} option string as a dict; items without C{=}
    are ignored, as Cuckoo does.
    """
    options = {}
    for item in text.split(","):
        if "=" in item:
            key, value = item.split("=", 1)
            options[key.strip()] = value.strip()
    return options


def _basename(name: str) -> str:
    """
    The last component of an uploaded file name, whatever separator the
    client used, so a hostile name cannot climb out of the task folder.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    return name if name not in ("", ".", "..") else "upload"


class CuckooSimulator:
    """
    A faithful, clock-driven stand-in for one Cuckoo node's REST API.

    @ivar resource: the L{IResource} to serve (at the root of a site).
    @ivar report_format: C{"2.0"}, C{"1.2"} or C{"cape"}; C{"1.2"} also
        switches the API to the 1.2 flavour (no auth, HTML errors, no
        C{owner}/C{unique}, status without disk space).  C{"cape"} serves
        CAPE-layout reports through the 2.0 API.
    @ivar analysis_seconds: how long a task takes from C{running} to
        C{reported}.
    @ivar machines: how many tasks may run at once.
    @ivar free_space: bytes free reported for C{diskspace}.
    @ivar fail_analysis_marker: bytes that make a sample's task end
        C{failed_analysis}.
    @ivar report_processes: processes per generated report.
    @ivar report_calls_per_process: API calls per process in a report.
    @ivar faults: the shared failure knobs (C{fail_rate},
        C{slow_body_seconds}).
    """

    version_20 = "2.0.7"
    version_12 = "1.2"
    hostname = "cuckoo-sim"
    total_space = 500 * 1024**3

    def __init__(
        self,
        clock: IReactorTime,
        *,
        report_format: str = "2.0",
        token: str = "",
        analysis_seconds: float = 5.0,
        fail_rate: float = 0.0,
        seed: int = 0,
        machines: int = 4,
        free_space: int = 400 * 1024**3,
        slow_body_seconds: float = 0.0,
        fail_analysis_marker: bytes = DEFAULT_FAIL_MARKER,
        report_processes: int = 2,
        report_calls_per_process: int = 20,
    ) -> None:
        """
        @param clock: the time source; a L{twisted.internet.task.Clock} in
            tests.
        @param token: the 2.0.7 C{api_token}; empty disables authentication.
        @param seed: seeds failure injection and report contents.
        """
        self._clock = clock
        self._token = token
        self._seed = seed
        self.report_format = self._check_format(report_format)
        self.analysis_seconds = check_non_negative("analysis_seconds", analysis_seconds)
        self.machines = self._check_machines(machines)
        self.free_space = self._check_space(free_space)
        self.fail_analysis_marker = self._check_marker(fail_analysis_marker)
        self.report_processes = self._check_count("report_processes", report_processes)
        self.report_calls_per_process = self._check_count(
            "report_calls_per_process", report_calls_per_process)
        self.faults = FaultInjector(fail_rate=fail_rate, slow_body_seconds=slow_body_seconds,
                                    seed=seed)
        self.requests = RequestCounter()
        self._tasks: dict[int, _Task] = {}
        self._samples: dict[str, _Sample] = {}
        self._cursor = clock.seconds()
        # The scheduler's indexes, all over live (not deleted) tasks unless
        # said otherwise; see catch_up.
        #: live tasks by status
        self._counts: dict[str, int] = {}
        #: how many tasks are live
        self._live = 0
        #: (-priority, id) of pending tasks; deleted ones are skipped when met
        self._pending: list[tuple[int, int]] = []
        #: (next_transition, id) of running and completed tasks, one entry
        #: each; deleted ones are skipped when met
        self._due: list[tuple[float, int]] = []
        #: every free machine number in 1.._pool (a heap: lowest first)
        self._free: list[int] = []
        self._pool = 0
        #: live tasks without completed_on (pending, running), by id
        self._unfinished: dict[int, _Task] = {}
        #: (completed_on, id) of live tasks that have one, sorted
        self._finished: list[tuple[float, int]] = []
        self.resource: IResource = _CuckooResource(self)

    def __repr__(self) -> str:
        # Never show the token.
        auth = "on" if self._token else "off"
        return f"<CuckooSimulator format={self.report_format} auth={auth} tasks={len(self._tasks)}>"

    # -- knob validation --------------------------------------------------

    @staticmethod
    def _check_format(value: Any) -> str:
        if value not in FORMATS:
            raise ValueError(f"report_format must be one of {', '.join(FORMATS)}")
        return value

    @staticmethod
    def _check_machines(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("machines must be an integer >= 1")
        return value

    @staticmethod
    def _check_count(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0")
        return value

    def _check_space(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("free_space must be an integer >= 0")
        return min(value, self.total_space)

    @staticmethod
    def _check_marker(value: Any) -> bytes:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes) or not value:
            raise ValueError("fail_analysis_marker must be a non-empty string")
        return value

    def control_settings(self) -> dict[str, Callable[[Any], Callable[[], None]]]:
        """
        The knobs C{POST /_sim/control} accepts: C{fail_rate},
        C{slow_body_seconds}, C{fail_analysis_marker}, C{report_format},
        C{analysis_seconds}, C{free_space}, C{machines},
        C{report_processes}, C{report_calls_per_process}.  A new
        C{analysis_seconds} applies to tasks that start afterwards.
        """

        def setter(name: str, check: Callable[[Any], Any], target: Any = None):
            def validate(value: Any) -> Callable[[], None]:
                checked = check(value)
                return lambda: setattr(target or self, name, checked)
            return validate

        return {
            "fail_rate": setter("fail_rate", lambda v: check_fraction("fail_rate", v), self.faults),
            "slow_body_seconds": setter(
                "slow_body_seconds", lambda v: check_non_negative("slow_body_seconds", v),
                self.faults),
            "fail_analysis_marker": setter("fail_analysis_marker", self._check_marker),
            "report_format": setter("report_format", self._check_format),
            "analysis_seconds": setter(
                "analysis_seconds", lambda v: check_non_negative("analysis_seconds", v)),
            "free_space": setter("free_space", self._check_space),
            "machines": setter("machines", self._check_machines),
            "report_processes": setter(
                "report_processes", lambda v: self._check_count("report_processes", v)),
            "report_calls_per_process": setter(
                "report_calls_per_process",
                lambda v: self._check_count("report_calls_per_process", v)),
        }

    # -- the scheduler ----------------------------------------------------

    @property
    def legacy(self) -> bool:
        """
        Whether the API behaves as Cuckoo 1.2's.
        """
        return self.report_format == "1.2"

    def _set_status(self, task: _Task, status: str) -> None:
        counts = self._counts
        counts[task.status] -= 1
        counts[status] = counts.get(status, 0) + 1
        task.status = status

    def _start_pending(self, at: float) -> None:
        """
        Give free machines to pending tasks, highest priority then oldest
        first, as Cuckoo's scheduler does; each gets the lowest numbered
        free machine (of C{1..machines}: a machine above a lowered count
        stays busy until its task completes, but is not given again).
        """
        pending, free = self._pending, self._free
        while pending and self._counts.get("running", 0) < self.machines:
            task = self._tasks[heapq.heappop(pending)[1]]
            if task.deleted:
                continue
            if self._pool < self.machines:
                # New numbers are all above the heap's: appended in order,
                # they keep it a heap.
                free.extend(range(self._pool + 1, self.machines + 1))
                self._pool = self.machines
            # Fewer tasks run than machines, so a number <= machines is
            # free, and the lowest free number is one of them.
            number = heapq.heappop(free)
            self._set_status(task, "running")
            task.guest = f"cuckoo{number}"
            task.started_on = at
            task.run_until = at + self.analysis_seconds * _RUNNING_SHARE
            task.report_at = at + self.analysis_seconds
            heapq.heappush(self._due, (task.run_until, task.id))

    def _advance(self, task: _Task, at: float) -> None:
        if task.status == "running":
            task.completed_on = at
            task.guest_stopped = at
            assert task.guest is not None
            heapq.heappush(self._free, int(task.guest[len("cuckoo"):]))
            self._set_status(task, "failed_analysis" if task.fails else "completed")
            del self._unfinished[task.id]
            bisect.insort(self._finished, (at, task.id))
            if task.status == "completed":
                assert task.report_at is not None
                heapq.heappush(self._due, (task.report_at, task.id))
        elif task.status == "completed":
            self._set_status(task, "reported")

    def catch_up(self) -> None:
        """
        Replay every status change due up to the clock's present, in time
        order, so that machines freed in the past were reused in the past.

        Each round starts what free machines allow at the cursor, then
        moves the cursor to the earliest transition due and advances every
        task due by then one step (a task whose next step is also due
        takes it in the next round, after the starts).  The heaps make
        this O(log n) per transition, and a request with nothing due costs
        a look at their tops.
        """
        now = self._clock.seconds()
        cursor = self._cursor
        due, tasks = self._due, self._tasks
        while True:
            self._start_pending(cursor)
            while due and tasks[due[0][1]].deleted:
                heapq.heappop(due)
            if not due or due[0][0] > now:
                break
            cursor = max(cursor, due[0][0])
            batch = []
            while due and due[0][0] <= cursor:
                batch.append(heapq.heappop(due)[1])
            for task_id in sorted(batch):
                task = tasks[task_id]
                if not task.deleted:
                    self._advance(task, cursor)
        self._cursor = max(cursor, now)

    # -- task creation ----------------------------------------------------

    def _store_sample(self, content: bytes) -> _Sample:
        sha256 = hashlib.sha256(content).hexdigest()
        sample = self._samples.get(sha256)
        if sample is None:
            sample = _Sample(
                id=len(self._samples) + 1, size=len(content),
                md5=hashlib.md5(content).hexdigest(), sha1=hashlib.sha1(content).hexdigest(),
                sha256=sha256, sha512=hashlib.sha512(content).hexdigest(),
                crc32="%08X" % (zlib.crc32(content) & 0xFFFFFFFF), head=content[:256])
            self._samples[sha256] = sample
        return sample

    def create_task(self, filename: str, content: bytes, form: Any) -> int | None:
        """
        Add a task as C{POST /tasks/create/file} does
        (C{docs/peers.md#cuckoo-task-create}).

        @param form: the form, with C{get(name, default)}.
        @return: the new task id, or L{None} where Cuckoo's database layer
            fails (non-numeric C{timeout}/C{priority}); the API then still
            answers C{{"task_id": null}}.
        @raise _HTTPError: C{unique} and a known sample (400), a bad boolean
            (500), as the real server answers.
        """
        self.catch_up()
        legacy = self.legacy
        if legacy:
            memory = bool(form.get("memory", ""))
            enforce_timeout = bool(form.get("enforce_timeout", ""))
            unique = False
        else:
            try:
                memory = _parse_bool(form.get("memory", 0))
                unique = _parse_bool(form.get("unique", 0))
                enforce_timeout = _parse_bool(form.get("enforce_timeout", 0))
            except ValueError:
                raise _HTTPError(500)
        sha256 = hashlib.sha256(content).hexdigest()
        if unique and sha256 in self._samples:
            raise _HTTPError(400, "This file has already been submitted")
        try:
            timeout = int(form.get("timeout", "") or 0)
            priority = int(form.get("priority", 1) or 1)
        except ValueError:
            return None
        now = self._clock.seconds()
        clock = now
        clock_text = form.get("clock", None)
        if clock_text:
            try:
                clock = float(calendar.timegm(time.strptime(clock_text, "%m-%d-%Y %H:%M:%S")))
            except ValueError:
                clock = now
        tags = form.get("tags", None)
        options_text = form.get("options", "")
        fields = {
            "package": form.get("package", ""),
            "timeout": timeout,
            "priority": priority,
            "options": options_text,
            "machine": form.get("machine", ""),
            "platform": form.get("platform", ""),
            "tags": [t.strip() for t in tags.split(",") if t.strip()] if tags else [],
            "custom": form.get("custom", ""),
            "owner": "" if legacy else form.get("owner", ""),
            "memory": memory,
            "enforce_timeout": enforce_timeout,
            "unique": unique,
            "clock": clock_text,
        }
        sample = self._store_sample(content)
        task_id = len(self._tasks) + 1
        task = self._tasks[task_id] = _Task(
            id=task_id, sample=sample, filename=_basename(filename), fields=fields,
            options=_parse_options(options_text), added_on=now, clock=clock,
            fails=self.fail_analysis_marker in content)
        self._live += 1
        self._counts[task.status] = self._counts.get(task.status, 0) + 1
        self._unfinished[task_id] = task
        heapq.heappush(self._pending, (-priority, task_id))
        self._start_pending(now)
        return task_id

    # -- views ------------------------------------------------------------

    def _date(self, epoch: float | None, rfc1123: bool) -> str | None:
        if epoch is None:
            return None
        if rfc1123:
            return formatdate(epoch, usegmt=True)
        return _utc(epoch)

    def task_dict(self, task: _Task, rfc1123: bool) -> dict[str, Any]:
        """
        A task as C{/tasks/view} (C{rfc1123=True} in 2.0) or C{/tasks/list}
        shows it (C{docs/peers.md#cuckoo-task-view}).
        """
        f = task.fields
        guest: dict[str, Any] = {}
        if task.guest is not None:
            guest = {"id": task.id, "status": "running" if task.status == "running" else "stopped",
                     "name": task.guest, "label": task.guest, "manager": "VirtualBox",
                     "started_on": _utc(task.started_on),
                     "shutdown_on": _utc(task.guest_stopped) if task.guest_stopped else None,
                     "task_id": task.id}
        entry: dict[str, Any] = {
            "id": task.id,
            "target": f"/tmp/cuckoo-tmp/upload_{task.sample.sha256[:8]}/{task.filename}",
            "category": "file",
            "timeout": f["timeout"], "priority": f["priority"], "custom": f["custom"],
            "machine": f["machine"], "package": f["package"], "platform": f["platform"],
            "memory": f["memory"], "enforce_timeout": f["enforce_timeout"],
            "clock": self._date(task.clock, rfc1123),
            "added_on": self._date(task.added_on, rfc1123),
            "started_on": self._date(task.started_on, rfc1123),
            "completed_on": self._date(task.completed_on, rfc1123),
            "status": task.status, "sample_id": task.sample.id,
            "tags": list(f["tags"]), "guest": guest,
            "errors": ["Analysis failed: simulated failure marker found in the sample"]
            if task.status == "failed_analysis" else [],
            "sample": task.sample.to_dict(),
        }
        if self.legacy:
            entry["options"] = f["options"]
        else:
            entry.update({
                "owner": f["owner"], "options": dict(task.options), "submit_id": None,
                "processing": None, "route": "none",
                "duration": int(task.completed_on - task.started_on)
                if task.completed_on is not None and task.started_on is not None else -1,
            })
        return entry

    def get_task(self, task_id: int) -> _Task | None:
        """
        @return: the live (not deleted) task with this id, if any.
        """
        task = self._tasks.get(task_id)
        if task is None or task.deleted:
            return None
        return task

    def list_tasks(self, limit: int | None, offset: int | None,
                   args: dict[str, list[str]]) -> list[dict[str, Any]]:
        """
        C{/tasks/list}: ordered by C{completed_on} ascending with NULLs
        first (SQLite's order), then filtered and paged like SQL
        (C{docs/peers.md#cuckoo-task-list}).

        @raise _HTTPError: a non-integer C{completed_after} (500).
        """
        status = args.get("status", [None])[0]
        owner = args.get("owner", [None])[0]
        after = args.get("completed_after", [None])[0]
        tasks, finished = self._tasks, self._finished
        # The live tasks in that order are the unfinished ones by id, then
        # the finished ones, which _finished keeps sorted.
        first = 0
        if after:
            after_epoch = _completed_after(after)
            # Only finished tasks pass, those with completed_on > after.
            first = bisect.bisect_right(finished, (after_epoch, float("inf")))
        done = (tasks[finished[i][1]] for i in range(first, len(finished)))
        if after or status in ("completed", "reported", "failed_analysis"):
            ordered: Any = done
        elif status in ("pending", "running"):
            ordered = iter(self._unfinished.values())
        else:
            ordered = chain(self._unfinished.values(), done)
        if status:
            ordered = (t for t in ordered if t.status == status)
        if owner and not self.legacy:
            ordered = (t for t in ordered if t.fields["owner"] == owner)
        start = offset or 0
        end = None if limit is None else start + limit
        return [self.task_dict(t, rfc1123=False) for t in islice(ordered, start, end)]

    def delete_task(self, task_id: int) -> None:
        """
        C{/tasks/delete}: the task goes, its sample stays
        (C{docs/peers.md#cuckoo-task-delete}).

        @raise _HTTPError: unknown (404) or running (500).
        """
        task = self.get_task(task_id)
        if task is None:
            raise _HTTPError(404, "Task not found")
        if task.status == "running":
            raise _HTTPError(500, "The task is currently being processed, cannot delete")
        task.deleted = True
        self._live -= 1
        self._counts[task.status] -= 1
        if task.completed_on is None:
            del self._unfinished[task.id]
        else:
            del self._finished[bisect.bisect_left(self._finished, (task.completed_on, task.id))]
        # Its entries in _pending or _due go when they come up.

    def status(self) -> dict[str, Any]:
        """
        C{/cuckoo/status} in the active flavour, with real counts
        (C{docs/peers.md#cuckoo-status}).
        """
        counts = {s: self._counts.get(s, 0) for s in _TASK_STATUSES}
        running = counts["running"]
        body: dict[str, Any] = {
            "version": self.version_12 if self.legacy else self.version_20,
            "hostname": self.hostname,
            "machines": {"total": self.machines, "available": max(self.machines - running, 0)},
            "tasks": {"total": self._live, **counts},
        }
        if not self.legacy:
            used = self.total_space - self.free_space
            space = {"free": self.free_space, "total": self.total_space, "used": used}
            body.update({
                "diskspace": {"analyses": dict(space), "binaries": dict(space)},
                "cpuload": [0.15, 0.1, 0.05], "cpu_count": 2,
                "memory": 42.0, "memavail": 4860000, "memtotal": 8380000,
                "processes": {"cuckoo": 1337},
            })
        return body

    # -- analysis output --------------------------------------------------

    def dropped_files(self, task: _Task) -> list[tuple[str, bytes]]:
        """
        The files a task "dropped": one or two small files derived from the
        sample, and one empty file that clients must skip.  Deterministic
        for a given sample.
        """
        sample = task.sample
        count = 1 + int(sample.md5[0], 16) % 2
        files = []
        for i in range(1, count + 1):
            content = (b"cuckoodist simulator: file %d dropped by %s\n" % (i, sample.sha256.encode())
                       + sample.head[: 16 * i])
            files.append((f"dropped_{i}_{sample.md5[:8]}.bin", content))
        files.append((f"empty_{sample.md5[:8]}.tmp", b""))
        return files

    def report_bytes(self, task: _Task) -> bytes:
        """
        The task's C{report.json}, generated for the uploaded sample.
        """
        out = io.BytesIO()
        write_report(
            out, self.report_format, task_id=task.id, target_name=task.filename,
            target_md5=task.sample.md5, target_size=task.sample.size,
            processes=self.report_processes, calls_per_process=self.report_calls_per_process,
            dropped=self.dropped_files(task), seed=self._seed + task.id,
            started=task.started_on or task.added_on,
            duration=int(self.analysis_seconds * _RUNNING_SHARE))
        return out.getvalue()

    def archive(self, task_id: int, which: str, mode: str) -> bytes:
        """
        The C{dropped}, C{package_files} or C{all} tar, as 2.0.7 builds it
        from the analysis folder (C{docs/peers.md#cuckoo-dropped-archive}).

        @raise _HTTPError: 500 when the folder does not exist (unknown,
            pending or deleted task), as C{os.listdir} fails there.
        """
        task = self.get_task(task_id)
        if task is None or task.status == "pending":
            raise _HTTPError(500)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode=mode) as tar:
            has_files = task.status in ("completed", "reported")
            if which in ("dropped", "all") and has_files:
                _add_dir(tar, "files", task.completed_on or 0)
                for name, content in self.dropped_files(task):
                    _add_file(tar, f"files/{name}", content, task.completed_on or 0)
            if which == "all" and task.status == "reported":
                _add_dir(tar, "reports", task.completed_on or 0)
                _add_file(tar, "reports/report.json", self.report_bytes(task),
                          task.completed_on or 0)
        return out.getvalue()

    def state(self) -> dict[str, Any]:
        """
        C{/_sim/state}: what tests assert on.
        """
        self.catch_up()
        tasks = {}
        for task in self._tasks.values():
            tasks[str(task.id)] = {
                "status": task.status, "filename": task.filename, "md5": task.sample.md5,
                "sha256": task.sample.sha256, "size": task.sample.size,
                **{k: v for k, v in task.fields.items()}, "options": dict(task.options),
                "options_string": task.fields["options"],
                "deleted": task.deleted,
            }
        return {"tasks": tasks, "requests": dict(self.requests.counts),
                "settings": {"report_format": self.report_format,
                             "analysis_seconds": self.analysis_seconds,
                             "machines": self.machines, "free_space": self.free_space,
                             "fail_rate": self.faults.fail_rate,
                             "slow_body_seconds": self.faults.slow_body_seconds}}


#: What Python 2's C{int()} accepts from a string: blanks, a sign, digits.
_PY2_INT = re.compile(r"\s*[+-]?[0-9]+\s*")

#: The unix seconds C{datetime.fromtimestamp} can turn into a date
#: (years 1 to 9999); past them it raises, and Cuckoo answers 500.
_DATETIME_SECONDS = (-62135596800, 253402300799)


def _completed_after(text: str) -> int:
    """
    C{completed_after} as Cuckoo reads it, C{datetime.fromtimestamp(int(
    text))} under Python 2: Python 3's C{int()} also takes C{"1_000"},
    which Cuckoo refuses, and a time outside the years a C{datetime} holds
    is an unhandled error there too.  The simulator's local time is UTC.

    @raise _HTTPError: 500 where Cuckoo's unhandled exception gives one.
    """
    if not _PY2_INT.fullmatch(text):
        raise _HTTPError(500)
    seconds = int(text)
    if not _DATETIME_SECONDS[0] <= seconds <= _DATETIME_SECONDS[1]:
        raise _HTTPError(500)
    return seconds


def _add_dir(tar: tarfile.TarFile, name: str, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(mtime)
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, content: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    info.mtime = int(mtime)
    tar.addfile(info, io.BytesIO(content))


_TAR_MODES = {"bz2": "w:bz2", "gz": "w:gz", "tar": "w"}


class _CuckooResource(Resource):
    """
    The HTTP face of a L{CuckooSimulator}: routing, auth and error bodies.
    """

    isLeaf = True

    def __init__(self, sim: CuckooSimulator) -> None:
        super().__init__()
        self._sim = sim
        self._routes: list[tuple[re.Pattern[str], tuple[str, ...], str, Callable]] = [
            (re.compile(r"/tasks/create/file"), ("POST",), "tasks/create/file", self._create),
            (re.compile(r"/tasks/view/(\d{1,18})"), ("GET",), "tasks/view", self._view),
            (re.compile(r"/tasks/list(?:/(\d{1,18})(?:/(\d{1,18}))?)?"), ("GET",), "tasks/list", self._list),
            (re.compile(r"/tasks/report/(\d{1,18})(?:/([^/]+))?"), ("GET",), "tasks/report",
             self._report),
            (re.compile(r"/tasks/delete/(\d{1,18})"), ("GET",), "tasks/delete", self._delete),
            (re.compile(r"/cuckoo/status"), ("GET",), "cuckoo/status", self._status),
        ]

    # -- response helpers ---------------------------------------------------

    def _json(self, request: Request, body: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        if self._sim.legacy:
            return json.dumps(body, indent=4).encode("utf-8")
        # Flask 0.12's jsonify: key-sorted, indent 2, trailing newline.
        return (json.dumps(body, indent=2, separators=(", ", ": "), sort_keys=True)
                + "\n").encode("utf-8")

    def _error(self, request: Request, error: _HTTPError) -> bytes:
        code = error.code
        request.setResponseCode(code)
        if self._sim.legacy:
            reason = _BOTTLE_REASONS.get(code, "Error")
            text = error.message or reason
            url = request_path(request)
            request.setHeader(b"content-type", b"text/html; charset=UTF-8")
            page = (
                '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html>\n    <head>\n'
                f"        <title>Error: {code} {reason}</title>\n    </head>\n    <body>\n"
                f"        <h1>Error: {code} {reason}</h1>\n"
                f"        <p>Sorry, the requested URL <tt>{_html(repr(url))}</tt>\n"
                "           caused an error:</p>\n"
                f"        <pre>{_html(text)}</pre>\n    </body>\n</html>\n")
            return page.encode("utf-8")
        if error.message is not None:
            return self._json(request, {"message": error.message}, code)
        title, text = _WERKZEUG[code]
        request.setHeader(b"content-type", b"text/html")
        return (
            '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n'
            f"<title>{code} {title}</title>\n<h1>{title}</h1>\n<p>{text}</p>\n").encode("utf-8")

    # -- dispatch -------------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        sim = self._sim
        request.setHeader(b"server", b"Machete Server")
        for name, value in ((b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"),
                            (b"x-xss-protection", b"1; mode=block"),
                            (b"pragma", b"no-cache"), (b"cache-control", b"no-cache"),
                            (b"expires", b"0")):
            request.setHeader(name, value)
        path = request_path(request)
        method = request.method.decode("ascii", "replace").upper()
        if method == "HEAD":
            method = "GET"
        if path == "/_sim/state" and method == "GET":
            return self._json(request, sim.state())
        if path == "/_sim/control" and method == "POST":
            code, problem = parse_control(request, sim.control_settings())
            if problem is not None:
                return self._json(request, problem, code)
            return self._json(request, sim.state()["settings"])
        api_path = path[3:] if path.startswith("/v1/") else path
        route_name, handler, groups, allowed = "unknown", None, (), True
        for pattern, methods, name, function in self._routes:
            match = pattern.fullmatch(api_path)
            if match:
                route_name, groups = name, match.groups()
                allowed = method in methods
                handler = function
                break
        sim.requests.hit(route_name)
        try:
            if sim._token and not sim.legacy:
                given = header(request, b"authorization") or ""
                expected = "Bearer " + sim._token
                if not hmac.compare_digest(given.encode("latin-1", "replace"),
                                           expected.encode("utf-8")):
                    raise _HTTPError(401, _AUTH_MESSAGE)
            if handler is None:
                raise _HTTPError(404, "Not Found" if sim.legacy else None)
            if not allowed:
                raise _HTTPError(405, "Method not allowed." if sim.legacy else None)
            if sim.faults.should_fail():
                raise _HTTPError(500, "Simulated failure (fail_rate)")
            return handler(request, *groups)
        except _HTTPError as e:
            return self._error(request, e)
        except Exception:
            # What Flask does with an unhandled exception: log it, answer
            # werkzeug's 500 page.
            _log.failure("Cuckoo simulator failed on {path}", path=path)
            return self._error(request, _HTTPError(500))

    # -- routes ---------------------------------------------------------------

    def _create(self, request: Request) -> bytes:
        sim = self._sim
        try:
            form = parse_form(request)
        except FormError:
            raise _HTTPError(400)
        uploads = form.files.get("file")
        if not uploads:
            # Flask: BadRequestKeyError, werkzeug's HTML 400; Bottle: an
            # AttributeError on None, a 500.
            raise _HTTPError(500 if sim.legacy else 400)
        filename, content = uploads[0]
        task_id = sim.create_task(filename, content, form)
        return self._json(request, {"task_id": task_id})

    def _view(self, request: Request, task_id: str) -> bytes:
        sim = self._sim
        sim.catch_up()
        task = sim.get_task(int(task_id))
        if task is None:
            raise _HTTPError(404, "Task not found")
        return self._json(request, {"task": sim.task_dict(task, rfc1123=not sim.legacy)})

    def _list(self, request: Request, limit: str | None, offset: str | None) -> bytes:
        sim = self._sim
        sim.catch_up()
        tasks = sim.list_tasks(int(limit) if limit else None, int(offset) if offset else None,
                               query_args(request))
        return self._json(request, {"tasks": tasks})

    def _delete(self, request: Request, task_id: str) -> bytes:
        sim = self._sim
        sim.catch_up()
        sim.delete_task(int(task_id))
        return self._json(request, {"status": "OK"})

    def _status(self, request: Request) -> bytes:
        self._sim.catch_up()
        return self._json(request, self._sim.status())

    def _report(self, request: Request, task_id_text: str, fmt: str | None) -> bytes | int:
        sim = self._sim
        sim.catch_up()
        task_id = int(task_id_text)
        fmt = fmt or "json"
        kind = fmt.lower()
        legacy = sim.legacy
        if legacy:
            documents, archives = ("json", "html", "maec", "metadata"), ("all", "dropped")
        else:
            documents, archives = ("json", "html"), ("all", "dropped", "package_files")
        if kind in archives:
            if legacy:
                mode = "w:bz2"  # Bottle reads ?tar= from the environ: always bz2
            else:
                mode = _TAR_MODES.get(query_args(request).get("tar", [""])[0], "w:bz2")
            body = sim.archive(task_id, kind, mode)
            request.setHeader(b"content-type", b"application/x-tar; charset=UTF-8")
            return send_body(request, sim._clock, body, sim.faults.slow_body_seconds)
        if kind not in documents:
            raise _HTTPError(400, "Invalid report format")
        task = sim.get_task(task_id)
        if kind != "json" or task is None or task.status != "reported":
            raise _HTTPError(404, "Report not found")
        body = sim.report_bytes(task)
        if legacy:
            request.setHeader(b"content-type", b"text/html; charset=UTF-8")
        elif fmt == "json":
            request.setHeader(b"content-type", b"application/json")
        else:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return send_body(request, sim._clock, body, sim.faults.slow_body_seconds)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
