# -*- test-case-name: tests.test_sim_cuckoo -*-
"""
Tests for L{cuckoodist.simulators.cuckoo} and L{cuckoodist.simulators.server}.

Most tests talk HTTP in memory through L{treq.testing.StubTreq}; the last
ones use real loopback sockets through L{SimulatorServer}.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import types
from typing import Any
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer

SAMPLE = b"MZ\x90\x00 a harmless test sample " * 4


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """
    Encode a multipart/form-data body by hand (StubTreq cannot stream
    treq's multipart producer).
    """
    boundary = b"----cuckoodist-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n"
                     % name.encode() + value.encode() + b"\r\n")
    for name, (filename, content) in files.items():
        parts.append(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"%s\"; "
                     b"filename=\"%s\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                     % (name.encode(), filename.encode()) + content + b"\r\n")
    parts.append(b"--" + boundary + b"--\r\n")
    return b"".join(parts), "multipart/form-data; boundary=" + boundary.decode()


class Client:
    """
    Synchronous HTTP against a resource, via StubTreq.
    """

    def __init__(self, case: SynchronousTestCase, resource: Any) -> None:
        self.case = case
        self.stub = StubTreq(resource)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                allow_redirects: bool = True) -> tuple[int, Any, bytes]:
        d = self.stub.request(method, "http://cuckoo.test" + path, data=body,
                              headers=headers or {}, allow_redirects=allow_redirects)
        response = self.case.successResultOf(d)
        content = self.case.successResultOf(self.stub.content(response))
        return response.code, response.headers, content

    def get(self, path: str, **kw: Any) -> tuple[int, Any, bytes]:
        return self.request("GET", path, **kw)

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        code, _, content = self.request(method, path, **kw)
        return code, json.loads(content)

    def submit(self, content: bytes = SAMPLE, filename: str = "sample.exe",
               headers: dict[str, str] | None = None, prefix: str = "",
               **fields: str) -> tuple[int, Any, bytes]:
        body, ctype = multipart_body(fields, {"file": (filename, content)})
        return self.request("POST", prefix + "/tasks/create/file", body=body,
                            headers={"Content-Type": ctype, **(headers or {})})


class CuckooTestCase(SynchronousTestCase):
    """
    A simulator on a L{Clock} and a client for it.
    """

    def make(self, **kw: Any) -> CuckooSimulator:
        self.clock = Clock()
        self.clock.advance(1574853981)
        self.sim = CuckooSimulator(self.clock, **kw)
        self.client = Client(self, self.sim.resource)
        return self.sim

    def state(self) -> dict[str, Any]:
        return self.client.json("GET", "/_sim/state")[1]

    def tearDown(self) -> None:
        if hasattr(self, "clock"):
            self.assertEqual(self.clock.getDelayedCalls(), [])


class CreateTests(CuckooTestCase):
    """
    C{POST /tasks/create/file}.
    """

    def test_creates_task(self) -> None:
        """
        A multipart upload answers 200 C{{"task_id": 1}} in Flask's
        formatting, with the Machete server header, and the next one gets 2.
        """
        self.make()
        code, headers, body = self.client.submit()
        self.assertEqual(code, 200)
        self.assertEqual(body, b'{\n  "task_id": 1\n}\n')
        self.assertEqual(headers.getRawHeaders(b"server"), [b"Machete Server"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(json.loads(self.client.submit(prefix="/v1")[2]), {"task_id": 2})

    def test_stores_fields(self) -> None:
        """
        Every form field is stored and the options string is parsed into a
        dict, as C{/tasks/view} shows it.
        """
        self.make()
        self.client.submit(package="exe", timeout="120", priority="3",
                           options="procmemdump=yes,route=none", machine="cuckoo1",
                           platform="windows", tags="32bit, win7", custom="c1",
                           owner="crits", memory="yes", enforce_timeout="1",
                           clock="11-27-2019 11:26:22")
        task = self.state()["tasks"]["1"]
        self.assertEqual(task["package"], "exe")
        self.assertEqual(task["timeout"], 120)
        self.assertEqual(task["priority"], 3)
        self.assertEqual(task["options"], {"procmemdump": "yes", "route": "none"})
        self.assertEqual(task["tags"], ["32bit", "win7"])
        self.assertEqual((task["custom"], task["owner"]), ("c1", "crits"))
        self.assertEqual((task["memory"], task["enforce_timeout"]), (True, True))
        self.assertEqual(task["md5"], hashlib.md5(SAMPLE).hexdigest())
        code, view = self.client.json("GET", "/tasks/view/1")
        self.assertEqual(view["task"]["options"], {"procmemdump": "yes", "route": "none"})
        self.assertEqual(view["task"]["clock"], "Wed, 27 Nov 2019 11:26:22 GMT")
        self.assertEqual(view["task"]["sample"]["sha256"], hashlib.sha256(SAMPLE).hexdigest())

    def test_hostile_filename(self) -> None:
        """
        A file name with directories keeps only its last component.
        """
        self.make()
        self.client.submit(filename="..\\..\\evil/../../x.exe")
        self.assertEqual(self.state()["tasks"]["1"]["filename"], "x.exe")

    def test_missing_file(self) -> None:
        """
        Without a C{file} field 2.0 answers werkzeug's HTML 400 and 1.2 a
        500; no task is created.
        """
        self.make()
        body, ctype = multipart_body({"package": "exe"}, {})
        code, headers, content = self.client.request(
            "POST", "/tasks/create/file", body=body, headers={"Content-Type": ctype})
        self.assertEqual(code, 400)
        self.assertIn(b"<title>400 Bad Request</title>", content)
        self.sim.report_format = "1.2"
        code, headers, content = self.client.request(
            "POST", "/tasks/create/file", body=body, headers={"Content-Type": ctype})
        self.assertEqual(code, 500)
        self.assertIn(b"Error: 500", content)
        self.assertEqual(self.state()["tasks"], {})

    def test_unique(self) -> None:
        """
        C{unique=1} refuses a sample whose sha256 is known with a 400 JSON
        message, even after its task was deleted; a new sample passes.
        """
        self.make(analysis_seconds=0)
        self.assertEqual(self.client.submit(unique="1")[0], 200)
        self.assertEqual(self.client.json("GET", "/tasks/delete/1"), (200, {"status": "OK"}))
        code, body = self.client.json("POST", "/tasks/create/file", **_submit_kw(unique="1"))
        self.assertEqual((code, body), (400, {"message": "This file has already been submitted"}))
        self.assertEqual(self.client.submit(content=b"other", unique="1")[0], 200)

    def test_bad_boolean(self) -> None:
        """
        A boolean field C{parse_bool} cannot read is an unhandled 500.
        """
        self.make()
        code, _, content = self.client.submit(memory="maybe")
        self.assertEqual(code, 500)
        self.assertIn(b"Internal Server Error", content)

    def test_database_failure(self) -> None:
        """
        A non-numeric timeout fails in Cuckoo's database layer, and the API
        still answers 200 with a null task id.
        """
        self.make()
        code, _, content = self.client.submit(timeout="soon")
        self.assertEqual((code, json.loads(content)), (200, {"task_id": None}))


def _submit_kw(**fields: str) -> dict[str, Any]:
    body, ctype = multipart_body(fields, {"file": ("sample.exe", SAMPLE)})
    return {"body": body, "headers": {"Content-Type": ctype}}


class ProgressTests(CuckooTestCase):
    """
    Status follows the clock and the machine count.
    """

    def status_of(self, task_id: int) -> str:
        return self.client.json("GET", f"/tasks/view/{task_id}")[1]["task"]["status"]

    def test_progression(self) -> None:
        """
        A task runs at once on a free machine, is C{completed} after 80% of
        C{analysis_seconds} and C{reported} at 100%.
        """
        self.make(analysis_seconds=10)
        self.client.submit()
        self.assertEqual(self.status_of(1), "running")
        self.clock.advance(7.9)
        self.assertEqual(self.status_of(1), "running")
        self.clock.advance(0.2)
        self.assertEqual(self.status_of(1), "completed")
        self.clock.advance(2)
        self.assertEqual(self.status_of(1), "reported")
        view = self.client.json("GET", "/tasks/view/1")[1]["task"]
        self.assertEqual(view["duration"], 8)
        self.assertEqual(view["guest"]["name"], "cuckoo1")

    def test_machines_limit(self) -> None:
        """
        With two machines and five tasks, three stay pending; as machines
        free up in (simulated) past time the queue drains in order.
        """
        self.make(analysis_seconds=10, machines=2)
        for i in range(5):
            self.client.submit(content=SAMPLE + bytes([i]))
        code, status = self.client.json("GET", "/cuckoo/status")
        self.assertEqual(status["tasks"], {"total": 5, "pending": 3, "running": 2,
                                           "completed": 0, "reported": 0})
        self.assertEqual(status["machines"], {"total": 2, "available": 0})
        self.clock.advance(100)
        code, status = self.client.json("GET", "/cuckoo/status")
        self.assertEqual(status["tasks"]["reported"], 5)
        starts = [self.client.json("GET", f"/tasks/view/{i}")[1]["task"]["started_on"]
                  for i in range(1, 6)]
        self.assertEqual(starts[0], starts[1])
        self.assertEqual(starts[2], starts[3])
        self.assertNotEqual(starts[1], starts[2])

    def test_failed_analysis(self) -> None:
        """
        A sample containing the marker ends C{failed_analysis} with an
        error, and has no report.
        """
        self.make(analysis_seconds=1)
        self.client.submit(content=b"xx CUCKOODIST-FAIL-ANALYSIS xx")
        self.clock.advance(5)
        task = self.client.json("GET", "/tasks/view/1")[1]["task"]
        self.assertEqual(task["status"], "failed_analysis")
        self.assertEqual(len(task["errors"]), 1)
        self.assertEqual(self.client.json("GET", "/tasks/report/1"),
                         (404, {"message": "Report not found"}))

    def test_list(self) -> None:
        """
        C{/tasks/list} filters by status, pages like SQL and shows plain
        dates.
        """
        self.make(analysis_seconds=10, machines=1)
        for i in range(3):
            self.client.submit(content=SAMPLE + bytes([i]))
        self.clock.advance(15)
        code, body = self.client.json("GET", "/tasks/list?status=reported")
        self.assertEqual([t["id"] for t in body["tasks"]], [1])
        self.assertRegex(body["tasks"][0]["completed_on"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        code, body = self.client.json("GET", "/tasks/list/1/1")
        self.assertEqual(len(body["tasks"]), 1)
        self.assertEqual(self.client.json("GET", "/tasks/list")[1]["tasks"][-1]["id"], 1)

    def test_list_completed_after(self) -> None:
        """
        C{completed_after} keeps tasks that completed strictly after it
        (unix seconds, the simulator's local time being UTC), with
        C{status}, in both flavours; tasks that have not completed never
        pass it.
        """
        for flavour in ("2.0", "1.2"):
            self.make(analysis_seconds=10, machines=1, report_format=flavour)
            start = int(self.clock.seconds())
            for i in range(3):
                self.client.submit(content=SAMPLE + bytes([i]))
            # Completions at +8 and +16 (reported at +10 and +18); the
            # third task runs from +16 to +24.
            self.clock.advance(20)
            done = self.client.json("GET", f"/tasks/list?status=reported&completed_after={start}")[1]
            self.assertEqual([t["id"] for t in done["tasks"]], [1, 2], flavour)
            later = self.client.json("GET", f"/tasks/list?status=reported&completed_after={start + 8}")[1]
            self.assertEqual([t["id"] for t in later["tasks"]], [2], flavour)
            unfinished = self.client.json("GET", f"/tasks/list?completed_after={start}")[1]
            self.assertNotIn(3, [t["id"] for t in unfinished["tasks"]], flavour)

    def test_list_completed_after_refused(self) -> None:
        """
        Cuckoo reads C{completed_after} with Python 2's C{int()} and
        C{datetime.fromtimestamp}: blanks and a sign pass, anything else
        (Python 3's C{1_000} too) or a time no C{datetime} holds is an
        unhandled error, a 500; an empty value is no filter.
        """
        self.make()
        for value in ("x", "1.5", "1_000", "", " +12 ", "-5", "253402300800", "-62135596801", "99999999999999999999"):
            code, _, _ = self.client.get(f"/tasks/list?completed_after={quote(value)}")
            expected = 200 if value in ("", " +12 ", "-5") else 500
            self.assertEqual(code, expected, value)

    def test_list_counted(self) -> None:
        """
        Task lists count in C{/_sim/state}'s requests, as C{tasks/list},
        with or without limit and offset.
        """
        self.make()
        self.client.get("/tasks/list?status=reported&completed_after=5")
        self.client.get("/tasks/list/2/1")
        self.client.get("/v1/tasks/list")
        self.assertEqual(self.state()["requests"], {"tasks/list": 3})


#: The last commit whose scheduler rescanned every task on each request:
#: the reference the indexed scheduler must match step for step.
_REFERENCE_COMMIT = "7442421e863890d6de3a24c9121a2f07cb07ab5c"


def _reference_module() -> types.ModuleType | None:
    """
    C{cuckoodist.simulators.cuckoo} as of L{_REFERENCE_COMMIT}, loaded from
    git as a separate module; L{None} without git or that commit.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = "cuckoodist/simulators/cuckoo.py"
    try:
        source = subprocess.run(["git", "-C", root, "show", f"{_REFERENCE_COMMIT}:{path}"],
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name = "cuckoodist.simulators._cuckoo_reference"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"{_REFERENCE_COMMIT[:8]}:{path}", "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


class SchedulerEquivalenceTests(SynchronousTestCase):
    """
    The indexed scheduler behaves exactly as the old one that rescanned and
    sorted every task on each request.
    """

    def setUp(self) -> None:
        self.reference = _reference_module()
        if self.reference is None:
            raise SkipTest(f"git cannot show the reference commit {_REFERENCE_COMMIT[:8]}")

    def scheduler_state(self, sim: Any) -> list[Any]:
        """
        What the scheduler decides, for every task (deleted ones too).
        """
        return [sim._cursor] + [
            (t.id, t.status, t.guest, t.started_on, t.completed_on, t.guest_stopped,
             t.run_until, t.report_at, t.deleted)
            for t in sim._tasks.values()]

    def replay(self, seed: int, steps: int) -> None:
        rng = random.Random(seed)
        sims, clocks, clients = [], [], []
        machines, seconds = rng.randint(1, 4), rng.choice([0.0, 1.0, 3.0, 10.0])
        for factory in (self.reference.CuckooSimulator, CuckooSimulator):
            clock = Clock()
            clock.advance(1574853981)
            sims.append(factory(clock, machines=machines, analysis_seconds=seconds))
            clocks.append(clock)
            clients.append(Client(self, sims[-1].resource))
        submitted = 0
        for step in range(steps):
            kind = rng.choices(
                ["submit", "delete", "control", "set", "advance", "view", "status", "list",
                 "report"], weights=[30, 8, 5, 2, 25, 8, 8, 8, 3])[0]
            if kind == "submit":
                content = SAMPLE + bytes([rng.randrange(40)])
                if rng.random() < 0.15:
                    content += b"CUCKOODIST-FAIL-ANALYSIS"
                fields = {"priority": rng.choice(["", "1", "2", "3", "-1", "7"])}
                if rng.random() < 0.1:
                    fields["unique"] = "1"
                request: Any = ("POST", "/tasks/create/file", _submit_kw(**fields))
                submitted += 1
            elif kind == "delete":
                request = ("GET", f"/tasks/delete/{rng.randint(1, submitted + 1)}", {})
            elif kind == "control":
                knobs: dict[str, Any] = {}
                if rng.random() < 0.7:
                    knobs["machines"] = rng.randint(1, 6)
                if rng.random() < 0.5:
                    knobs["analysis_seconds"] = rng.choice([0, 0.5, 1, 2.5, 4, 10])
                request = ("POST", "/_sim/control", {"body": json.dumps(knobs).encode()})
            elif kind == "set":
                # As the benchmarks do: no request, the next one catches up.
                count = rng.randint(1, 6)
                for sim in sims:
                    sim.machines = count
                request = None
            elif kind == "advance":
                delta = rng.choice([0, 0.1, 0.4, 0.5, 1, 2, 2.5, 3.7, 8, 30])
                for clock in clocks:
                    clock.advance(delta)
                request = None
            elif kind == "view":
                request = ("GET", f"/tasks/view/{rng.randint(1, submitted + 1)}", {})
            elif kind == "status":
                request = ("GET", rng.choice(["/cuckoo/status", "/_sim/state"]), {})
            elif kind == "list":
                query = rng.choice(["", "?status=reported", "?status=pending", "?status=running",
                                    "?status=completed", "?status=failed_analysis",
                                    "?completed_after={t}", "?status=reported&completed_after={t}"])
                since = int(clocks[0].seconds()) - rng.randint(0, 40)
                paging = rng.choice(["", "/3", "/2/1", "/5/4", "/0"])
                request = ("GET", f"/tasks/list{paging}{query.format(t=since)}", {})
            else:
                request = ("GET", f"/tasks/report/{rng.randint(1, submitted + 1)}", {})
            answers = []
            for client in clients:
                if request is not None:
                    method, path, kw = request
                    code, _, body = client.request(method, path, **kw)
                    answers.append((code, body))
            context = (seed, step, kind, request and request[1])
            if answers:
                self.assertEqual(answers[0], answers[1], context)
            self.assertEqual(self.scheduler_state(sims[0]), self.scheduler_state(sims[1]),
                             context)
        # Run everything out; the last request catches up.
        for clock in clocks:
            clock.advance(10_000)
        answers = [client.json("GET", "/cuckoo/status") for client in clients]
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(self.scheduler_state(sims[0]), self.scheduler_state(sims[1]))

    def test_random_schedules(self) -> None:
        """
        Seeded random submissions (priorities, failures), deletions,
        machine count and duration changes, clock advances and reads give
        the same answers and the same task states, guests and times as
        the reference, after every step.
        """
        for seed in range(6):
            self.replay(seed, 250)


class ViewAndDeleteTests(CuckooTestCase):
    """
    C{/tasks/view} and C{/tasks/delete}.
    """

    def test_view_unknown(self) -> None:
        """
        An unknown id is a 404 JSON message; a non-integer id does not match
        the route and gets werkzeug's HTML 404.
        """
        self.make()
        self.assertEqual(self.client.json("GET", "/tasks/view/9"),
                         (404, {"message": "Task not found"}))
        code, headers, content = self.client.get("/tasks/view/abc")
        self.assertEqual(code, 404)
        self.assertIn(b"<title>404 Not Found</title>", content)

    def test_wrong_method(self) -> None:
        """
        POST on a GET route is a 405.
        """
        self.make()
        self.assertEqual(self.client.request("POST", "/cuckoo/status")[0], 405)

    def test_delete(self) -> None:
        """
        Unknown -> 404, running -> 500, done -> OK; the task then vanishes
        from the API but stays in C{/_sim/state} flagged deleted.
        """
        self.make(analysis_seconds=10)
        self.assertEqual(self.client.json("GET", "/tasks/delete/1"),
                         (404, {"message": "Task not found"}))
        self.client.submit()
        self.assertEqual(self.client.json("GET", "/tasks/delete/1"),
                         (500, {"message": "The task is currently being processed, cannot delete"}))
        self.clock.advance(10)
        self.assertEqual(self.client.json("GET", "/tasks/delete/1"), (200, {"status": "OK"}))
        self.assertEqual(self.client.json("GET", "/tasks/view/1")[0], 404)
        self.assertEqual(self.client.json("GET", "/tasks/report/1")[0], 404)
        self.assertTrue(self.state()["tasks"]["1"]["deleted"])
        self.assertEqual(self.client.json("GET", "/cuckoo/status")[1]["tasks"]["total"], 0)


class ReportTests(CuckooTestCase):
    """
    C{/tasks/report/<id>[/<format>]}.
    """

    def test_not_yet(self) -> None:
        """
        Before C{reported} the report is a 404 C{Report not found}.
        """
        self.make()
        self.client.submit()
        self.clock.advance(4.5)
        self.assertEqual(self.client.json("GET", "/tasks/report/1"),
                         (404, {"message": "Report not found"}))

    def test_report(self) -> None:
        """
        The report describes the uploaded sample (name, md5, size) and is
        the same through C{/json}.
        """
        self.make(analysis_seconds=1)
        self.client.submit(filename="cmdkey.exe")
        self.clock.advance(1)
        code, headers, content = self.client.get("/tasks/report/1")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        report = json.loads(content)
        target = report["target"]["file"]
        self.assertEqual((target["name"], target["md5"], target["size"]),
                         ("cmdkey.exe", hashlib.md5(SAMPLE).hexdigest(), len(SAMPLE)))
        self.assertEqual(report["info"]["id"], 1)
        self.assertEqual(self.client.get("/v1/tasks/report/1/json")[2], content)

    def test_formats(self) -> None:
        """
        An unknown format is a 400; C{html} is a 404 (not generated).
        """
        self.make(analysis_seconds=1)
        self.client.submit()
        self.clock.advance(1)
        self.assertEqual(self.client.json("GET", "/tasks/report/1/pdf"),
                         (400, {"message": "Invalid report format"}))
        self.assertEqual(self.client.json("GET", "/tasks/report/1/html")[0], 404)

    def test_legacy_report(self) -> None:
        """
        In 1.2 mode the report is a 1.2 report served as text/html, and
        errors are HTML pages.
        """
        self.make(analysis_seconds=1, report_format="1.2")
        self.client.submit()
        self.clock.advance(1)
        code, headers, content = self.client.get("/tasks/report/1")
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=UTF-8"])
        self.assertEqual(json.loads(content)["info"]["version"], "1.2")
        code, headers, content = self.client.get("/tasks/view/7")
        self.assertEqual(code, 404)
        self.assertIn(b"<pre>Task not found</pre>", content)

    def members(self, data: bytes) -> dict[str, bytes | None]:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}

    def test_dropped(self) -> None:
        """
        The dropped archive is tar.bz2 by default with a C{files/} folder,
        one or two small files derived from the sample and one empty file;
        it is the same on every call.
        """
        self.make(analysis_seconds=1)
        self.client.submit()
        self.clock.advance(1)
        code, headers, data = self.client.get("/tasks/report/1/dropped")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"),
                         [b"application/x-tar; charset=UTF-8"])
        bz2.decompress(data)
        members = self.members(data)
        self.assertIsNone(members.pop("files"))
        self.assertTrue(all(name.startswith("files/") for name in members))
        empty = [n for n, c in members.items() if c == b""]
        full = [n for n, c in members.items() if c]
        self.assertEqual(len(empty), 1)
        self.assertIn(len(full), (1, 2))
        self.assertTrue(all(hashlib.sha256(SAMPLE).hexdigest().encode() in members[n]
                            for n in full))
        self.assertEqual(self.client.get("/tasks/report/1/dropped")[2], data)

    def test_dropped_modes(self) -> None:
        """
        C{?tar=gz} and C{?tar=tar} change the compression in 2.0; 1.2
        always answers bz2.
        """
        self.make(analysis_seconds=1)
        self.client.submit()
        self.clock.advance(1)
        gz = self.client.get("/tasks/report/1/dropped?tar=gz")[2]
        gzip.decompress(gz)
        plain = self.client.get("/tasks/report/1/dropped?tar=tar")[2]
        self.assertEqual(self.members(gz), self.members(plain))
        self.assertEqual(plain[257:262], b"ustar")
        self.sim.report_format = "1.2"
        bz2.decompress(self.client.get("/tasks/report/1/dropped?tar=gz")[2])

    def test_dropped_unknown(self) -> None:
        """
        An id without an analysis folder makes the real server crash: 500.
        """
        self.make()
        self.assertEqual(self.client.get("/tasks/report/5/dropped")[0], 500)


class StatusTests(CuckooTestCase):
    """
    C{/cuckoo/status}.
    """

    def test_shape_20(self) -> None:
        """
        2.0 has analyses/binaries disk space and no C{temporary}; the
        C{free_space} knob drives C{free} and C{used}.
        """
        self.make(free_space=1000)
        code, body = self.client.json("GET", "/cuckoo/status")
        self.assertEqual(body["version"], "2.0.7")
        self.assertEqual(sorted(body["diskspace"]), ["analyses", "binaries"])
        self.assertEqual(body["diskspace"]["analyses"]["free"], 1000)
        space = body["diskspace"]["binaries"]
        self.assertEqual(space["used"] + space["free"], space["total"])

    def test_shape_12(self) -> None:
        """
        1.2 has only version, hostname, machines and tasks.
        """
        self.make(report_format="1.2")
        code, body = self.client.json("GET", "/cuckoo/status")
        self.assertEqual(sorted(body), ["hostname", "machines", "tasks", "version"])


class AuthTests(CuckooTestCase):
    """
    2.0.7 bearer tokens.
    """

    def test_required_everywhere(self) -> None:
        """
        Without the exact C{Bearer <token>} header every route, known or
        not, answers the 401 JSON message; C{/_sim} routes need nothing.
        """
        self.make(token="s3cret-token")
        expected = (401, {"message": "Authentication in the form of an "
                                     "'Authorization: Bearer <TOKEN>' header is required"})
        self.assertEqual(self.client.json("GET", "/cuckoo/status"), expected)
        self.assertEqual(self.client.json("GET", "/nothing/here"), expected)
        for wrong in ("bearer s3cret-token", "Bearer  s3cret-token", "Bearer s3cret-tokenX",
                      "Token s3cret-token"):
            self.assertEqual(self.client.json("GET", "/cuckoo/status",
                                              headers={"Authorization": wrong}), expected)
        code, body = self.client.json(
            "GET", "/cuckoo/status", headers={"Authorization": "Bearer s3cret-token"})
        self.assertEqual(code, 200)
        self.assertEqual(self.client.submit(headers={"Authorization": "Bearer s3cret-token"})[0],
                         200)
        self.assertEqual(self.client.json("GET", "/_sim/state")[0], 200)

    def test_token_not_in_repr(self) -> None:
        """
        The token never shows in the simulator's repr.
        """
        sim = self.make(token="s3cret-token")
        self.assertNotIn("s3cret", repr(sim))

    def test_legacy_has_no_auth(self) -> None:
        """
        Cuckoo 1.2 had no authentication.
        """
        self.make(token="s3cret-token", report_format="1.2")
        self.assertEqual(self.client.get("/cuckoo/status")[0], 200)


class FaultTests(CuckooTestCase):
    """
    Failure injection and the control route.
    """

    def codes(self, sim_seed: int, count: int) -> list[int]:
        self.make(fail_rate=0.5, seed=sim_seed)
        return [self.client.get("/cuckoo/status")[0] for _ in range(count)]

    def test_fail_rate(self) -> None:
        """
        With C{fail_rate} 0.5 some requests answer 500 and others 200, and
        the same seed gives the same sequence.
        """
        first = self.codes(7, 40)
        self.assertEqual(set(first), {200, 500})
        self.assertEqual(self.codes(7, 40), first)
        self.assertNotEqual(self.codes(8, 40), first)

    def test_control(self) -> None:
        """
        C{POST /_sim/control} changes knobs at run time.
        """
        self.make()
        code, body = self.client.json("POST", "/_sim/control",
                                      body=json.dumps({"fail_rate": 1.0}).encode())
        self.assertEqual((code, body["fail_rate"]), (200, 1.0))
        self.assertEqual(self.client.json("GET", "/cuckoo/status"),
                         (500, {"message": "Simulated failure (fail_rate)"}))
        self.client.request("POST", "/_sim/control",
                            body=json.dumps({"fail_rate": 0, "free_space": 0,
                                             "report_format": "1.2"}).encode())
        code, body = self.client.json("GET", "/cuckoo/status")
        self.assertEqual(code, 200)
        self.assertEqual(body["version"], "1.2")

    def test_control_rejects(self) -> None:
        """
        Unknown keys and bad values are a 400 and change nothing.
        """
        self.make()
        for bad in ({"nope": 1}, {"fail_rate": 2}, {"fail_rate": 0.5, "machines": 0},
                    {"report_format": "3.0"}, [1]):
            code, body = self.client.json("POST", "/_sim/control", body=json.dumps(bad).encode())
            self.assertEqual(code, 400, bad)
        settings = self.state()["settings"]
        self.assertEqual((settings["fail_rate"], settings["machines"]), (0.0, 4))

    def test_fail_marker_control(self) -> None:
        """
        The failure marker can be changed at run time.
        """
        self.make(analysis_seconds=1)
        self.client.request("POST", "/_sim/control",
                            body=json.dumps({"fail_analysis_marker": "BOOM"}).encode())
        self.client.submit(content=b"...BOOM...")
        self.clock.advance(2)
        self.assertEqual(self.state()["tasks"]["1"]["status"], "failed_analysis")

    def test_slow_body(self) -> None:
        """
        With C{slow_body_seconds} the headers come at once but the whole
        report only once the clock has advanced that long.
        """
        self.make(analysis_seconds=1, slow_body_seconds=5)
        self.client.submit()
        self.clock.advance(1)
        d = self.client.stub.get("http://cuckoo.test/tasks/report/1")
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.client.stub.content(response)
        self.assertNoResult(body)
        self.clock.advance(4.5)
        self.client.stub.flush()
        self.assertNoResult(body)
        self.clock.advance(0.5)
        self.client.stub.flush()
        self.assertEqual(json.loads(self.successResultOf(body))["info"]["id"], 1)

    def test_request_counts(self) -> None:
        """
        C{/_sim/state} counts requests per route, not its own.
        """
        self.make()
        self.client.get("/cuckoo/status")
        self.client.get("/v1/cuckoo/status")
        self.client.get("/tasks/view/3")
        self.assertEqual(self.state()["requests"], {"cuckoo/status": 2, "tasks/view": 1})


class RealSocketTests(TestCase):
    """
    The simulator over real loopback sockets.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.sim = CuckooSimulator(reactor, analysis_seconds=0.1)
        self.server = SimulatorServer(reactor, self.sim.resource, port=0)
        self.server.start_listening()
        self.addCleanup(self.server.close)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def test_round_trip(self) -> None:
        """
        Submit over TCP, wait for the report, download it.
        """
        body, ctype = multipart_body({}, {"file": ("a.exe", SAMPLE)})
        url = self.server.url
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+$")
        response = await self.http.post(url + "/tasks/create/file", data=body,
                                        headers={"Content-Type": ctype})
        self.assertEqual(json.loads(await response.content()), {"task_id": 1})
        from twisted.internet.task import deferLater
        await deferLater(self.reactor, 0.3, lambda: None)
        response = await self.http.get(url + "/tasks/report/1")
        report = json.loads(await response.content())
        self.assertEqual(report["target"]["file"]["md5"], hashlib.md5(SAMPLE).hexdigest())

    async def test_stop_start(self) -> None:
        """
        After C{stop_listening} connections are refused; C{start_listening}
        serves again on the same port.
        """
        from twisted.internet.error import ConnectionRefusedError

        port = self.server.port
        await self.server.stop_listening()
        self.assertFalse(self.server.listening)
        with self.assertRaises(ConnectionRefusedError):
            await self.http.get(self.server.url + "/cuckoo/status")
        self.assertEqual(self.server.start_listening(), port)
        response = await self.http.get(self.server.url + "/cuckoo/status")
        self.assertEqual(response.code, 200)
        await response.content()

    async def test_stop_drops_connections(self) -> None:
        """
        C{stop_listening} also cuts a response that is still trickling, as
        a crashed server would.
        """
        from twisted.internet.task import deferLater
        from twisted.web.client import ResponseFailed

        self.sim.faults.slow_body_seconds = 30
        body, ctype = multipart_body({}, {"file": ("a.exe", SAMPLE)})
        response = await self.http.post(self.server.url + "/tasks/create/file", data=body,
                                        headers={"Content-Type": ctype})
        await response.content()
        await deferLater(self.reactor, 0.3, lambda: None)
        response = await self.http.get(self.server.url + "/tasks/report/1")
        content = response.content()
        await self.server.stop_listening()
        with self.assertRaises(ResponseFailed):
            await content


class HostileUploadTests(CuckooTestCase):
    """
    Broken uploads get the real server's error, never a crash.
    """

    def test_broken_multipart(self) -> None:
        """
        A multipart body that does not parse is a 400 and creates nothing.
        """
        self.make()
        code, _, content = self.client.request(
            "POST", "/tasks/create/file", body=b"--b\r\ngarbage",
            headers={"Content-Type": "multipart/form-data; boundary=b"})
        self.assertEqual(code, 400)
        self.assertEqual(self.state()["tasks"], {})

    def test_huge_id(self) -> None:
        """
        An id too long for the database is simply not found.
        """
        self.make()
        self.assertEqual(self.client.get("/tasks/view/" + "9" * 5000)[0], 404)
        self.assertEqual(self.client.get("/tasks/report/" + "9" * 5000 + "/dropped")[0], 404)


class CommandTests(TestCase):
    """
    C{cuckoodist simulate} and the C{cuckoodist} entry point.
    """

    def run_main(self, argv: list[str]) -> tuple[int, str]:
        from cuckoodist.cli import main

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        return main(argv), err.getvalue()

    def test_bad_usage(self) -> None:
        """
        No command, an unknown command or a bad value print one line and
        return 2.
        """
        for argv in ([], ["bogus"], ["simulate", "--fail-rate", "2"],
                     ["simulate", "--cuckoo-port", "70000"],
                     ["simulate", "--report-format", "3.0"], ["simulate", "--nope"]):
            code, err = self.run_main(argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(err.count("\n"), 1, (argv, err))
            self.assertTrue(err.startswith("cuckoodist: "), err)

    def test_options(self) -> None:
        """
        Options parse with their types; the key comes from the environment
        when not given, and never shows in the repr.
        """
        from cuckoodist.simulators.command import SimulateOptions

        self.patch(os, "environ", {"CUCKOODIST_SIM_CRITS_API_KEY": "env-key"})
        options = SimulateOptions()
        options.parseOptions(["--cuckoo-port", "0", "--analysis-seconds", "1.5",
                              "--cuckoo-token", "tok"])
        self.assertEqual((options["cuckoo-port"], options["analysis-seconds"]), (0, 1.5))
        self.assertEqual(options["crits-api-key"], "env-key")
        self.assertNotIn("tok", repr(options))

    async def test_start(self) -> None:
        """
        C{start_simulators} listens on both ports, prints one line each
        with the URL and no credential, and both answer.
        """
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        from cuckoodist.simulators.command import SimulateOptions, start_simulators

        options = SimulateOptions()
        options.parseOptions(["--cuckoo-port", "0", "--crits-port", "0",
                              "--cuckoo-token", "tok3n", "--crits-api-key", "k3y"])
        out = io.StringIO()
        servers = start_simulators(reactor, options, out)
        for server in servers:
            self.addCleanup(server.close)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn(servers[0].url, lines[0])
        self.assertIn(servers[1].url, lines[1])
        self.assertNotIn("tok3n", out.getvalue())
        self.assertNotIn("k3y", out.getvalue())
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.get(servers[0].url + "/cuckoo/status",
                                  headers={"Authorization": "Bearer tok3n"})
        self.assertEqual(response.code, 200)
        await response.content()
        response = await http.post(servers[1].url + "/api/v1/services/?username=analyst"
                                   "&api_key=k3y", data=b"object_type=Sample",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(json.loads(await response.content())["return_code"], 1)

    async def test_port_taken(self) -> None:
        """
        A taken port is a clean error naming the address and the simulator.
        """
        from twisted.internet import reactor

        from cuckoodist.simulators.command import (
            SimulateOptions, SimulatorStartError, start_simulators)

        blocker = SimulatorServer(reactor, CuckooSimulator(reactor).resource)
        taken = blocker.start_listening()
        self.addCleanup(blocker.close)
        options = SimulateOptions()
        options.parseOptions(["--cuckoo-port", "0", "--crits-port", str(taken)])
        with self.assertRaises(SimulatorStartError) as caught:
            start_simulators(reactor, options, io.StringIO())
        self.assertIn(f"127.0.0.1:{taken}", str(caught.exception))
        self.assertIn("CRITs", str(caught.exception))
