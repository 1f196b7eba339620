"""
The daemon's Prometheus metrics (issue #13): what each part counts, and an
end-to-end run whose scrape, over real HTTP, must add up to what happened.
"""

import json
import os
import socket

import attrs
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.util import Redirect
from treq.testing import RequestTraversalAgent

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.amqp.consumer import QueueConsumer
from cuckoodist.config import parse_amqp_url, parse_config
from cuckoodist.dump import DumpStore
from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.http import HTTPClient, Peer
from cuckoodist.metrics import Metrics, status_class
from cuckoodist.stages.base import Stage, StageContext
from cuckoodist.stages.check_results import CheckResults
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from cuckoodist.stages.overseer import Overseer
from cuckoodist.stages.parse_and_submit import ParseAndSubmit
from tests import harness

SAMPLES = 50
SECRET = "s3cr3t-key-in-the-query"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """
    One sample of C{metrics}, 0 when it was never set.
    """
    return metrics.registry.get_sample_value(name, labels) or 0.0


class StatusClassTests(SynchronousTestCase):
    def test_classes(self) -> None:
        """
        A status code is labelled by its class; no answer, or a code out
        of HTTP's range, is C{error}.
        """
        for code, label in ((200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (599, "5xx"), (100, "1xx")):
            self.assertEqual(status_class(code), label)
        for code in (None, 0, 99, 600, 1000):
            self.assertEqual(status_class(code), "error")


class _Answer(Resource):
    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self._code = code

    def render(self, request) -> bytes:
        request.setResponseCode(self._code)
        return b'{"ok": true}'


def _site() -> Resource:
    root = Resource()
    root.putChild(b"ok", _Answer(200))
    root.putChild(b"missing", _Answer(404))
    root.putChild(b"broken", _Answer(503))
    root.putChild(b"moved", Redirect(b"/ok"))
    return root


class PeerCountTests(TestCase):
    """
    L{HTTPClient.request} counts every call to a L{Peer} by status class,
    and logs its time at debug level without the query string.
    """

    def setUp(self) -> None:
        self.metrics = Metrics()
        self.events: list[dict] = []
        self.peer = Peer("cuckoo", "sim", self.metrics, self.events.append)
        self.http = HTTPClient(Clock(), 10, agent=RequestTraversalAgent(_site()))

    def call(self, path: str, peer: "Peer | None" = None) -> Deferred:
        return ensureDeferred(
            self.http.request(
                "GET", f"http://cuckoo.test{path}", params={"api_key": SECRET}, headers={"Authorization": f"Bearer {SECRET}"},
                what="Cuckoo test", peer=peer or self.peer,
            )
        )

    def count(self, code: str, peer: str = "cuckoo", node: str = "sim") -> float:
        return value(self.metrics, "cuckoodist_http_requests_total", peer=peer, node=node, code=code)

    def test_by_status_class(self) -> None:
        """
        Answers count under their class, a redirect (refused, so the call
        fails) under C{3xx}, not C{error}.
        """
        self.assertEqual(self.successResultOf(self.call("/ok")).code, 200)
        self.successResultOf(self.call("/ok"))
        self.assertEqual(self.successResultOf(self.call("/missing")).code, 404)
        self.assertEqual(self.successResultOf(self.call("/broken")).code, 503)
        self.failureResultOf(self.call("/moved"), PermanentError)
        self.assertEqual(
            [self.count(c) for c in ("2xx", "3xx", "4xx", "5xx", "error")],
            [2, 1, 1, 1, 0],
        )

    def test_labels_are_the_peers(self) -> None:
        """
        The labels come from the L{Peer}, never from the URL called.
        """
        crits = Peer("crits", "crits", self.metrics)
        self.successResultOf(self.call("/ok/4f2a9c", crits))
        self.assertEqual(self.count("2xx", "crits", "crits"), 1)
        self.assertEqual(self.count("2xx"), 0)
        names = {s.labels.get("node") for f in self.metrics.registry.collect() for s in f.samples}
        self.assertEqual(names - {None}, {"crits"})

    def test_debug_line(self) -> None:
        """
        Each call logs one debug event with its peer, node, method, path,
        status and duration; the path has no query string, and no secret
        is in the event.
        """
        self.successResultOf(self.call("/missing"))
        [event] = self.events
        self.assertEqual(event["log_level"].name, "debug")
        self.assertEqual(
            {k: event[k] for k in ("event", "peer", "node", "method", "path", "status", "duration_ms")},
            {"event": "http", "peer": "cuckoo", "node": "sim", "method": "GET", "path": "/missing", "status": 404, "duration_ms": 0.0},
        )
        self.assertEqual(formatEvent(event), "cuckoo sim: GET /missing -> 404 in 0.0 ms")
        self.assertNotIn(SECRET, repr(event))

    def test_no_peer(self) -> None:
        """
        A call without a L{Peer} (tools, tests) counts and logs nothing.
        """
        self.successResultOf(ensureDeferred(self.http.request("GET", "http://cuckoo.test/ok")))
        self.assertEqual(self.count("2xx"), 0)
        self.assertEqual(self.events, [])


class UnreachablePeerTests(TestCase):
    timeout = 30

    async def test_refused(self) -> None:
        """
        A call that got no answer counts as C{error}, and its debug line
        says why.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        metrics, events = Metrics(), []
        http = HTTPClient(reactor, 5, persistent=False)
        self.addCleanup(http.close)
        with self.assertRaises(TransientError):
            peer = Peer("crits", "crits", metrics, events.append)
            await http.request("GET", f"http://127.0.0.1:{port}/x?key={SECRET}", what="CRITs test", peer=peer)
        self.assertEqual(value(metrics, "cuckoodist_http_requests_total", peer="crits", node="crits", code="error"), 1)
        [event] = events
        self.assertEqual((event["status"], event["path"]), ("error", "/x"))
        self.assertIn("unreachable", formatEvent(event))
        self.assertNotIn(SECRET, formatEvent(event))


class StageHistogramTests(SynchronousTestCase):
    """
    The stages observe their timings where the work happens, on the
    injected clock; a message that cannot say when it started observes
    nothing rather than a made-up duration.
    """

    def histogram(self, world, name: str, **labels: str) -> tuple[float, float]:
        metrics = world.context.metrics
        return value(metrics, name + "_count", **labels), value(metrics, name + "_sum", **labels)

    def test_feed_upload(self) -> None:
        """
        A successful upload is timed, labelled by the configured Cuckoo.
        """
        from tests.memory import World
        from tests.test_stage_feed_cuckoo import request, stage

        w = World(self, FeedCuckoo, stage())
        self.successResultOf(w.deliver(request()))
        self.assertEqual(self.histogram(w, "cuckoodist_cuckoo_upload_seconds", cuckoo="sim"), (1, 0))
        self.assertEqual(value(w.context.metrics, "cuckoodist_http_requests_total", peer="cuckoo", node="sim", code="2xx"), 1)

    def test_analysis_time(self) -> None:
        """
        check_results observes the time from C{SubmittedAt} to the report
        it saw; a Go message without C{SubmittedAt} observes nothing.
        """
        from tests.memory import World
        from tests.test_stage_check_results import STAGE

        w = World(self, CheckResults, STAGE, cuckoo={"analysis_seconds": 10})
        task_id = w.submit()
        w.clock.advance(30)
        now = w.clock.seconds()
        self.successResultOf(w.deliver(w.task_message(task_id, submitted_at=now - 30, expected_end=now - 20).encode()))
        self.assertEqual(self.histogram(w, "cuckoodist_analysis_seconds", cuckoo="sim"), (1, 30))
        go = w.task_message(task_id, submitted_at=None, deadline=now + 3600).encode()
        self.successResultOf(w.deliver(go))
        self.assertEqual(len(w.outbox.to("worker/parse_and_submit")), 2)
        self.assertEqual(self.histogram(w, "cuckoodist_analysis_seconds", cuckoo="sim"), (1, 30))

    def test_parse_and_submit(self) -> None:
        """
        parse_and_submit times the report's fetch, parse and posting,
        measures its size, and observes the end-to-end time at the finish:
        from the request's C{RequestedAt}, else from C{SubmittedAt}.
        """
        from tests.memory import World
        from tests.test_stage_parse_and_submit import stage

        w = World(self, ParseAndSubmit, stage(), cuckoo={"analysis_seconds": 10})
        task_id = w.submit()
        w.clock.advance(40)
        task = w.task_message(task_id, submitted_at=w.clock.seconds() - 40)
        w.crits.touch_object("Sample", task.crits.object_id)
        self.successResultOf(w.deliver(task.encode()))
        self.assertEqual(w.analysis()["status"], "completed")
        self.assertEqual(self.histogram(w, "cuckoodist_report_fetch_seconds", cuckoo="sim"), (1, 0))
        for name in ("cuckoodist_report_parse_seconds", "cuckoodist_crits_submit_seconds"):
            self.assertEqual(self.histogram(w, name), (1, 0), name)
        count, size = self.histogram(w, "cuckoodist_report_bytes")
        self.assertEqual(count, 1)
        self.assertGreater(size, 1000)
        self.assertEqual(self.histogram(w, "cuckoodist_end_to_end_seconds"), (1, 40))
        self.assertGreater(value(w.context.metrics, "cuckoodist_http_requests_total", peer="crits", node="crits", code="2xx"), 0)

        # A Go check_results drops SubmittedAt: no end-to-end time.
        again = w.task_message(w.submit(b"MZ again"), submitted_at=None, crits=attrs.evolve(task.crits, analysis_id="analysis-2"))
        w.clock.advance(40)
        self.successResultOf(w.deliver(again.encode()))
        self.assertEqual(self.histogram(w, "cuckoodist_report_fetch_seconds", cuckoo="sim")[0], 2)
        self.assertEqual(self.histogram(w, "cuckoodist_end_to_end_seconds"), (1, 40))

        # A request stamped requested_at: from then, not from the upload.
        third_id = w.submit(b"MZ third")
        w.clock.advance(40)
        third = w.task_message(
            third_id, submitted_at=w.clock.seconds() - 40, requested_at=w.clock.seconds() - 100,
            crits=attrs.evolve(task.crits, analysis_id="analysis-3"),
        )
        self.successResultOf(w.deliver(third.encode()))
        self.assertEqual(self.histogram(w, "cuckoodist_end_to_end_seconds"), (2, 140))


class OverseerLabelTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """
        A retry or dump is labelled by the failed message's stage and
        queue only when this configuration knows them: a hostile envelope
        cannot create series.
        """
        from cuckoodist.registry import STAGES

        config = parse_config({
            "stages": [
                {"type": "overseer", "dump_dir": "/nonexistent", "consumer_queue": "p/failed", "allowed_queues": ["p/extra"]},
                {"type": "check_results", "consumer_queue": "p/check", "producer_queue": "p/parse", "failed_queue": "p/failed"},
            ],
        })
        clock = Clock()
        context = StageContext(reactor=clock, connection=None, http=HTTPClient(clock, 10), config=config, stage_types=STAGES)
        overseer = Overseer(context, config.stages[0])
        self.assertEqual(overseer.metric_labels("check_results", "p/check"), ("check_results", "p/check"))
        self.assertEqual(overseer.metric_labels("feed_cuckoo", "worker/feed_cuckoo"), ("feed_cuckoo", "worker/feed_cuckoo"))
        self.assertEqual(overseer.metric_labels("overseer", "p/failed"), ("overseer", "p/failed"))
        self.assertEqual(overseer.metric_labels("feed_cuckoo", "p/extra"), ("feed_cuckoo", "p/extra"))
        self.assertEqual(overseer.metric_labels("evil\nstage", "analysis/1234"), ("unknown", "other"))
        self.assertEqual(overseer.metric_labels("", ""), ("unknown", "other"))


class OverseerCountTests(TestCase):
    """
    A real overseer counts what it retries and what it dumps, by the
    failed message's stage and queue, bounded.
    """

    timeout = 60

    async def test_retried_and_dumped(self) -> None:
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        peers = harness.Peers()
        peers.start()
        self.addCleanup(peers.stop)
        doc = harness.config_doc(peers, p, dump_dir, ["overseer"], metrics={"listen": ""})
        target = f"{p}/check_results"
        doc["stages"][0].update(retry_delay=0.05, allowed_queues=[target])
        config = parse_config(doc)
        failed_queue = config.stages[0].consumer_queue
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(config.amqp, [target])))
        daemon, _ = harness.run_daemon(self, config)
        metrics = _metrics_of(daemon)
        analysis_id, request = harness.request(1, harness.sample(1), with_credentials=True)
        task = {"TaskId": 7, "CuckooURL": peers.cuckoo_server.url, "CritsData": json.loads(request)["crits_data"]}

        def envelope(service: str, queue: str) -> bytes:
            return json.dumps({"Service": service, "Queue": queue, "Error": "boom", "Desc": "transient", "Msg": json.dumps(task)}).encode()

        await harness.publish(config.amqp, [
            (failed_queue, envelope("check_results", target)),
            (failed_queue, envelope("x" * 40, "elsewhere/" + "y" * 40)),
            (failed_queue, b"\xff not an envelope"),
        ])
        await harness.wait_until(lambda: len(list(DumpStore(dump_dir))) == 2, 30, "two dumps")
        await harness.wait_until(
            lambda: value(metrics, "cuckoodist_messages_retried_total", stage="check_results", queue=target) == 1, 30, "the retry"
        )
        self.assertEqual(value(metrics, "cuckoodist_messages_dumped_total", stage="unknown", queue="other"), 1)
        self.assertEqual(value(metrics, "cuckoodist_messages_dumped_total", stage="unknown", queue=failed_queue), 1)
        labels = {
            (s.labels["stage"], s.labels["queue"])
            for f in metrics.registry.collect() if f.name in ("cuckoodist_messages_retried", "cuckoodist_messages_dumped")
            for s in f.samples
        }
        self.assertEqual(labels, {("check_results", target), ("unknown", "other"), ("unknown", failed_queue)})


class AMQPTests(TestCase):
    """
    The connection's gauges and counter, against the real broker.
    """

    timeout = 60

    async def test_connection(self) -> None:
        """
        Connected is 1 while logged in; a publish is pending until the
        broker confirms it; a dropped connection counts one reconnect;
        stopping leaves connected at 0.
        """
        metrics = Metrics()
        amqp = parse_amqp_url(harness.AMQP_URL, ("amqp",))
        service = AMQPConnectionService(reactor, amqp, retry_policy=lambda n: 0.1, metrics=metrics)
        self.assertEqual(value(metrics, "cuckoodist_amqp_connected"), 0)
        service.startService()
        stopped = False
        try:
            client = await service.whenConnected()
            self.assertEqual(value(metrics, "cuckoodist_amqp_connected"), 1)
            channel = await client.open_channel()
            await channel.enable_confirms()
            queue = f"{harness.prefix()}/confirms"
            self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(amqp, [queue])))
            await channel.queue_declare(queue=queue, durable=True)
            confirmed = channel.publish(queue, b"{}")
            self.assertEqual(value(metrics, "cuckoodist_amqp_confirms_pending"), 1)
            await confirmed
            self.assertEqual(value(metrics, "cuckoodist_amqp_confirms_pending"), 0)
            self.assertEqual(value(metrics, "cuckoodist_amqp_reconnects_total"), 0)

            client.transport.abortConnection()
            await harness.wait_until(lambda: value(metrics, "cuckoodist_amqp_reconnects_total") == 1, 20, "a reconnect", 0.05)
            self.assertEqual(value(metrics, "cuckoodist_amqp_connected"), 1)
            await service.stopService()
            stopped = True
            self.assertEqual(value(metrics, "cuckoodist_amqp_connected"), 0)
        finally:
            if not stopped:
                await service.stopService()

    async def test_consumer_state(self) -> None:
        """
        C{registered} is true while the broker sends to the consumer;
        C{paused} says whether its owner paused it.
        """
        amqp = parse_amqp_url(harness.AMQP_URL, ("amqp",))
        service = AMQPConnectionService(reactor, amqp)
        service.startService()
        self.addCleanup(service.stopService)
        queue = f"{harness.prefix()}/consumer"
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(amqp, [queue])))

        async def handler(delivery, outbox) -> None:
            pass

        consumer = QueueConsumer(service, queue, 1, handler, reactor, 1.0)
        self.assertEqual((consumer.registered, consumer.paused), (False, False))
        consumer.startService()
        self.addCleanup(consumer.stopService)
        await harness.wait_for(lambda: consumer.registered)
        await consumer.pause()
        self.assertEqual((consumer.consuming, consumer.registered, consumer.paused), (True, False, True))
        await consumer.resume()
        self.assertEqual((consumer.registered, consumer.paused), (True, False))


def _metrics_of(daemon) -> Metrics:
    """
    The L{Metrics} a daemon's stages count into.
    """
    stage = next(child for child in daemon if isinstance(child, Stage))
    return stage.context.metrics


async def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """
    GET C{/metrics} with a real HTTP client, parsed: (sample name, labels)
    -> value.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.get(f"http://127.0.0.1:{port}/metrics", pool=pool)
    if response.code != 200:
        raise AssertionError(f"/metrics answered {response.code}")
    text = (await treq.content(response)).decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def pick(samples: dict, name: str, **labels: str) -> float:
    """
    The sum of C{name} over the samples whose labels include C{labels}.
    """
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class EndToEndTests(TestCase):
    """
    Fifty samples through a daemon running all four stages, one of which
    Cuckoo fails: the scraped counters must add up to what the pipeline,
    the simulators and the dump directory saw.
    """

    timeout = 240

    async def test_scrape_after_run(self) -> None:
        peers = harness.Peers(analysis_seconds=0.5, machines=16, report_calls_per_process=30)
        peers.start()
        self.addCleanup(peers.stop)
        p = harness.prefix()
        dump_dir = os.path.abspath(self.mktemp())
        config = parse_config(
            harness.config_doc(peers, p, dump_dir, log_level="debug", metrics={"listen": "tcp:0:interface=127.0.0.1"})
        )
        daemon, events = harness.run_daemon(self, config)
        port = (await daemon.getServiceNamed("ops").listening).getHost().port
        queue = {s.type: s.consumer_queue for s in config.stages}

        messages, expected = harness.requests(queue["feed_cuckoo"], SAMPLES - 1)
        failing_id, body = harness.request(SAMPLES, harness.sample(SAMPLES, fail=True))
        messages.append((queue["feed_cuckoo"], body))
        await harness.publish(config.amqp, messages)

        crits, cuckoo = peers.crits, peers.cuckoo

        def settled() -> bool:
            analyses = crits.state()["analyses"]
            done = [k for k in expected if analyses.get(k, {}).get("status") == "completed"]
            failed = analyses.get(failing_id, {}).get("status") == "error"
            deleted = sum(1 for t in cuckoo.state()["tasks"].values() if t["deleted"]) == len(expected)
            return len(done) == len(expected) and failed and deleted and len(list(DumpStore(dump_dir))) == 1

        await harness.wait_until(settled, 180, "every sample to end in CRITs, every finished task deleted, one dump")

        def requests_seen(sim) -> int:
            return sum(sim.state()["requests"].values())

        # Acks, the overseer's and the clean-up's last requests follow the
        # outcomes above by moments; then everything must add up.
        samples: dict = {}
        seen: dict = {}

        async def quiet() -> bool:
            samples.clear()
            samples.update(await scrape(port))
            seen.update(cuckoo=requests_seen(cuckoo), crits=requests_seen(crits))
            return (
                pick(samples, "cuckoodist_messages_in_flight") == 0
                and pick(samples, "cuckoodist_messages_succeeded_total", stage="parse_and_submit") == SAMPLES - 1
                and pick(samples, "cuckoodist_messages_succeeded_total", stage="overseer") == 1
                and pick(samples, "cuckoodist_http_requests_total", peer="cuckoo") == seen["cuckoo"]
                and pick(samples, "cuckoodist_http_requests_total", peer="crits") == seen["crits"]
                and pick(samples, "cuckoodist_amqp_confirms_pending") == 0
            )

        for _ in range(150):
            if await quiet():
                break
            await _sleep(0.2)
        got = lambda name, **labels: pick(samples, name, **labels)  # noqa: E731

        # Per stage: every delivery received ended as succeeded or failed.
        for stage in ("feed_cuckoo", "check_results", "parse_and_submit", "overseer"):
            labels = {"stage": stage, "queue": queue[stage]}
            received = got("cuckoodist_messages_received_total", **labels)
            ended = got("cuckoodist_messages_succeeded_total", **labels) + got("cuckoodist_messages_failed_total", **labels)
            self.assertEqual(received, ended, stage)
            self.assertEqual(got("cuckoodist_messages_in_flight", **labels), 0, stage)
            self.assertEqual(got("cuckoodist_stage_consuming", **labels), 1, stage)
        self.assertEqual(got("cuckoodist_messages_succeeded_total", stage="feed_cuckoo"), SAMPLES)
        self.assertEqual(got("cuckoodist_messages_received_total", stage="parse_and_submit"), SAMPLES - 1)
        self.assertEqual(got("cuckoodist_messages_succeeded_total", stage="parse_and_submit"), SAMPLES - 1)
        # check_results sees each task more than once (its polls come back
        # through delay queues) and fails exactly the one Cuckoo failed.
        self.assertGreaterEqual(got("cuckoodist_messages_received_total", stage="check_results"), SAMPLES)
        self.assertEqual(got("cuckoodist_messages_failed_total", kind="permanent"), 1)
        self.assertEqual(got("cuckoodist_messages_failed_total", stage="check_results", kind="permanent"), 1)
        self.assertEqual(got("cuckoodist_messages_failed_total", kind="transient"), 0)
        self.assertEqual(got("cuckoodist_messages_received_total", stage="overseer"), 1)
        self.assertEqual(got("cuckoodist_messages_retried_total"), 0)
        self.assertEqual(got("cuckoodist_messages_dumped_total"), 1)
        self.assertEqual(got("cuckoodist_messages_dumped_total", stage="check_results", queue=queue["check_results"]), 1)

        # Histograms: one upload per sample, the rest per finished sample.
        self.assertEqual(got("cuckoodist_cuckoo_upload_seconds_count", cuckoo="sim"), SAMPLES)
        for name in (
            "cuckoodist_analysis_seconds_count",
            "cuckoodist_report_fetch_seconds_count",
            "cuckoodist_report_parse_seconds_count",
            "cuckoodist_report_bytes_count",
            "cuckoodist_crits_submit_seconds_count",
            "cuckoodist_end_to_end_seconds_count",
        ):
            self.assertEqual(got(name), SAMPLES - 1, name)
        self.assertEqual(got("cuckoodist_analysis_seconds_count", cuckoo="sim"), SAMPLES - 1)
        self.assertGreater(got("cuckoodist_report_bytes_sum"), 0)
        # An analysis takes at least the simulated 0.5 s, and ends before its sample's end-to-end.
        self.assertGreaterEqual(got("cuckoodist_analysis_seconds_sum"), 0.5 * (SAMPLES - 1))
        self.assertGreaterEqual(got("cuckoodist_end_to_end_seconds_sum"), got("cuckoodist_analysis_seconds_sum"))

        # Peers: every request the simulators answered, counted once.
        self.assertEqual(got("cuckoodist_http_requests_total", peer="cuckoo", node="sim"), seen["cuckoo"])
        self.assertEqual(got("cuckoodist_http_requests_total", peer="crits", node="crits"), seen["crits"])
        self.assertGreaterEqual(got("cuckoodist_http_requests_total", peer="cuckoo", code="2xx"), 3 * (SAMPLES - 1) + 1)
        self.assertGreaterEqual(got("cuckoodist_http_requests_total", peer="crits", code="2xx"), 2 * (SAMPLES - 1) + 1)

        # The broker.
        self.assertEqual(got("cuckoodist_amqp_connected"), 1)
        self.assertEqual(got("cuckoodist_amqp_reconnects_total"), 0)
        self.assertEqual(got("cuckoodist_amqp_confirms_pending"), 0)

        # At debug, a line per external call, timed, without secrets.
        calls = [e for e in events if e.get("event") == "http"]
        self.assertEqual({(e["peer"], e["node"]) for e in calls}, {("cuckoo", "sim"), ("crits", "crits")})
        self.assertTrue(all(isinstance(e["duration_ms"], float) and "?" not in e["path"] for e in calls))
        text = "\n".join(formatEvent(e) for e in calls)
        self.assertNotIn(harness.DEFAULT_API_KEY, text)


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)
