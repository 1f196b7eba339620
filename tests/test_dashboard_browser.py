"""
The dashboard in a real browser: headless Chromium (Debian's, through
Selenium and chromium-driver) loads C{/dashboard/} from a daemon running
in this process while the simulators and the real RabbitMQ carry samples
through it, and what the page shows is checked against the simulated
CRITs and Cuckoo.  Skipped, saying what to install, where Chromium is
not installed.
"""

import hashlib
import os
import re
import shutil
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from cuckoodist.dump import DumpStore
from cuckoodist.tap import build_daemon
from tests import browser, harness

TOKEN = "browser-test-resubmit-token"

#: The page's state as the DOM contract of issue #14 names it, read in one
#: round trip.  C{missing} lists the contract's fixed elements not found.
SNAPSHOT = r"""
const text = (root, selector) => {
  const found = root.querySelector(selector);
  return found === null ? null : found.textContent.trim();
};
const rows = (selector, key, cells) => Array.from(document.querySelectorAll(selector)).map(tr => {
  const row = {key: tr.getAttribute(key), classes: Array.from(tr.classList)};
  for (const name of cells) row[name] = text(tr, '.' + name);
  return row;
});
const points = id => {
  const svg = document.querySelector('svg#' + id);
  return svg === null ? null : Number(svg.getAttribute('data-points'));
};
const marks = id => document.querySelectorAll('svg#' + id + ' path, svg#' + id + ' polyline, svg#' + id + ' circle').length;
const contract = ['#stages', '#in-flight', '#failures', '#dump', 'button#resubmit-all', '#resubmit-status',
                  'input#token[type="password"]', 'button#token-save', 'svg#chart-throughput',
                  'svg#chart-latency', 'svg#chart-queues', '#nodes'];
return {
  updated: document.body.getAttribute('data-updated'),
  missing: contract.filter(selector => document.querySelector(selector) === null),
  stages: rows('#stages tr[data-queue]', 'data-queue',
               ['stage', 'depth', 'consumers', 'in-flight', 'processed-rate', 'failed-rate', 'consuming']),
  inFlight: rows('#in-flight tr[data-analysis-id]', 'data-analysis-id', ['sample', 'node', 'task', 'stage', 'age']),
  failures: rows('#failures tr[data-analysis-id]', 'data-analysis-id', ['stage', 'reason', 'when']),
  dump: rows('#dump tr[data-file]', 'data-file', ['analysis-id', 'stage', 'reason', 'age']).map(row => {
    const tr = document.querySelector('#dump tr[data-file="' + CSS.escape(row.key) + '"]');
    row.button = tr !== null && tr.querySelector('button.resubmit') !== null;
    return row;
  }),
  charts: {throughput: points('chart-throughput'), latency: points('chart-latency'), queues: points('chart-queues')},
  marks: {throughput: marks('chart-throughput'), latency: marks('chart-latency'), queues: marks('chart-queues')},
  nodes: rows('#nodes tr[data-node]', 'data-node', ['pending', 'running', 'free-disk', 'probed']),
  status: text(document, '#resubmit-status'),
};
"""


def _number(shown: str | None) -> float | None:
    """
    The first number in a cell's text (C{"1.5/s"} -> 1.5), if any.
    """
    found = re.search(r"-?\d+(?:\.\d+)?", shown or "")
    return float(found.group()) if found else None


def _refusal(status: str | None) -> bool:
    """
    Whether C{#resubmit-status} says the resubmit was refused.
    """
    words = ("refus", "401", "403", "token", "unauthori", "forbidden", "denied")
    return any(word in (status or "").lower() for word in words)


def _outcome(status: str | None) -> bool:
    """
    Whether C{#resubmit-status} shows an answer, not a request under way.
    """
    return bool(status) and not status.rstrip().endswith(("…", "..."))


def _summary(snapshot: dict) -> str:
    """
    What the page showed, for a failure message.
    """
    return (
        f"data-updated={snapshot['updated']!r}, missing={snapshot['missing']}, "
        f"stages={[(r['key'], r['depth'], r['processed-rate'], r['consuming']) for r in snapshot['stages']]}, "
        f"in-flight={[(r['key'], r['stage'], r['task']) for r in snapshot['inFlight']]}, "
        f"failures={[(r['key'], r['stage'], r['reason']) for r in snapshot['failures']]}, "
        f"dump={[(r['key'], r['analysis-id'], r['reason']) for r in snapshot['dump']]}, "
        f"charts={snapshot['charts']}, marks={snapshot['marks']}, nodes={[(r['key'], r['pending'], r['running']) for r in snapshot['nodes']]}, "
        f"status={snapshot['status']!r}"
    )


