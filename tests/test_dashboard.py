"""
The dashboard's HTTP side (issue #14): the JSON it serves, its static
files and headers, and resubmitting from it, over real twisted.web on a
loopback port; the end-to-end resubmit with a real daemon, RabbitMQ and
the simulators.  The page in a browser is tests.test_dashboard_browser.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from cuckoodist.config import parse_config
from cuckoodist.analyses import FORGET_AFTER, UNSEEN_STALL, analysis_board
from cuckoodist.dashboard.install import install_dashboard
from cuckoodist.node_status import node_board
from cuckoodist.dashboard.state import IN_FLIGHT_SHOWN, stall_after
from cuckoodist.dump import DumpRecord, DumpStore
from cuckoodist.registry import STAGES
from cuckoodist.sample_context import Sample
from cuckoodist.stages.base import StageContext
from tests import harness
from tests.memory import MemoryReactor

TOKEN = "dashboard-test-token-0123456789"
CRITS_KEY = "crits-api-key-SECRET-4242"
CUCKOO_TOKEN = "cuckoo-token-SECRET-4343"
AMQP_PASSWORD = "amqp-password-SECRET-4444"
SECRETS = (TOKEN, CRITS_KEY, CUCKOO_TOKEN, AMQP_PASSWORD)

#: What every POST to the resubmit API needs besides the token.
CSRF = {"Content-Type": ["application/json"], "X-Cuckoodist-CSRF": ["1"]}


def _doc(dump_dir: str, token: str = TOKEN) -> dict:
    """
    A configuration with every stage and every kind of secret; nothing in
    it is ever contacted (the stages are not started).
    """
    return {
        "amqp": f"amqp://user:{AMQP_PASSWORD}@127.0.0.1:1/",
        "http_timeout": 20,
        "crits": {"url": "http://127.0.0.1:1", "username": "analyst", "api_key": CRITS_KEY},
        "cuckoo": {"sim": {"url": "http://127.0.0.1:2", "token": CUCKOO_TOKEN}, "idle": {"url": "http://127.0.0.1:3"}},
        "dashboard": {"token": token},
        "metrics": {"listen": ""},
        "stages": [
            {"type": "feed_cuckoo", "cuckoo": "sim", "consumer_queue": "q/feed", "producer_queue": "q/check", "failed_queue": "q/failed"},
            {"type": "check_results", "consumer_queue": "q/check", "producer_queue": "q/parse", "failed_queue": "q/failed"},
            {"type": "parse_and_submit", "consumer_queue": "q/parse", "failed_queue": "q/failed"},
            {"type": "overseer", "consumer_queue": "q/failed", "dump_dir": dump_dir},
        ],
    }


class Served:
    """
    A dashboard of a daemon that was built but not started (no broker, no
    peers), on a real loopback port, with a L{Clock} for its time.
    """

    def __init__(self, testcase: TestCase, token: str = TOKEN) -> None:
        self.dump_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dump_dir)
        # A test clock whose thread pool runs inline (the dump files).
        self.clock = MemoryReactor()
        self.clock.advance(1_000_000)
        self.config = parse_config(_doc(self.dump_dir, token))
        self.context = StageContext(reactor=self.clock, connection=None, http=None, config=self.config, stage_types=STAGES)
        self.stages = [STAGES[s.type](self.context, s) for s in self.config.stages]
        root = Resource()
        self.service = install_dashboard(root, self.context, self.stages)
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def get(self, path: str, headers: dict | None = None) -> tuple[Any, bytes]:
        response = await Agent(reactor, pool=self.pool).request(
            b"GET", (self.base + path).encode("ascii"), Headers(headers or {})
        )
        return response, await readBody(response)

    async def state(self) -> dict:
        response, body = await self.get("/dashboard/api/state")
        assert response.code == 200, (response.code, body)
        return json.loads(body)

    async def post(self, body: Any, headers: dict) -> tuple[int, dict, Any]:
        response = await treq.post(
            self.base + "/dashboard/api/resubmit",
            data=json.dumps(body).encode() if not isinstance(body, bytes) else body,
            headers=headers,
            pool=self.pool,
        )
        return response.code, json.loads(await response.content()), response


class StateTests(TestCase):
    """
    C{/dashboard/api/state}.
    """

    async def test_shape(self) -> None:
        """
        One row per configured stage, in order, with the contract's keys; a
        stage not started is C{stopped}; queue depths are unknown without
        a connection; every configured node is listed, never probed.
        """
        served = Served(self)
        state = await served.state()
        self.assertEqual(
            sorted(state),
            sorted(["stages", "in_flight", "in_flight_total", "failures", "dump", "nodes", "resubmit_enabled", "now"]),
        )
        self.assertEqual([(s["stage"], s["queue"]) for s in state["stages"]], [
            ("feed_cuckoo", "q/feed"), ("check_results", "q/check"), ("parse_and_submit", "q/parse"), ("overseer", "q/failed"),
        ])
        for row in state["stages"]:
            self.assertEqual(sorted(row), sorted(
                ["stage", "queue", "depth", "consumers", "in_flight", "processed_rate", "failed_rate", "consuming"]))
            self.assertEqual((row["depth"], row["consumers"], row["in_flight"], row["consuming"]), (None, None, 0, "stopped"))
        self.assertEqual(state["in_flight"], [])
        self.assertEqual(state["in_flight_total"], 0)
        self.assertEqual(state["failures"], [])
        self.assertEqual(state["dump"], {"count": 0, "entries": []})
        self.assertEqual([n["name"] for n in state["nodes"]], ["sim", "idle"])
        self.assertEqual({n["probed_at"] for n in state["nodes"]}, {None})
        self.assertIs(state["resubmit_enabled"], True)
        self.assertEqual(state["now"], served.clock.seconds())

    async def test_rates(self) -> None:
        """
        A stage's rates come from its counters' change between the
        history's readings.
        """
        served = Served(self)
        metrics = served.context.metrics
        served.service.history.sample()
        metrics.succeeded.labels("check_results", "q/check").inc(30)
        metrics.failed.labels("check_results", "q/check", "transient").inc(5)
        metrics.failed.labels("check_results", "q/check", "permanent").inc(5)
        served.clock.advance(10)
        served.service.history.sample()
        rows = {row["queue"]: row for row in (await served.state())["stages"]}
        self.assertEqual((rows["q/check"]["processed_rate"], rows["q/check"]["failed_rate"]), (3.0, 1.0))
        self.assertEqual((rows["q/feed"]["processed_rate"], rows["q/feed"]["failed_rate"]), (0.0, 0.0))

    async def test_in_flight(self) -> None:
        """
        Deliveries in flight are listed oldest first with what the stage
        learnt of them, and stand out as stalled once older than their
        stage's threshold.
        """
        served = Served(self)
        activity = served.context.activity
        with ExitStack() as stack:
            old = Sample("check_results", "q/check", analysis_id="a-old", task_id=7, sample_name="old.exe", cuckoo="sim")
            stack.enter_context(activity.handling(old))
            served.clock.advance(stall_after("check_results", served.config.http_timeout) - 5)
            new = Sample("parse_and_submit", "q/parse", analysis_id="a-new", sample_name="new.exe", cuckoo="sim")
            stack.enter_context(activity.handling(new))
            served.clock.advance(10)
            state = await served.state()
        self.assertEqual(state["in_flight_total"], 2)
        self.assertEqual(state["in_flight"], [
            {"analysis_id": "a-old", "sample_name": "old.exe", "cuckoo": "sim", "task_id": 7, "stage": "check_results",
             "age": stall_after("check_results", 20) + 5, "stalled": True},
            {"analysis_id": "a-new", "sample_name": "new.exe", "cuckoo": "sim", "task_id": None, "stage": "parse_and_submit",
             "age": 10.0, "stalled": False},
        ])
        self.assertEqual((await served.state())["in_flight"], [])

    async def test_waiting_analyses(self) -> None:
        """
        An analysis a stage passed on stays in flight between deliveries,
        at the stage it waits for, with what the stages learnt of it; it
        stands out as stalled when no stage saw it for L{UNSEEN_STALL},
        and leaves when finished, failed for good or forgotten.
        """
        served = Served(self)
        board = analysis_board(served.context)
        fed = Sample("feed_cuckoo", "q/feed", analysis_id="a1", sample_name="one.exe", cuckoo="sim", task_id=5)
        board.passed(fed)
        served.clock.advance(30)
        board.passed(Sample("feed_cuckoo", "q/feed", analysis_id="a2", sample_name="two.exe", cuckoo="sim", task_id=6))
        served.clock.advance(10)
        # a2 is being checked now: the row is the delivery's, aged from the
        # analysis's first sighting.
        with served.context.activity.handling(Sample("check_results", "q/check", analysis_id="a2", task_id=6, cuckoo="sim")):
            served.clock.advance(2)
            state = await served.state()
        self.assertEqual(state["in_flight_total"], 2)
        self.assertEqual(state["in_flight"], [
            {"analysis_id": "a1", "sample_name": "one.exe", "cuckoo": "sim", "task_id": 5, "stage": "check_results",
             "age": 42.0, "stalled": False},
            {"analysis_id": "a2", "sample_name": "two.exe", "cuckoo": "sim", "task_id": 6, "stage": "check_results",
             "age": 12.0, "stalled": False},
        ])
        board.passed(Sample("check_results", "q/check", analysis_id="a2", task_id=6, cuckoo="sim"))
        served.clock.advance(UNSEEN_STALL - 10)
        rows = {row["analysis_id"]: row for row in (await served.state())["in_flight"]}
        self.assertEqual((rows["a1"]["stalled"], rows["a2"]["stalled"]), (True, False))
        board.passed(Sample("parse_and_submit", "q/parse", analysis_id="a2"))
        board.failed(Sample("feed_cuckoo", "q/feed", analysis_id="a3"), final=False)
        board.failed(Sample("check_results", "q/check", analysis_id="a4"), final=True)
        self.assertEqual([row["analysis_id"] for row in (await served.state())["in_flight"]], ["a1", "a3"])
        served.clock.advance(FORGET_AFTER + 1)
        state = await served.state()
        self.assertEqual((state["in_flight"], state["in_flight_total"]), ([], 0))

    async def test_in_flight_capped(self) -> None:
        """
        The list holds the oldest L{IN_FLIGHT_SHOWN}; the total counts all.
        """
        served = Served(self)
        with ExitStack() as stack:
            for i in range(IN_FLIGHT_SHOWN + 5):
                stack.enter_context(served.context.activity.handling(Sample("feed_cuckoo", "q/feed", analysis_id=f"a{i}")))
                served.clock.advance(1)
            state = await served.state()
        self.assertEqual(state["in_flight_total"], IN_FLIGHT_SHOWN + 5)
        self.assertEqual([a["analysis_id"] for a in state["in_flight"]], [f"a{i}" for i in range(IN_FLIGHT_SHOWN)])

    async def test_failures_and_dump(self) -> None:
        """
        Recent failures, newest first, and the dump's entries with their
        reasons; an unreadable dump file is listed as such.
        """
        served = Served(self)
        sample = Sample("parse_and_submit", "q/parse", analysis_id="a1", task_id=3)
        served.context.activity.failed(sample, "CRITs answered 500", final=False)
        served.clock.advance(5)
        served.context.activity.failed(Sample("feed_cuckoo", "q/feed", analysis_id="a2"), "bad sample", final=True)
        path = DumpStore(served.dump_dir).write(DumpRecord(
            stage="feed_cuckoo", queue="q/feed", reason="bad sample", message="{}", dumped_at=12345.0, analysis_id="a2"))
        with open(os.path.join(served.dump_dir, "0-broken.json"), "w") as fp:
            fp.write("{not json")
        state = await served.state()
        self.assertEqual(state["failures"], [
            {"at": served.clock.seconds(), "stage": "feed_cuckoo", "queue": "q/feed", "analysis_id": "a2", "task_id": None,
             "reason": "bad sample", "final": True},
            {"at": served.clock.seconds() - 5, "stage": "parse_and_submit", "queue": "q/parse", "analysis_id": "a1",
             "task_id": 3, "reason": "CRITs answered 500", "final": False},
        ])
        self.assertEqual(state["dump"]["count"], 2)
        broken, entry = state["dump"]["entries"]
        self.assertEqual(entry, {"file": os.path.basename(path), "analysis_id": "a2", "stage": "feed_cuckoo",
                                 "reason": "bad sample", "dumped_at": 12345.0})
        self.assertEqual(broken["file"], "0-broken.json")
        self.assertTrue(broken["reason"].startswith("unreadable"), broken)

    async def test_nodes(self) -> None:
        """
        A node shows its last probe's answer, or why the probe failed.
        """
        served = Served(self)
        board = node_board(served.context)
        board.reporter("sim")({"tasks": {"pending": 4, "running": 2}, "diskspace": {"analyses": {"free": 1234}}}, "")
        nodes = {n["name"]: n for n in (await served.state())["nodes"]}
        self.assertEqual(nodes["sim"], {"name": "sim", "pending": 4, "running": 2, "free_disk": 1234,
                                        "probed_at": served.clock.seconds(), "error": ""})
        self.assertEqual(nodes["idle"]["probed_at"], None)
        served.clock.advance(3)
        board.reporter("sim")(None, "connection refused")
        nodes = {n["name"]: n for n in (await served.state())["nodes"]}
        self.assertEqual((nodes["sim"]["probed_at"], nodes["sim"]["pending"], nodes["sim"]["error"]),
                         (served.clock.seconds(), None, "connection refused"))

    async def test_no_secrets(self) -> None:
        """
        No configured secret is ever served, not even when an error text
        quotes one.
        """
        served = Served(self)
        for secret in SECRETS:
            served.context.activity.failed(Sample("overseer", "q/failed", analysis_id="a"), f"peer said {secret}!", final=True)
        DumpStore(served.dump_dir).write(DumpRecord(
            stage="overseer", queue="q/failed", reason=f"key {CRITS_KEY}", message=json.dumps({"api_key": CRITS_KEY})))
        served.service.history.sample()
        bodies = []
        for path in ("/dashboard/api/state", "/dashboard/api/history", "/dashboard/", "/dashboard/static/dashboard.js"):
            response, body = await served.get(path)
            self.assertEqual(response.code, 200, path)
            bodies.append(body)
        for body in bodies:
            for secret in SECRETS:
                self.assertNotIn(secret.encode(), body)
        state = json.loads(bodies[0])
        self.assertEqual({f["reason"] for f in state["failures"]}, {"peer said ***!"})
        self.assertEqual(state["dump"]["entries"][0]["reason"], "key ***")
        self.assertNotIn(TOKEN, repr(served.config))

    async def test_history(self) -> None:
        """
        C{/dashboard/api/history}: the interval and the points.
        """
        served = Served(self)
        served.service.history.sample()
        served.clock.advance(10)
        served.service.history.sample()
        response, body = await served.get("/dashboard/api/history")
        doc = json.loads(body)
        self.assertEqual(doc["interval"], 10)
        self.assertEqual([p["t"] for p in doc["points"]], [served.clock.seconds() - 10, served.clock.seconds()])
        self.assertEqual(doc["points"][1]["queues"], {"q/feed": None, "q/check": None, "q/parse": None, "q/failed": None})
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])


class PageTests(TestCase):
    """
    The page, its static files, and the headers of every answer.
    """

    def assertSecure(self, response: Any) -> None:
        headers = response.headers
        [policy] = headers.getRawHeaders(b"content-security-policy")
        self.assertIn(b"default-src 'self'", policy)
        self.assertIn(b"script-src 'self'", policy)
        self.assertNotIn(b"unsafe-inline", policy)
        self.assertIn(b"frame-ancestors 'none'", policy)
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(headers.getRawHeaders(b"x-frame-options"), [b"DENY"])

    async def test_static_files(self) -> None:
        """
        The page, its script and style sheet, each with its content type;
        the page loads no inline script or style, and nothing from
        elsewhere.
        """
        served = Served(self)
        expected = {
            "/dashboard/": b"text/html; charset=utf-8",
            "/dashboard/static/dashboard.js": b"text/javascript; charset=utf-8",
            "/dashboard/static/dashboard.css": b"text/css; charset=utf-8",
        }
        for path, kind in expected.items():
            response, body = await served.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [kind], path)
            self.assertSecure(response)
            self.assertTrue(body)
        response, page = await served.get("/dashboard/")
        self.assertNotIn(b"<script>", page)
        self.assertNotIn(b"<style", page)
        self.assertNotIn(b" style=", page)
        self.assertNotIn(b"http://", page.replace(b"http://www.w3.org/2000/svg", b""))
        self.assertNotIn(b"https://", page)
        for element in (b'id="stages"', b'id="in-flight"', b'id="failures"', b'id="dump"', b'id="resubmit-all"',
                        b'id="resubmit-status"', b'id="token" type="password"', b'id="token-save"',
                        b'id="chart-throughput"', b'id="chart-latency"', b'id="chart-queues"', b'id="nodes"'):
            self.assertIn(element, page)

    async def test_not_found(self) -> None:
        """
        Only the listed files are served: no directory listing, no path
        built from the request, however it is spelt.
        """
        served = Served(self)
        for path in (
            "/dashboard/static/",
            "/dashboard/static/index.html",
            "/dashboard/static/../../setup.py",
            "/dashboard/static/..%2f..%2fstate.py",
            "/dashboard/static/%2e%2e/state.py",
            "/dashboard/static/..",
            "/dashboard/static//etc/passwd",
            "/dashboard/static/%2fetc%2fpasswd",
            "/dashboard/api/",
            "/dashboard/api/nothing",
            "/dashboard/nothing",
            "/dashboard/../setup.py",
        ):
            response, body = await served.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"import", body, path)
            self.assertNotIn(b"root:", body, path)

    async def test_redirects(self) -> None:
        """
        C{/} and C{/dashboard} lead to C{/dashboard/}, relatively (a proxy
        may serve it under a prefix).
        """
        served = Served(self)
        for path in ("/", "/dashboard"):
            response, _ = await served.get(path)
            self.assertEqual(response.code, 302)
            self.assertEqual(response.headers.getRawHeaders(b"location"), [b"dashboard/"])

    async def test_rebinding(self) -> None:
        """
        A request that came in on the loopback interface naming another
        host (a DNS rebinding page in the user's browser) reads nothing;
        loopback names are fine.
        """
        served = Served(self)
        response, body = await served.get("/dashboard/api/state", {"Host": ["attacker.example:9103"]})
        self.assertEqual(response.code, 421)
        self.assertNotIn(b"stages", body)
        for host in ("localhost:9103", "127.0.0.1", "[::1]:80"):
            response, _ = await served.get("/dashboard/api/state", {"Host": [host]})
            self.assertEqual(response.code, 200, host)


class ResubmitRefusalTests(TestCase):
    """
    Who may resubmit: only a same-origin script that has the token.
    """

    def setUp(self) -> None:
        self.served = Served(self)
        self.path = DumpStore(self.served.dump_dir).write(DumpRecord(
            stage="feed_cuckoo", queue="q/feed", reason="r", message="{}", analysis_id="a"))
        self.name = os.path.basename(self.path)

    async def assertRefused(self, code: int, headers: dict, body: Any = None, served: Served | None = None) -> dict:
        got, answer, response = await (served or self.served).post({"files": [self.name]} if body is None else body, headers)
        self.assertEqual(got, code, answer)
        self.assertTrue(answer["error"])
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        return answer

    async def test_no_token(self) -> None:
        answer = await self.assertRefused(401, CSRF)
        self.assertIn("token", answer["error"])

    async def test_wrong_token(self) -> None:
        await self.assertRefused(401, {**CSRF, "Authorization": [f"Bearer {TOKEN}x"]})
        await self.assertRefused(401, {**CSRF, "Authorization": [f"Basic {TOKEN}"]})
        await self.assertRefused(401, {**CSRF, "Authorization": ["Bearer "]})

    async def test_csrf(self) -> None:
        """
        What a page on another site can send is refused (403) even with
        the token: a form's content type, no custom header, a cross-site
        C{Origin} or C{Sec-Fetch-Site}.
        """
        auth = {"Authorization": [f"Bearer {TOKEN}"]}
        await self.assertRefused(403, {**auth, "X-Cuckoodist-CSRF": ["1"], "Content-Type": ["text/plain"]})
        await self.assertRefused(403, {**auth, "X-Cuckoodist-CSRF": ["1"], "Content-Type": ["application/x-www-form-urlencoded"]})
        await self.assertRefused(403, {**auth, "Content-Type": ["application/json"]})
        await self.assertRefused(403, {**auth, **CSRF, "Origin": ["http://attacker.example"]})
        await self.assertRefused(403, {**auth, **CSRF, "Origin": ["null"]})
        await self.assertRefused(403, {**auth, **CSRF, "Sec-Fetch-Site": ["cross-site"]})
        await self.assertRefused(403, {**auth, **CSRF, "Sec-Fetch-Site": ["same-site"]})

    async def test_disabled(self) -> None:
        """
        Without a configured token nothing can be resubmitted, and the
        state says so.
        """
        served = Served(self, token="")
        self.assertIs((await served.state())["resubmit_enabled"], False)
        self.path = DumpStore(served.dump_dir).write(DumpRecord(
            stage="feed_cuckoo", queue="q/feed", reason="r", message="{}", analysis_id="a"))
        for headers in ({**CSRF}, {**CSRF, "Authorization": ["Bearer "]}, {**CSRF, "Authorization": [f"Bearer {TOKEN}"]}):
            answer = await self.assertRefused(403, headers, {"files": [os.path.basename(self.path)]}, served)
            self.assertIn("disabled", answer["error"])

    async def test_bad_requests(self) -> None:
        headers = {**CSRF, "Authorization": [f"Bearer {TOKEN}"]}
        for body in (b"not json", {"files": []}, {"files": "x"}, {"files": [1]}, {"all": 1}, [], {"all": True, "files": []}):
            await self.assertRefused(400, headers, body)

    async def test_get(self) -> None:
        response, _ = await self.served.get("/dashboard/api/resubmit")
        self.assertEqual(response.code, 405)

    async def test_broker_down(self) -> None:
        """
        With every check passed but no broker connection: 503, nothing
        resubmitted, the file kept.
        """
        answer = await self.assertRefused(503, {**CSRF, "Authorization": [f"Bearer {TOKEN}"], "Origin": [self.served.base]})
        self.assertIn("RabbitMQ", answer["error"])


class ResubmitEndToEndTests(TestCase):
    """
    Resubmitting from the dashboard of a real daemon.
    """

    timeout = 180

    async def test_resubmit(self) -> None:
        """
        A sample the simulated CRITs refuses until the overseer gives up on
        it is dumped.  Once CRITs accepts again, a resubmit with the token
        puts the message back on its queue, deletes the dump file, and the
        analysis is finished in CRITs; a name that is no dump file is
        skipped, and C{{"all": true}} then finds nothing left.
        """
        peers = harness.Peers(analysis_seconds=1)
        peers.start()
        self.addCleanup(peers.stop)
        peers.crits.faults.fail_rate = 1.0
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(peers, p, dump_dir, metrics={"listen": "tcp:0:interface=127.0.0.1"}, dashboard={"token": TOKEN})
        for stage in doc["stages"]:
            if stage["type"] == "overseer":
                stage["max_retries"] = 0
        config = parse_config(doc)
        daemon, _ = harness.run_daemon(self, config)
        port = (await daemon.getServiceNamed("ops").listening).getHost().port
        base = f"http://127.0.0.1:{port}"
        pool = HTTPConnectionPool(reactor, persistent=False)

        analysis_id, body = harness.request(1, harness.sample(1), with_credentials=True)
        await harness.publish(config.amqp, [(f"{p}/feed_cuckoo", body)])
        await harness.wait_until(lambda: len(list(DumpStore(dump_dir))) == 1, 90, "the sample to be dumped")
        [(path, record, _)] = list(DumpStore(dump_dir))
        self.assertEqual((record.analysis_id, record.queue), (analysis_id, f"{p}/parse_and_submit"))
        name = os.path.basename(path)

        async def state() -> dict:
            response = await treq.get(base + "/dashboard/api/state", pool=pool)
            return json.loads(await response.content())

        shown = await state()
        self.assertEqual([e["file"] for e in shown["dump"]["entries"]], [name])
        self.assertEqual(shown["failures"][0]["analysis_id"], analysis_id)

        async def post(document: Any, token: str = TOKEN) -> tuple[int, dict]:
            response = await treq.post(
                base + "/dashboard/api/resubmit", data=json.dumps(document).encode(), pool=pool,
                headers={**CSRF, "Authorization": [f"Bearer {token}"], "Origin": [base], "Sec-Fetch-Site": ["same-origin"]},
            )
            return response.code, json.loads(await response.content())

        code, answer = await post({"files": [name]}, token="wrong-token-0123456789")
        self.assertEqual(code, 401, answer)
        self.assertTrue(os.path.exists(path))

        peers.crits.faults.fail_rate = 0.0
        code, answer = await post({"files": [name, "../" + name, "nothing.json"]})
        self.assertEqual(code, 200, answer)
        self.assertEqual(answer["resubmitted"], [name])
        self.assertEqual(sorted(s["file"] for s in answer["skipped"]), sorted(["../" + name, "nothing.json"]))
        self.assertFalse(os.path.exists(path))

        def finished() -> bool:
            return peers.crits.state()["analyses"].get(analysis_id, {}).get("status") == "completed"

        await harness.wait_until(finished, 60, "the resubmitted analysis to be finished in the simulated CRITs")
        self.assertTrue(peers.crits.state()["analyses"][analysis_id]["results"])
        code, answer = await post({"all": True})
        self.assertEqual((code, answer), (200, {"resubmitted": [], "skipped": []}))
        self.assertEqual((await state())["dump"], {"count": 0, "entries": []})


class DemoTests(TestCase):
    """
    C{cuckoodist demo --run-daemon} says where the dashboard is.
    """

    timeout = 120

    async def test_prints_url(self) -> None:
        """
        The demo prints the dashboard's URL when it starts the daemon, and
        the page answers there while the demo runs.
        """
        import io

        import yaml

        from cuckoodist.commands.demo import DemoOptions, demo

        peers = harness.Peers(analysis_seconds=0.5)
        peers.start()
        self.addCleanup(peers.stop)
        doc = harness.config_doc(peers, harness.prefix(), os.path.abspath(self.mktemp()),
                                 metrics={"listen": "tcp:0:interface=127.0.0.1"})
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as fp:
            yaml.safe_dump(doc, fp)
        options = DemoOptions()
        options.parseOptions(["-c", path, "--count", "1", "--run-daemon", "--timeout", "90"])
        out = io.StringIO()
        answered: list[int] = []

        class Watching(io.StringIO):
            def write(self, text: str) -> int:
                if text.startswith("dashboard: "):
                    url = text.split(" ", 1)[1].strip()
                    checks.append(Deferred.fromCoroutine(check(url)))
                return out.write(text)

        async def check(url: str) -> None:
            response = await treq.get(url, pool=HTTPConnectionPool(reactor, persistent=False))
            answered.append(response.code)
            await response.content()

        checks: list[Deferred] = []
        code = await demo(reactor, options, Watching())
        self.assertEqual(code, 0, out.getvalue())
        [line] = [line for line in out.getvalue().splitlines() if line.startswith("dashboard: ")]
        self.assertRegex(line, r"^dashboard: http://127\.0\.0\.1:\d+/dashboard/$")
        for d in checks:
            await d
        self.assertEqual(answered, [200])


class ConfigTests(TestCase):
    """
    The C{dashboard} section.
    """

    def test_token(self) -> None:
        """
        No token by default (resubmitting disabled); a token must be long
        enough and fit in a header; it never shows in a C{repr}.
        """
        from cuckoodist.errors import ConfigError

        stages = [{"type": "overseer", "consumer_queue": "q", "dump_dir": "d"}]
        self.assertEqual(parse_config({"stages": stages}).dashboard.token, "")
        config = parse_config({"stages": stages, "dashboard": {"token": TOKEN}})
        self.assertEqual(config.dashboard.token, TOKEN)
        self.assertNotIn(TOKEN, repr(config))
        self.assertNotIn(TOKEN, repr(config.dashboard))
        for wrong in ("short", "é" * 20, f" {TOKEN}", 12345678901234567890, None):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"stages": stages, "dashboard": {"token": wrong}})
            self.assertIn("dashboard.token", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            parse_config({"stages": stages, "dashboard": {"tokn": TOKEN}})
        self.assertIn("did you mean 'token'", str(caught.exception))


class NodeProbeTests(TestCase):
    """
    The node table stays current while no upload asks.
    """

    timeout = 60

    async def test_probes_refresh(self) -> None:
        """
        L{NodeProbes} has a feed stage's capacity gate ask the (simulated)
        Cuckoo again once its answer is stale, and the board shows it.
        """
        from cuckoodist.cuckoo import CuckooClient
        from cuckoodist.dashboard.nodes import NodeProbes
        from cuckoodist.node_status import NodeBoard
        from cuckoodist.http import HTTPClient
        from cuckoodist.stages.capacity import CapacityGate

        peers = harness.Peers(analysis_seconds=0.5)
        peers.start()
        self.addCleanup(peers.stop)
        http = HTTPClient(reactor, 10)
        self.addCleanup(http.close)
        board = NodeBoard(reactor)
        gate = CapacityGate(CuckooClient(http, peers.cuckoo_server.url), reactor, 5, None, 0.05, on_status=board.reporter("sim"))
        self.addCleanup(gate.stop)
        probes = NodeProbes(reactor, [gate], 0.05)
        probes.start()
        self.addCleanup(probes.stop)
        await harness.wait_for(lambda: board.get("sim") is not None)
        first = board.get("sim")
        self.assertEqual((first.pending, first.running, first.error), (0, 0, ""))
        self.assertEqual(first.free_disk, peers.cuckoo.free_space)
        await harness.wait_for(lambda: board.get("sim").probed_at > first.probed_at)


class DumpReadingTests(TestCase):
    async def test_read_in_a_worker_thread(self) -> None:
        """
        Dump files (whole messages, samples inline) are read in the
        reactor's thread pool, each once: the page never stalls the
        pipeline's thread on them.
        """
        import threading

        from cuckoodist.dashboard import dumps

        directory = os.path.abspath(self.mktemp())
        store = DumpStore(directory)
        for n in range(3):
            store.write(DumpRecord(stage="check_results", queue="q", reason=f"why {n}", message='{"x": 1}',
                                   analysis_id=f"a{n}", dumped_at=1000.0 + n, attempts=1))
        threads: list[threading.Thread] = []
        read = dumps.read_dump

        def recording(path: str) -> Any:
            threads.append(threading.current_thread())
            return read(path)

        self.patch(dumps, "read_dump", recording)
        listing = dumps.DumpListing([directory])
        await listing.read_new(reactor)
        await listing.read_new(reactor)
        count, shown = listing.snapshot()
        self.assertEqual((count, [entry["reason"] for entry in shown]), (3, ["why 0", "why 1", "why 2"]))
        self.assertEqual(len(threads), 3)
        self.assertNotIn(threading.main_thread(), threads)
