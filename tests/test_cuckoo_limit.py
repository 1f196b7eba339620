# -*- test-case-name: tests.test_cuckoo_limit -*-
"""
The per-node cap on requests in flight (C{cuckoo.<name>.max_requests}):
held over real loopback sockets, at a slow local HTTP server and at the
Cuckoo simulator, shared by every stage of a daemon, and not leaked by
cancelled requests.
"""

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cuckoodist.config import parse_config
from cuckoodist.http import HTTPClient
from cuckoodist.registry import STAGES
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer
from cuckoodist.stages.base import StageContext
from cuckoodist.stages.check_results import CheckResults
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from cuckoodist.stages.parse_and_submit import ParseAndSubmit


class Counting(Resource):
    """
    Counts the requests in flight at C{inner}, from their arrival to the
    end of their response, and the most seen at once.
    """

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.now = 0
        self.peak = 0
        self.total = 0

    def render(self, request: Any) -> Any:
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        request.notifyFinish().addBoth(self._done)
        return self.inner.render(request)

    def _done(self, _: object) -> None:
        self.now -= 1


class Slow(Resource):
    """
    A Cuckoo that answers everything after C{delay} seconds: a status, or
    a task view of a running task.
    """

    isLeaf = True

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def render(self, request: Any) -> Any:
        if request.path.startswith(b"/tasks/view/"):
            body = {"task": {"id": 1, "status": "running"}}
        else:
            body = {"version": "2.0.7", "tasks": {"pending": 0}}
        call = reactor.callLater(self.delay, self._answer, request, json.dumps(body).encode())
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return NOT_DONE_YET

    def _answer(self, request: Any, body: bytes) -> None:
        request.setHeader(b"content-type", b"application/json")
        request.write(body)
        request.finish()


def daemon(url: str, max_requests: int) -> tuple[StageContext, list]:
    """
    A feed_cuckoo, a check_results and a parse_and_submit built as one
    daemon builds them, on one context, talking to the Cuckoo at C{url}.
    """
    config = parse_config(
        {
            "http_timeout": 30,
            "cuckoo": {"sim": {"url": url, "max_requests": max_requests}},
            "stages": [
                {"type": "feed_cuckoo", "cuckoo": "sim"},
                {"type": "check_results"},
                {"type": "parse_and_submit", "crits_max_body": 2500000},
            ],
        }
    )
    http = HTTPClient(reactor, 30)
    context = StageContext(reactor=reactor, connection=None, http=http, config=config, stage_types=STAGES)
    stages = [cls(context, stage_config) for cls, stage_config in zip((FeedCuckoo, CheckResults, ParseAndSubmit), config.stages)]
    return context, stages


class LimitTests(TestCase):
    def serve(self, resource: Resource) -> str:
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def context(self, url: str, max_requests: int) -> tuple[StageContext, list]:
        context, stages = daemon(url, max_requests)
        self.addCleanup(context.http.close)
        return context, stages

    async def test_shared_by_stages_at_a_slow_server(self) -> None:
        """
        Status probes from feed_cuckoo and views from check_results, 30 at
        once, reach a slow Cuckoo at most C{max_requests} at a time, and
        that many at a time: the stages draw on one cap.
        """
        counting = Counting(Slow(0.1))
        url = self.serve(counting)
        context, (feed, check, _) = self.context(url, 3)
        viewer = check.cuckoo_client(url)
        calls = [Deferred.fromCoroutine(feed.cuckoo.status()) for _ in range(15)]
        calls += [Deferred.fromCoroutine(viewer.view(1)) for _ in range(15)]
        await gatherResults(calls)
        self.assertEqual((counting.total, counting.peak), (30, 3))
        self.assertEqual(context.cuckoo_limiter(context.config.cuckoo["sim"]).tokens, 3)

    async def test_separate_daemons_separate_caps(self) -> None:
        """
        The cap belongs to a daemon's context, not to the process: two
        contexts have two caps.
        """
        counting = Counting(Slow(0.1))
        url = self.serve(counting)
        (_, (feed_a, _, _)), (_, (feed_b, _, _)) = self.context(url, 2), self.context(url, 2)
        await gatherResults([Deferred.fromCoroutine(f.cuckoo.status()) for f in (feed_a, feed_b) for _ in range(6)])
        self.assertEqual(counting.peak, 4)

    async def test_at_the_simulator(self) -> None:
        """
        Slow report downloads by parse_and_submit and status probes by
        feed_cuckoo reach the simulator at most C{max_requests} at a time.
        """
        sim = CuckooSimulator(reactor, analysis_seconds=0, slow_body_seconds=0.2)
        counting = Counting(sim.resource)
        server = SimulatorServer(reactor, counting)
        server.start_listening()
        self.addCleanup(server.close)
        context, (feed, _, parse) = self.context(server.url, 4)
        task = await Deferred.fromCoroutine(feed.cuckoo.submit("a.exe", b"MZ sample", {}))
        downloader = parse.cuckoo_client(server.url)

        async def download() -> None:
            with open(self.mktemp(), "wb") as sink:
                await downloader.download_report(task, sink, 10 * 1024 * 1024)

        calls = [Deferred.fromCoroutine(download()) for _ in range(12)]
        calls += [Deferred.fromCoroutine(feed.cuckoo.status()) for _ in range(12)]
        await gatherResults(calls)
        self.assertEqual((counting.total, counting.peak), (25, 4))
        self.assertEqual(sim.requests.counts["tasks/report"], 12)

    async def test_cancelled_wait_releases_nothing(self) -> None:
        """
        Cancelling a request that waits for the cap withdraws it without
        releasing anything: the request in flight keeps its place, the
        next waiter goes when it ends, and afterwards the cap is whole
        again, no larger.
        """
        counting = Counting(Slow(0.2))
        url = self.serve(counting)
        context, (feed, _, _) = self.context(url, 1)
        limiter = context.cuckoo_limiter(context.config.cuckoo["sim"])
        running = Deferred.fromCoroutine(feed.cuckoo.status())
        waiting = Deferred.fromCoroutine(feed.cuckoo.status())
        queued = Deferred.fromCoroutine(feed.cuckoo.status())
        self.assertEqual((limiter.tokens, len(limiter.waiting)), (0, 2))
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual((limiter.tokens, len(limiter.waiting)), (0, 1))
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((counting.now, limiter.tokens), (1, 0))
        await running
        self.assertEqual(limiter.tokens, 0)
        await queued
        self.assertEqual((limiter.tokens, limiter.limit, counting.total, counting.peak), (1, 1, 2, 1))