class _DashboardTest(TestCase):
    """
    A daemon with the dashboard on a free loopback port, the simulators,
    and a headless Chromium; all stopped, and the queues deleted, at the
    end, whatever happens.
    """

    timeout = 300

    def setUp(self) -> None:
        reason = browser.unavailable()
        if reason:
            raise SkipTest(reason)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        self.artifacts = os.path.abspath(self.mktemp())
        os.makedirs(self.artifacts)

    async def start(self, peers: harness.Peers, **stage_overrides: dict) -> None:
        """
        Start C{peers}, a daemon with all four stages and the dashboard
        wired to them, and the browser.
        """
        self.peers = peers
        peers.start()
        self.addCleanup(peers.stop)
        doc = harness.config_doc(
            peers, self.prefix, self.dump_dir,
            metrics={"listen": "tcp:0:interface=127.0.0.1"},
            dashboard={"token": TOKEN},
        )
        for stage in doc["stages"]:
            stage.update(stage_overrides.get(stage["type"], {}))
        self.config = harness.parse_config(doc)
        named = {q for s in self.config.stages for q in (
            s.consumer_queue, getattr(s, "producer_queue", ""), getattr(s, "failed_queue", "")) if q}
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, sorted(named))))
        self.daemon = build_daemon(self.config, reactor)
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        port = (await self.daemon.getServiceNamed("ops").listening).getHost().port
        self.url = f"http://127.0.0.1:{port}/dashboard/"
        self.browser = await deferToThread(browser.Browser.start, 1400, 1000)
        self.addCleanup(deferToThread, self.browser.quit)

    async def open_dashboard(self) -> dict:
        """
        Load the page and wait for two polls of the daemon; every element
        of the DOM contract must be there.
        """
        await deferToThread(self.browser.driver.get, self.url)
        first = await self.until(lambda s: bool(s["updated"]), 60, "the page's first poll (body[data-updated])")
        snapshot = await self.until(lambda s: s["updated"] not in (None, first["updated"]), 60,
                                    "the page to poll again (body[data-updated] to change)")
        self.assertEqual(snapshot["missing"], [], f"the page lacks these elements of the DOM contract: {snapshot['missing']}")
        return snapshot

    async def snapshot(self) -> dict:
        """
        What the page shows now (L{SNAPSHOT}).
        """
        return await self.browser.script(SNAPSHOT)

    async def until(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """
        Read the page until C{predicate} holds for what it shows.  The
        timeout only guards against a hang.

        @raise AssertionError: after C{timeout} seconds, with what the page
            showed last (and a screenshot of it, C{timeout.png}).
        """
        waited = 0.0
        while True:
            snapshot = await self.snapshot()
            if predicate(snapshot):
                return snapshot
            if waited >= timeout:
                await self.screenshot("timeout.png")
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; the page showed: {_summary(snapshot)}")
            await deferLater(reactor, 0.5, lambda: None)
            waited += 0.5

    async def screenshot(self, name: str) -> str:
        """
        Save the whole page as a PNG among the test's artifacts.
        """
        path = os.path.join(self.artifacts, name)
        await deferToThread(self.browser.screenshot, path)
        with open(path, "rb") as fp:
            self.assertEqual(fp.read(8), b"\x89PNG\r\n\x1a\n")
        return path

    def queues(self) -> dict[str, str]:
        """
        Stage type -> consumer queue, as configured.
        """
        return {s.type: s.consumer_queue for s in self.config.stages}


class LiveViewTests(_DashboardTest):
    """
    The page follows samples through the pipeline as they run.
    """

    async def test_live_view(self) -> None:
        """
        While ten samples run, the in-flight table lists them with the node
        and the Cuckoo task that holds each, the stages table lists every
        configured queue and every chart draws points.  Once the simulated
        CRITs has every analysis finished, the page shows nothing in
        flight, no failures and no dump, every pipeline stage processed
        work and none failed, the queues are empty and the Cuckoo node has
        nothing pending or running.  A screenshot is saved (and copied to
        C{$CUCKOODIST_SCREENSHOT} when set, a path relative to the checkout:
        that is how docs/dashboard.png is made).
        """
        # Two machines and six seconds an analysis: ten samples take five
        # rounds.  A report takes seconds to download, so parse_and_submit
        # holds each sample long enough for the page to show it in flight.
        await self.start(harness.Peers(analysis_seconds=6, machines=2, slow_body_seconds=3))
        await self.open_dashboard()

        feed = self.queues()["feed_cuckoo"]
        samples: dict[str, tuple[str, str]] = {}
        messages = []
        for i in range(10):
            data = harness.sample(i)
            analysis_id, body = harness.request(i, data, with_credentials=i % 2 == 0)
            samples[analysis_id] = (f"sample-{i}.exe", hashlib.md5(data).hexdigest())
            messages.append((feed, body))
        await harness.publish(self.config.amqp, messages)

        configured = set(self.queues().values())
        seen_in_flight: set[str] = set()
        processed: dict[str, float] = {}

        def check_in_flight(snapshot: dict) -> None:
            """
            Every in-flight row is one of ours, names its sample if it names
            one, and a task id shown is the one the simulated Cuckoo has for
            that sample, on the configured node.
            """
            tasks = self.peers.cuckoo.state()["tasks"]
            for row in snapshot["inFlight"]:
                self.assertIn(row["key"], samples, f"an in-flight row for an analysis never published: {row}")
                name, md5 = samples[row["key"]]
                # A stage whose message lacks the file's name shows none.
                if row["sample"]:
                    self.assertTrue(name in row["sample"] or md5 in row["sample"],
                                    f"in-flight .sample shows {row['sample']!r}, not {name} or {md5}: {row}")
                if _number(row["task"]) is not None:
                    task = tasks.get(str(int(_number(row["task"]))))
                    self.assertIsNotNone(task, f"in-flight row {row} names a task the simulated Cuckoo does not have")
                    self.assertEqual(task["md5"], md5, f"in-flight row {row} names another sample's task")
                    self.assertEqual(row["node"], "sim", f"in-flight .node shows {row['node']!r}")
                seen_in_flight.add(row["key"])

        def note(snapshot: dict) -> None:
            for row in snapshot["stages"]:
                rate = _number(row["processed-rate"])
                if rate is not None:
                    processed[row["key"]] = max(rate, processed.get(row["key"], 0.0))

        def finished() -> bool:
            analyses = self.peers.crits.state()["analyses"]
            return all(analyses.get(a, {}).get("status") == "completed" for a in samples)

        def shown(snapshot: dict) -> bool:
            check_in_flight(snapshot)
            note(snapshot)
            charts = all((snapshot["charts"][name] or 0) > 0 and snapshot["marks"][name] > 0 for name in snapshot["charts"])
            stages = configured <= {row["key"] for row in snapshot["stages"]}
            # Best with samples in flight at that very moment, for the
            # screenshot; once all are done, as it is.
            return bool(seen_in_flight) and stages and charts and (bool(snapshot["inFlight"]) or finished())

        await self.until(shown, 180, "in-flight rows of published samples, a row per configured queue and lines on every chart")
        path = await self.screenshot("dashboard.png")
        if os.environ.get("CUCKOODIST_SCREENSHOT"):
            # Relative to the checkout: trial runs in its temporary directory.
            shutil.copyfile(path, os.path.join(harness.REPO, os.environ["CUCKOODIST_SCREENSHOT"]))

        await harness.wait_until(finished, 180, "every analysis to be finished in the simulated CRITs")

        def settled(snapshot: dict) -> bool:
            check_in_flight(snapshot)
            note(snapshot)
            stages = {row["key"]: row for row in snapshot["stages"]}
            node = {row["key"]: row for row in snapshot["nodes"]}.get("sim")
            return (
                not snapshot["inFlight"]
                and all(q in stages and _number(stages[q]["depth"]) == 0 for q in configured)
                and node is not None and _number(node["pending"]) == 0 and _number(node["running"]) == 0
            )

        final = await self.until(settled, 120, "the page to show nothing in flight, empty queues and an idle node")
        self.assertEqual([row for row in final["failures"] if row["key"] in samples], [])
        self.assertEqual(final["dump"], [])
        stages = {row["key"]: row for row in final["stages"]}
        queues = self.queues()
        for stage_type in ("feed_cuckoo", "check_results", "parse_and_submit"):
            row = stages[queues[stage_type]]
            self.assertGreater(processed.get(queues[stage_type], 0.0), 0.0, f"{stage_type} never showed a processed rate: {row}")
            self.assertEqual(_number(row["failed-rate"]) or 0, 0, f"{stage_type} shows failures: {row}")
            self.assertEqual(row["consuming"], "consuming", f"{stage_type}: {row}")
            self.assertGreaterEqual(_number(row["consumers"]) or 0, 1, f"{stage_type} shows no consumer: {row}")
        node = {row["key"]: row for row in final["nodes"]}["sim"]
        self.assertTrue(node["free-disk"], f"#nodes shows no free disk for sim: {node}")
        self.assertTrue(node["probed"], f"#nodes shows no probe time for sim: {node}")


class ResubmitTests(_DashboardTest):
    """
    The dump on the page, and resubmitting from it.
    """

    async def click(self, selector: str) -> None:
        """
        Click the element C{selector} names as a user would, finding it
        afresh if the page re-rendered it meanwhile.  A confirmation dialog
        is accepted.
        """
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def click() -> None:
            driver = self.browser.driver
            driver.execute_script("window.confirm = () => true;")
            for attempt in range(20):
                try:
                    driver.find_element(By.CSS_SELECTOR, selector).click()
                    return
                except StaleElementReferenceException:
                    if attempt == 19:
                        raise

        await deferToThread(click)

    async def type_token(self, token: str) -> None:
        from selenium.webdriver.common.by import By

        def type_it() -> None:
            field = self.browser.driver.find_element(By.CSS_SELECTOR, "input#token")
            field.clear()
            field.send_keys(token)

        await deferToThread(type_it)
        await self.click("button#token-save")

    async def test_resubmit(self) -> None:
        """
        A sample that the simulated CRITs refuses until it is out of retries
        is dumped, and the page lists it in the dump and among the failures.
        Its resubmit button without the token is refused, saying so, and
        the dump file stays.  With the token saved on the page, once CRITs
        accepts again, the button puts the message back on its queue: the
        dump file goes, the row leaves the page and the analysis reaches
        CRITs as finished.
        """
        peers = harness.Peers(analysis_seconds=1, machines=2)
        # Every CRITs call fails: parse_and_submit gives up on the sample and
        # the overseer dumps it at once.
        peers.crits.faults.fail_rate = 1.0
        await self.start(peers, overseer={"max_retries": 0})
        await self.open_dashboard()
        data = harness.sample(1)
        analysis_id, body = harness.request(1, data, with_credentials=True)
        await harness.publish(self.config.amqp, [(self.queues()["feed_cuckoo"], body)])

        def dumped(snapshot: dict) -> bool:
            ours = [row for row in snapshot["dump"] if row["analysis-id"] == analysis_id]
            return bool(ours) and any(row["key"] == analysis_id for row in snapshot["failures"])

        snapshot = await self.until(dumped, 180, "the dumped sample in #dump and #failures")
        records = {os.path.basename(path): record for path, record, _ in DumpStore(self.dump_dir)}
        [row] = [row for row in snapshot["dump"] if row["analysis-id"] == analysis_id]
        name = row["key"]
        self.assertEqual(list(records), [name], "the page's data-file is not the dump file's name")
        record = records[name]
        self.assertEqual(record.analysis_id, analysis_id)
        self.assertIn(record.stage, row["stage"])
        self.assertTrue(row["reason"], f"#dump shows no reason: {row}")
        self.assertIn(row["reason"].rstrip(".… "), record.reason)
        self.assertTrue(row["button"], f"the #dump row has no button.resubmit: {row}")
        [failure] = [r for r in snapshot["failures"] if r["key"] == analysis_id]
        self.assertIn("parse_and_submit", failure["stage"])
        self.assertTrue(failure["reason"], f"#failures shows no reason: {failure}")
        await self.screenshot("dump.png")

        button = f'#dump tr[data-file="{name}"] button.resubmit'
        await self.click(button)
        # The status may say the request is under way first: wait for the
        # answer.
        refused = await self.until(lambda s: _refusal(s["status"]), 60, "#resubmit-status to show a refusal")
        self.assertTrue(os.path.exists(os.path.join(self.dump_dir, name)), "a resubmit without the token removed the dump file")
        self.assertNotEqual(peers.crits.state()["analyses"].get(analysis_id, {}).get("status"), "completed")

        peers.crits.faults.fail_rate = 0.0
        await self.type_token(TOKEN)
        await self.click(button)
        await harness.wait_until(lambda: not os.path.exists(os.path.join(self.dump_dir, name)), 60,
                                 "the resubmitted dump file to go")

        def finished() -> bool:
            return peers.crits.state()["analyses"].get(analysis_id, {}).get("status") == "completed"

        await harness.wait_until(finished, 120, "the resubmitted analysis to be finished in the simulated CRITs")
        analysis = peers.crits.state()["analyses"][analysis_id]
        self.assertTrue(analysis["results"], "the resubmitted analysis has no results in CRITs")
        final = await self.until(
            lambda s: not any(r["key"] == name for r in s["dump"]) and _outcome(s["status"]) and not _refusal(s["status"]),
            60, "the resubmitted row to leave #dump, and #resubmit-status to show the outcome",
        )
        self.assertNotEqual(final["status"], refused["status"])
        self.assertEqual(list(DumpStore(self.dump_dir)), [])
