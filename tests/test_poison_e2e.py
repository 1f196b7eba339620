"""
The poison-proof issue's "done when": one daemon running all four stages
gets every class of hostile message on every queue it consumes, mixed with
good samples, against the real RabbitMQ and the simulators.

What must hold:

  - every good sample finishes in CRITs, each uploaded to Cuckoo once;
  - every bad message is dumped exactly once, with its reason;
  - the daemon keeps consuming: every queue drains;
  - the log stays flat: a few bounded lines per bad message, no secrets;
  - no request reaches a Cuckoo or CRITs other than the configured ones,
    whatever URL a message names.
"""

from __future__ import annotations

import collections
import json
import os
import random
import time

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.dump import DumpStore
from cuckoodist.simulators.crits import DEFAULT_API_KEY, CritsSimulator
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.server import SimulatorServer
from cuckoodist.tap import build_daemon
from tests import harness
from tests import poison_corpus as corpus

GOOD = 20
#: Log events (warn and above) a bad message may cause, and the longest one.
MAX_EVENTS_PER_BAD = 10
MAX_EVENT_TEXT = 4096


@attrs.frozen
class Bad:
    """
    One hostile message as published, and how to recognise its dump.

    @ivar key: the dump's C{(queue, message)} when it is exactly known.
    @ivar marker: else, text found in the dumped message and nowhere else.
    """

    name: str
    queue: str
    body: bytes = attrs.field(repr=False)
    reason: str
    key: tuple[str, str] | None = attrs.field(default=None, repr=False)
    marker: str = ""


class _Foreign:
    """
    A Cuckoo and a CRITs that no configuration names: messages point at
    them, and they must never be called.
    """

    def __init__(self) -> None:
        self.cuckoo = CuckooSimulator(reactor)
        self.crits = CritsSimulator(reactor)
        self.cuckoo_server = SimulatorServer(reactor, self.cuckoo.resource)
        self.crits_server = SimulatorServer(reactor, self.crits.resource)
        self.cuckoo_server.start_listening()
        self.crits_server.start_listening()

    def hits(self) -> int:
        return sum(self.cuckoo.requests.counts.values()) + sum(self.crits.requests.counts.values())

    def stop(self) -> Deferred:
        from twisted.internet.defer import gatherResults

        return gatherResults([self.cuckoo_server.close(), self.crits_server.close()])


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


class PoisonTests(TestCase):
    """
    The hostile corpus on all four queues of one daemon.
    """

    timeout = 150

    def setUp(self) -> None:
        self.peers = harness.Peers(analysis_seconds=0.3, machines=8)
        self.peers.start()
        self.addCleanup(self.peers.stop)
        self.foreign = _Foreign()
        self.addCleanup(self.foreign.stop)
        self.prefix = harness.prefix()
        self.dump_dir = os.path.abspath(self.mktemp())
        doc = harness.config_doc(self.peers, self.prefix, self.dump_dir)
        doc["stages"][3].update(max_retries=1, retry_delay=0.1)
        self.config = harness.parse_config(doc)
        self.q = {s.type: s.consumer_queue for s in self.config.stages}
        queues = list(self.q.values())
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(self.config.amqp, queues)))

    def _bad_messages(self) -> list[Bad]:
        q = self.q
        feed, check, parse, failed = q["feed_cuckoo"], q["check_results"], q["parse_and_submit"], q["overseer"]
        cuckoo_url = self.peers.cuckoo_server.url
        foreign_cuckoo = self.foreign.cuckoo_server.url.rstrip("/")
        foreign_crits = self.foreign.crits_server.url.rstrip("/")
        bad: list[Bad] = []

        def stage_case(name: str, queue: str, body: bytes, reason: str) -> None:
            # A stage fails it to the overseer with the body as text; the
            # overseer dumps that text under the stage's queue.
            bad.append(Bad(name, queue, body, reason, key=(queue, _text(body))))

        for case in corpus.REQUEST_CASES:
            stage_case(case.name, feed, case.body, case.reason)
        for case in corpus.TASK_CASES:
            stage_case(f"{case.name}@check", check, case.body, case.reason)
            stage_case(f"{case.name}@parse", parse, case.body, case.reason)
        for case in corpus.RAW_CASES:
            for stage, queue in (("feed", feed), ("check", check), ("parse", parse)):
                stage_case(f"{case.name}@{stage}", queue, case.body, case.reason)
            bad.append(Bad(f"{case.name}@failed", failed, case.body, case.reason, key=(failed, _text(case.body))))
        for case in corpus.FAILED_CASES:
            bad.append(Bad(case.name, failed, case.body, case.reason, key=(failed, _text(case.body))))

        # Valid messages naming peers nobody configured.
        peer_cases = [
            ("req-foreign-crits", feed, corpus.request_doc(crits=corpus.crits_doc(crits_url=foreign_crits)),
             "is not the configured CRITs"),
            ("task-foreign-cuckoo@check", check, corpus.task_doc(cuckoo_url=foreign_cuckoo), "is not a Cuckoo in this configuration"),
            ("task-foreign-cuckoo-path@check", check, corpus.task_doc(cuckoo_url=foreign_cuckoo + "/api"), "is not a Cuckoo"),
            ("task-foreign-cuckoo-query@parse", parse, corpus.task_doc(cuckoo_url=foreign_cuckoo + "/?x=1"), "is not a Cuckoo"),
            ("task-foreign-cuckoo@parse", parse, corpus.task_doc(cuckoo_url=foreign_cuckoo), "is not a Cuckoo"),
            ("task-foreign-crits@parse", parse,
             corpus.task_doc(cuckoo_url=cuckoo_url, crits=corpus.crits_doc(crits_url=foreign_crits)),
             "is not the configured CRITs"),
        ]
        for name, queue, doc, reason in peer_cases:
            marker = f"PZN-{name}"
            doc = _mark(doc, marker)
            stage_case(name, queue, corpus.dumps(doc), reason)

        # Failed envelopes that decode but must not be re-published.
        def envelope(name: str, reason: str, msg_queue: str = feed, **changes) -> None:
            marker = f"PZN-{name}"
            inner = corpus.dumps(_mark(corpus.request_doc(file=...), marker)).decode("ascii")
            doc = corpus.failed_doc(msg=inner, queue=msg_queue, Error=f"boom {name}")
            doc.update(changes)
            bad.append(Bad(name, failed, corpus.dumps(doc), reason, marker=marker))

        envelope("env-queue-300-bytes", "at most 255 bytes", msg_queue="q" * 300)
        envelope("env-queue-non-ascii-300-bytes", "at most 255 bytes", msg_queue="é" * 150)
        envelope("env-queue-non-ascii", "not one this overseer may publish to", msg_queue="worker/fëed_çuckoo")
        envelope("env-queue-amq", "reserved by the broker", msg_queue="amq.gen-poison")
        envelope("env-queue-delay", "not one this overseer may publish to", msg_queue="cuckoodist.delay.1000ms")
        envelope("env-queue-failed-itself", "not one this overseer may publish to", msg_queue=failed)
        envelope("env-queue-unknown", "not one this overseer may publish to", msg_queue=f"{self.prefix}/nobody")
        envelope("env-queue-control", "control characters", msg_queue="worker/feed\ncuckoo")
        envelope("env-service-path", "boom env-service-path", Service="x/../../escape", Final=True)
        envelope("env-service-nul", "boom env-service-nul", Service="feed\x00cuckoo", Final=True)
        envelope("env-service-300", "boom env-service-300", Service="s" * 300, Final=True)
        envelope("env-huge-attempts", "gave up after", Attempts=10**6)
        envelope("env-huge-numbers", "boom env-huge-numbers", Attempts=corpus.HUGE_INT,
                 FirstFailure=corpus.HUGE_INT, TaskId=corpus.HUGE_INT, Final=True)
        envelope("env-msg-not-json", "not retried", Msg="not json at all PZN-env-msg-not-json")
        # Retried once to the feed, refused there, then dumped: still one dump.
        envelope("env-retried-then-refused", "file must be an object")
        return bad

    async def _queue_depths(self) -> dict[str, int]:
        connection = AMQPConnectionService(reactor, self.config.amqp)
        connection.startService()
        try:
            client = await connection.whenConnected(failAfterFailures=3)
            channel = await client.open_channel()
            depths = {}
            for name in self.q.values():
                ok = await channel.queue_declare(queue=name, passive=True)
                depths[name] = ok.message_count
            return depths
        finally:
            await connection.stopService()

    async def test_poison_on_every_queue(self) -> None:
        """
        Hostile messages on all four queues, mixed with good samples: the
        good ones finish, each bad one is dumped exactly once with its
        reason, the queues drain, the log stays flat and no foreign peer is
        ever called.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        daemon = build_daemon(self.config, reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)

        good, expected = harness.requests(self.q["feed_cuckoo"], GOOD)
        bad = self._bad_messages()
        messages = [(b.queue, b.body) for b in bad] + good
        random.Random(7).shuffle(messages)
        started = time.monotonic()
        await harness.publish(self.config.amqp, messages)

        crits = self.peers.crits

        def settled() -> bool:
            analyses = crits.state()["analyses"]
            done = sum(1 for a in expected if analyses.get(a, {}).get("status") == "completed")
            return done == GOOD and len(list(DumpStore(self.dump_dir))) >= len(bad)

        await harness.wait_until(settled, 100, "good samples to finish and bad ones to be dumped")
        # Anything still on its way would show up as an extra dump now.
        await _sleep(1.5)
        elapsed = time.monotonic() - started

        # Good samples: finished, each uploaded once.
        analyses = crits.state()["analyses"]
        for analysis_id in expected:
            self.assertEqual(analyses[analysis_id]["status"], "completed", analysis_id)
        tasks = self.peers.cuckoo.state()["tasks"].values()
        uploads = collections.Counter(t["md5"] for t in tasks)
        for md5 in expected.values():
            self.assertEqual(uploads[md5], 1, f"sample {md5} uploaded {uploads[md5]} times")
        self.assertEqual(sum(uploads.values()), GOOD, "a bad request reached Cuckoo")

        # Bad messages: each dumped exactly once, with its reason.
        records = [(path, record) for path, record, problem in DumpStore(self.dump_dir)]
        self.assertTrue(all(r is not None for _, r in records), "an unreadable dump file")
        by_key = {b.key: b for b in bad if b.key is not None}
        self.assertEqual(len(by_key), len([b for b in bad if b.key is not None]), "two bad messages share a key")
        found: collections.Counter[str] = collections.Counter()
        strays, wrong_reason = [], []
        for path, record in records:
            case = by_key.get((record.queue, record.message))
            if case is None:
                case = next((b for b in bad if b.marker and b.marker in record.message), None)
            if case is None:
                strays.append((record.queue[:60], record.reason[:200], record.message[:120]))
                continue
            found[case.name] += 1
            if case.reason not in record.reason:
                wrong_reason.append((case.name, record.reason[:200]))
            self.assertEqual(os.path.dirname(path), self.dump_dir)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(strays, [], "dumps matching no bad message")
        self.assertEqual(wrong_reason, [], "dumps without their reason")
        twice = {name: n for name, n in found.items() if n != 1}
        missing = [b.name for b in bad if found[b.name] == 0]
        self.assertEqual((twice, missing), ({}, []), "bad messages not dumped exactly once")
        self.assertEqual(len(records), len(bad))
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.dump_dir))), [os.path.basename(self.dump_dir)])

        # The daemon is still consuming: every queue drained.
        depths = await self._queue_depths()
        self.assertEqual(depths, {name: 0 for name in self.q.values()})

        # Nothing reached a peer no configuration names.
        self.assertEqual(self.foreign.hits(), 0, (self.foreign.cuckoo.requests.counts, self.foreign.crits.requests.counts))

        # The log stays flat, carries no secret and no bug report.
        texts = [formatEvent(e) or "" for e in events]
        loud = [t for e, t in zip(events, texts) if e.get("log_level", LogLevel.info) >= LogLevel.warn]
        longest = max((len(t) for t in texts), default=0)
        print(
            "\n  poison e2e figures\n"
            f"  {'sent':<22}{len(messages):>8}\n"
            f"  {'bad (all 4 queues)':<22}{len(bad):>8}\n"
            f"  {'good finished':<22}{sum(1 for a in expected if analyses[a]['status'] == 'completed'):>5}/{GOOD}\n"
            f"  {'bad dumped':<22}{len(records):>8}\n"
            f"  {'Cuckoo uploads':<22}{sum(uploads.values()):>8}\n"
            f"  {'foreign requests':<22}{self.foreign.hits():>8}\n"
            f"  {'log events (all)':<22}{len(events):>8}\n"
            f"  {'log events (warn+)':<22}{len(loud):>8}\n"
            f"  {'longest event (chars)':<22}{longest:>8}\n"
            f"  {'seconds':<22}{elapsed:>8.1f}\n"
        )
        self.assertLessEqual(len(loud), MAX_EVENTS_PER_BAD * len(bad))
        self.assertLessEqual(len(events), MAX_EVENTS_PER_BAD * (len(bad) + GOOD))
        self.assertLessEqual(longest, MAX_EVENT_TEXT, max(texts, key=len)[:300])
        joined = "\n".join(texts)
        self.assertNotIn(corpus.API_KEY, joined)
        self.assertNotIn(DEFAULT_API_KEY, joined)
        # One event, one line: text from a message must not forge others.
        multiline = [t[:200] for t in texts if "\n" in t or "\r" in t]
        self.assertEqual(multiline, [], "log events spanning several lines")
        bugs = [t[:300] for t in texts if "Bug:" in t]
        self.assertEqual(bugs, [], "unexpected exceptions in the stages")


def _mark(doc: dict, marker: str) -> dict:
    """
    Put C{marker} where it survives into the dump: the analysis id of a
    message's CRITs context, and an unknown top-level field.
    """
    doc = json.loads(json.dumps(doc))
    for key in ("crits_data", "CritsData"):
        if isinstance(doc.get(key), dict):
            doc[key]["analysis_id"] = marker
    doc["PoisonMarker"] = marker
    return doc


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
