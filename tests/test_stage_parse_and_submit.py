"""
parse_and_submit in memory: each parser's rows reach CRITs, a chain relays
the task, the last instance finishes the analysis and holds the clean-up
in a delay queue, and a failure carries what was already posted.
"""

import json

import attrs
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.messages import RetryInfo, TaskMessage
from cuckoodist.stages.parse_and_submit import ParseAndSubmit
from tests.memory import CRITS, World

#: The row subtypes each parser produces from the simulator's report.
SUBTYPES = {
    "info": {"info"},
    "signatures": {"signature"},
    "behavior": {"process", "api_call", "file", "registry_key", "mutex"},
    "network": {"Host", "Domain", "HTTP Request", "User-Agent"},
    "dropped": {"file_added"},
}


def stage(**changes) -> dict:
    return {"type": "parse_and_submit", "cleanup_delay": 300, **changes}


class Harness(SynchronousTestCase):
    """
    A parse_and_submit stage and one reported task.
    """

    def make(self, **changes) -> World:
        self.world = World(self, ParseAndSubmit, stage(**changes), cuckoo={"analysis_seconds": 10})
        self.task_id = self.world.submit()
        self.world.clock.advance(10)
        self.task = self.world.task_message(self.task_id)
        # The analysed sample is in CRITs before any analysis of it.
        self.world.crits.touch_object("Sample", self.task.crits.object_id)
        return self.world

    def subtypes(self) -> set[str]:
        return {row["subtype"] for row in self.world.analysis()["results"]}

    def logs(self) -> list[str]:
        """
        The notes in the analysis log, one per line: a step's notes arrive
        as one log entry.
        """
        return [line for entry in self.world.analysis()["log"] for line in entry["message"].split("\n")]

    def services(self) -> list[bytes]:
        """
        The bodies of the services requests sent.
        """
        return [s.body for s in self.world.agent.sent if s.url == CRITS + "/api/v1/services/"]

    def failure(self) -> dict:
        (failed,) = self.world.outbox.published
        self.assertEqual(failed.queue, "worker/failed")
        return failed.json()


class ParserTests(Harness):
    def test_each_parser(self) -> None:
        """
        Each parser alone posts its own rows and no others, and the analysis
        is finished as completed.
        """
        for parser, expected in SUBTYPES.items():
            w = self.make(enabled_parsers=[parser])
            self.successResultOf(w.deliver(self.task.encode()))
            self.assertEqual((self.subtypes(), w.analysis()["status"]), (expected, "completed"), parser)
            report_read = "/tasks/report/1/json" in w.agent.paths()
            self.assertEqual(report_read, parser != "dropped", parser)

    def test_all_parsers(self) -> None:
        """
        With every parser, every subtype is posted, in one request per
        batch under the body limit.
        """
        w = self.make()
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual(self.subtypes(), set().union(*SUBTYPES.values()))

    def test_api_calls_capped(self) -> None:
        """
        Past C{push_api_calls_max}, the CRITs log says how many API calls
        were pushed of how many.
        """
        w = self.make(enabled_parsers=["behavior"], push_api_calls_max=3)
        self.successResultOf(w.deliver(self.task.encode()))
        rows = [r for r in w.analysis()["results"] if r["subtype"] == "api_call"]
        self.assertEqual(len(rows), 3)
        self.assertIn("Pushed 3 of 40 API calls (push_api_calls_max).", self.logs())
        # The note rides on the results: one request for both, then finish.
        (results, finish) = self.services()
        self.assertIn(b"result_is_batch=1", results)
        self.assertIn(b"log_message=Pushed+3+of+40", results)
        self.assertEqual(w.analysis()["log"][0]["level"], "info")


class FinishTests(Harness):
    def test_chain_relays(self) -> None:
        """
        An instance with a producer queue passes the task on, without its
        retry count, and neither checks, finishes nor cleans up.
        """
        w = self.make(enabled_parsers=["info"], producer_queue="worker/parse_dropped")
        task = TaskMessage.decode(self.task.encode())
        retried = TaskMessage(task.task_id, task.cuckoo_url, task.crits, task.submitted_at, retry=RetryInfo(2, 1.0))
        self.successResultOf(w.deliver(retried.encode()))
        (out,) = w.outbox.published
        self.assertEqual((out.queue, out.delay, out.body), ("worker/parse_dropped", None, task.encode()))
        self.assertEqual((w.analysis()["status"], self.subtypes()), ("started", {"info"}))
        self.assertNotIn(f"/tasks/view/{self.task_id}", w.agent.paths())

    def test_cleanup_held_by_the_broker(self) -> None:
        """
        The last instance finishes the analysis, without viewing the task
        (its report is there), and publishes the task to its clean-up
        queue through a delay of C{cleanup_delay}; the task is not deleted
        yet.
        """
        w = self.make(enabled_parsers=["info"])
        self.successResultOf(w.deliver(self.task.encode()))
        (later,) = w.outbox.published
        self.assertEqual((later.queue, later.delay, later.body), ("worker/parse_and_submit.cleanup", 300.0, self.task.encode()))
        self.assertEqual(w.agent.paths()[0], f"/tasks/report/{self.task_id}/json")
        self.assertNotIn(f"/tasks/view/{self.task_id}", w.agent.paths())
        self.assertEqual(w.analysis()["status"], "completed")
        self.assertFalse(w.cuckoo.state()["tasks"][str(self.task_id)]["deleted"])

    def test_cleanup_delay_capped(self) -> None:
        """
        A clean-up delay past a day is held for a day, the longest TTL a
        broker takes.
        """
        w = self.make(enabled_parsers=["info"], cleanup_delay=200000)
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual(w.outbox.published[0].delay, 86400.0)

    def test_no_cleanup(self) -> None:
        """
        Without C{cuckoo_cleanup}, the analysis is finished and nothing is
        published, and the task is not looked up first.
        """
        w = self.make(enabled_parsers=["info"], cuckoo_cleanup=False)
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual((w.outbox.published, w.analysis()["status"]), ([], "completed"))
        self.assertNotIn(f"/tasks/view/{self.task_id}", w.agent.paths())

    def test_task_gone(self) -> None:
        """
        A task no longer in Cuckoo is failed as final when its report is
        missing and a view says the task is gone, before anything is
        posted.
        """
        w = self.make()
        gone = w.task_message(99)
        self.successResultOf(w.deliver(gone.encode()))
        doc = self.failure()
        self.assertEqual((doc["Final"], w.agent.paths()), (True, ["/tasks/report/99/json", "/tasks/view/99"]))
        self.assertIn("Cuckoo task 99 no longer exists", doc["Error"])
        self.assertIsNone(w.analysis())

    def test_task_gone_dropped_only(self) -> None:
        """
        Without report parsers, the 500 Cuckoo answers for the archive of
        a task without an analysis folder leads to the same view, and the
        same final failure.
        """
        w = self.make(enabled_parsers=["dropped"])
        self.successResultOf(w.deliver(w.task_message(99).encode()))
        doc = self.failure()
        self.assertEqual((doc["Final"], w.agent.paths()), (True, ["/tasks/report/99/dropped", "/tasks/view/99"]))
        self.assertIn("Cuckoo task 99 no longer exists", doc["Error"])
        self.assertIsNone(w.analysis())

    def test_report_not_written_yet(self) -> None:
        """
        A report missing for a task that exists is waited for, as before;
        the task is viewed once for the whole delivery, not per retry nor
        per step.
        """
        w = World(self, ParseAndSubmit, stage(), cuckoo={"analysis_seconds": 10})
        self.world = w
        task_id = w.submit()
        w.clock.advance(5)  # running: no report, no analysis folder yet
        task = w.task_message(task_id)
        w.crits.touch_object("Sample", task.crits.object_id)
        d = w.deliver(task.encode())
        for wait in (2, 4):
            self.assertNoResult(d)
            w.clock.advance(wait)
        self.successResultOf(d)
        self.assertEqual(w.agent.paths().count(f"/tasks/view/{task_id}"), 1, w.agent.paths())
        self.assertGreater(w.agent.paths().count(f"/tasks/report/{task_id}/json"), 1)
        self.assertEqual(w.analysis()["status"], "completed")


class CleanupHandlerTests(Harness):
    def clean(self, body: bytes):
        return self.world.deliver(body, handler=self.world.stage._clean_up)

    def test_deletes(self) -> None:
        """
        The clean-up delivery deletes the task from Cuckoo, and acks.
        """
        w = self.make()
        self.successResultOf(self.clean(self.task.encode()))
        self.assertTrue(w.cuckoo.state()["tasks"][str(self.task_id)]["deleted"])
        self.assertEqual(w.outbox.published, [])

    def test_already_gone(self) -> None:
        """
        A task already gone counts as deleted.
        """
        w = self.make()
        self.successResultOf(self.clean(w.task_message(99).encode()))
        self.assertEqual(w.agent.paths(), ["/tasks/delete/99"])

    def test_failures_ack(self) -> None:
        """
        A clean-up that cannot be done (invalid message, Cuckoo refusing
        after the stage's retries) is given up and acked: the results are
        in CRITs and a task left behind only costs disk.
        """
        w = self.make()
        self.successResultOf(self.clean(b"not json"))
        running = w.submit(b"MZ still running")
        d = self.clean(w.task_message(running).encode())
        for wait in (1, 2, 3):
            w.clock.advance(wait)
            self.assertNoResult(d)
        w.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(w.agent.paths(), [f"/tasks/delete/{running}"] * 4)
        self.assertFalse(w.cuckoo.state()["tasks"][str(running)]["deleted"])

    def test_stopping_abandons(self) -> None:
        """
        A clean-up cancelled (the stage stopping) while it waits to retry is
        abandoned unacked, not swallowed.
        """
        w = self.make()
        running = w.submit(b"MZ still running")
        d = self.clean(w.task_message(running).encode())
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_bug_acks(self) -> None:
        """
        An unexpected error while deleting is logged as a bug and acked.
        """
        w = self.make()

        class Broken:
            async def request(self, *args, **kwargs):
                raise ZeroDivisionError("bug")

        w.stage.context = type(w.context)(reactor=w.clock, connection=None, http=Broken(), config=w.config)
        self.successResultOf(self.clean(self.task.encode()))
        (bug,) = self.flushLoggedErrors(ZeroDivisionError)


class ProgressTests(Harness):
    def test_progress_carried(self) -> None:
        """
        When finishing fails after the results were posted, the failed
        message carries what was done; its retry posts nothing again and
        finishes the analysis.
        """
        w = self.make()
        w.agent.refuse = lambda sent: sent.url.startswith(CRITS) and b"finish=1" in sent.body
        d = w.deliver(self.task.encode())
        for wait in (1, 2, 4):
            self.assertNoResult(d)
            w.clock.advance(wait)
        doc = self.failure()
        self.assertEqual(doc["Final"], False)
        carried = json.loads(doc["Msg"])
        progress = carried["Progress"]
        self.assertEqual((progress["report_done"], progress["dropped_done"]), (1, 1))
        self.assertGreaterEqual(progress["report_requests"], 1)
        self.assertEqual(progress["dropped_requests"], 1)
        posted = len(w.analysis()["results"])
        samples = len(w.crits.state()["samples"])

        w.agent.refuse = lambda sent: False
        w.agent.sent.clear()
        w.outbox.published.clear()
        self.successResultOf(w.deliver(json.dumps(carried).encode()))
        self.assertEqual((len(w.analysis()["results"]), len(w.crits.state()["samples"])), (posted, samples))
        self.assertEqual(len(w.analysis()["log"]), 1)  # the dropped step's notes, once
        self.assertEqual(w.analysis()["status"], "completed")
        self.assertNotIn(f"/tasks/report/{self.task_id}/json", w.agent.paths())
        self.assertEqual(w.outbox.published[0].queue, "worker/parse_and_submit.cleanup")

    def test_nothing_done_nothing_carried(self) -> None:
        """
        When the first step fails, the message is retried as it came.
        """
        w = self.make(enabled_parsers=["info"])
        w.agent.refuse = lambda sent: sent.url.startswith(CRITS)
        d = w.deliver(self.task.encode())
        for wait in (1, 2, 4):
            self.assertNoResult(d)
            w.clock.advance(wait)
        self.assertEqual(self.failure()["Msg"], self.task.encode().decode())


class DroppedTests(Harness):
    def test_dropped_files(self) -> None:
        """
        Each non-empty dropped file becomes a CRITs sample of the message's
        source, related to the analysed object, with a row naming its md5;
        skipped archive entries are noted in the analysis log.  A
        redelivery creates no second sample.
        """
        w = self.make(enabled_parsers=["dropped"])
        self.successResultOf(w.deliver(self.task.encode()))
        state = w.crits.state()
        dropped = {k: s for k, s in state["samples"].items() if s["md5"]}
        rows = w.analysis()["results"]
        self.assertEqual(sorted((r["result"], r["md5"]) for r in rows), sorted((s["filename"], s["md5"]) for s in dropped.values()))
        self.assertTrue(dropped)
        self.assertEqual({s["source"] for s in dropped.values()}, {"cuckoodist-test"})
        related = {(r["left_id"], r["right_id"]) for r in state["relationships"]}
        self.assertTrue(related.issuperset((k, self.task.crits.object_id) for k in dropped))
        self.assertTrue(any(line.startswith("Skipped archive entry: files/empty_") for line in self.logs()))
        # Related by the upload itself; the notes ride on the rows.
        self.assertEqual(w.agent.paths("PATCH"), [])
        self.assertEqual(w.crits.state()["actions"].get("upload related"), len(dropped))
        self.assertEqual(len(self.services()), 2)  # rows with notes, finish
        self.assertEqual(w.analysis()["log"][0]["level"], "warning")

        w.outbox.published.clear()
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual(len([s for s in w.crits.state()["samples"].values() if s["md5"]]), len(dropped))
        self.assertEqual(len(w.crits.state()["relationships"]), 2 * len(dropped))

    def test_related_object_missing(self) -> None:
        """
        When CRITs has no analysed object to relate a dropped file to, it
        refuses the relation but stores the sample: the row is posted, the
        log says the file is not related, and no other request is tried.
        """
        w = self.make(enabled_parsers=["dropped"])
        task = w.task_message(self.task_id)
        orphan = attrs.evolve(task, crits=attrs.evolve(task.crits, object_id="f" * 24))
        self.successResultOf(w.deliver(orphan.encode()))
        state = w.crits.state()
        dropped = {k for k, s in state["samples"].items() if s["md5"]}
        self.assertTrue(dropped)
        self.assertEqual(len(w.analysis()["results"]), len(dropped))
        self.assertEqual(state["relationships"], [])
        self.assertEqual(w.agent.paths("PATCH"), [])
        self.assertTrue(any("stored but not related: CRITs has no Sample ffff" in line for line in self.logs()), self.logs())
        self.assertEqual(w.analysis()["status"], "completed")

    def test_email_related_apart(self) -> None:
        """
        CRITs would relate a file uploaded for an Email "Contained Within"
        it, so for an Email the relationship is forged apart, "Related To"
        as for any other object.
        """
        w = self.make(enabled_parsers=["dropped"])
        task = w.task_message(self.task_id)
        email = attrs.evolve(task, crits=attrs.evolve(task.crits, object_type="Email"))
        w.crits.touch_object("Email", task.crits.object_id)
        self.successResultOf(w.deliver(email.encode()))
        state = w.crits.state()
        dropped = [k for k, s in state["samples"].items() if s["md5"]]
        self.assertEqual(state["actions"].get("upload related", 0), 0)
        self.assertEqual(len(w.agent.paths("PATCH")), len(dropped))
        self.assertTrue({(k, "Email", "Related To") for k in dropped}
                        <= {(r["left_id"], r["right_type"], r["rel_type"]) for r in state["relationships"]})

    def test_archive_too_large(self) -> None:
        """
        An archive over C{max_dropped_bytes} is left out with a note in the
        analysis log; the analysis still completes.
        """
        w = self.make(enabled_parsers=["dropped"], max_dropped_bytes=100)
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual((w.analysis()["status"], w.analysis()["results"]), ("completed", []))
        self.assertTrue(any(line.startswith("Dropped files not processed:") for line in self.logs()))
        # No rows: the note goes alone, then the finish.
        (note, finish) = self.services()
        self.assertNotIn(b"result=", note)
        self.assertIn(b"finish=1", finish)

    def test_no_source(self) -> None:
        """
        Dropped files for a message without a CRITs source fail as final.
        """
        w = self.make(enabled_parsers=["dropped"])
        task = w.task_message(self.task_id)
        task = TaskMessage(task.task_id, task.cuckoo_url, type(task.crits)(analysis_id="analysis-1", object_type="Sample", object_id="o"))
        self.successResultOf(w.deliver(task.encode()))
        doc = self.failure()
        self.assertEqual(doc["Final"], True)
        self.assertIn("crits_data.source is empty", doc["Error"])

    def test_file_over_crits_limit(self) -> None:
        """
        A dropped file CRITs could not take is noted in the log, the others
        stored, and the analysis completes.
        """
        w = self.make(enabled_parsers=["dropped"], crits_max_body=4150)
        self.successResultOf(w.deliver(self.task.encode()))
        self.assertEqual(w.analysis()["status"], "completed")
        self.assertTrue(any("not stored" in line and "request limit" in line for line in self.logs()), self.logs())


class PartialProgressTests(Harness):
    def test_within_a_step(self) -> None:
        """
        When one of several result requests fails, the retry skips the
        requests already posted and posts the rest.
        """
        w = self.make(enabled_parsers=["info", "signatures", "behavior", "network"], crits_max_body=6000, cuckoo_cleanup=False)
        bodies: list[bytes] = []
        failing = [True]

        def refuse(sent) -> bool:
            if not (sent.url.startswith(CRITS) and b"result_type" in sent.body):
                return False
            if sent.body not in bodies:
                bodies.append(sent.body)
            return failing[0] and bodies.index(sent.body) == 1

        w.agent.refuse = refuse
        d = w.deliver(self.task.encode())
        for wait in (1, 2, 4):
            self.assertNoResult(d)
            w.clock.advance(wait)
        carried = json.loads(self.failure()["Msg"])
        self.assertEqual(carried["Progress"], {"report_requests": 1})
        failing[0] = False
        w.outbox.published.clear()
        self.successResultOf(w.deliver(json.dumps(carried).encode()))
        self.assertGreater(len(bodies), 2)
        posted = [s.body for s in w.agent.sent if s.body in bodies]
        self.assertEqual(posted.count(bodies[0]), 1)
        self.assertEqual(set(posted), set(bodies))
        self.assertEqual(w.analysis()["status"], "completed")


    def test_request_carrying_notes(self) -> None:
        """
        When the request carrying a step's notes fails, the retry posts
        that request (results and notes) once, and the earlier ones not
        again.
        """
        w = self.make(enabled_parsers=["info", "dropped"], cuckoo_cleanup=False)
        failing = [True]
        w.agent.refuse = lambda sent: failing[0] and sent.url.startswith(CRITS) and b"log_message=Skipped" in sent.body
        d = w.deliver(self.task.encode())
        for wait in (1, 2, 4):
            self.assertNoResult(d)
            w.clock.advance(wait)
        carried = json.loads(self.failure()["Msg"])
        self.assertEqual(carried["Progress"], {"report_requests": 1, "report_done": 1})
        failing[0] = False
        w.outbox.published.clear()
        self.successResultOf(w.deliver(json.dumps(carried).encode()))
        subtypes = [r["subtype"] for r in w.analysis()["results"]]
        self.assertEqual(subtypes.count("info"), 1)
        self.assertGreaterEqual(subtypes.count("file_added"), 1)
        self.assertEqual(len(w.analysis()["log"]), 1)
        self.assertEqual(w.analysis()["status"], "completed")


class BoundedReportTests(Harness):
    def test_bounded_values_noted(self) -> None:
        """
        Report values past the caps are cut, and the analysis log says how
        many, not what.
        """
        from treq.testing import StringStubbingResource

        from cuckoodist.report.rows import MAX_STRING

        w = self.make(enabled_parsers=["signatures"], cuckoo_cleanup=False)
        report = json.dumps({"info": {"id": self.task_id, "version": "2.0.7"},
                             "signatures": [{"name": "s", "description": "d" * (MAX_STRING + 10), "severity": 1}]}).encode()
        w.agent.serve("http://cuckoo.test:8090", StringStubbingResource(lambda *request: (200, {}, report)))
        self.successResultOf(w.deliver(self.task.encode()))
        (row,) = w.analysis()["results"]
        self.assertLessEqual(len(row["result"]), MAX_STRING)
        self.assertTrue(any(line.startswith("Report values bounded: 1 string(s) cut") for line in self.logs()), self.logs())


class NoteRequestTests(SynchronousTestCase):
    """
    How a step's notes travel: folded into one log line on the step's
    last results request, within the body limit.
    """

    def client(self, max_body: int = 2_500_000):
        from cuckoodist.crits import CritsClient
        from cuckoodist.messages import CritsData

        return CritsClient(None, CritsData("a-1", "Sample", "o" * 24), max_body=max_body)

    def rows(self, n: int, size: int = 100):
        from cuckoodist.results import ResultRow

        return [ResultRow("info", f"{i}:" + "x" * size, {}) for i in range(n)]

    def test_folded(self) -> None:
        """
        Several notes become one message, one note a line, at the most
        severe of their levels; no notes, no log fields.
        """
        from cuckoodist.crits import Note, log_fields

        self.assertEqual(log_fields([]), {})
        fields = log_fields([Note("a"), Note("b", "warning"), Note("c", "debug")])
        self.assertEqual(fields, {"log_message": "a\nb\nc", "log_level": "warning"})
        self.assertEqual(log_fields([Note("a", "error"), Note("b", "critical")])["log_level"], "critical")

    def test_folded_bounded(self) -> None:
        """
        Many long notes are cut to L{MAX_LOG_MESSAGE} characters, saying
        how many were left out.
        """
        from cuckoodist.crits import MAX_LOG_MESSAGE, Note, log_fields

        message = log_fields([Note("n" * 5000)] * 50)["log_message"]
        self.assertLessEqual(len(message), MAX_LOG_MESSAGE)
        self.assertTrue(message.endswith("\n... and 46 more note(s)"), message[-40:])  # four fit

    def test_on_last_request(self) -> None:
        """
        The notes ride on the last of several results requests, and only
        there; every body stays under the limit.
        """
        from cuckoodist.crits import Note
        from cuckoodist.crits_encoding import encode_form

        crits = self.client(max_body=3000)
        # 45 rows: three requests, the last with room to spare.
        requests = list(crits.result_requests(self.rows(45), [Note("hello", "warning")]))
        plain = list(crits.result_requests(self.rows(45)))
        self.assertGreater(len(requests), 2)
        self.assertEqual(len(requests), len(plain))
        self.assertEqual(requests[:-1], plain[:-1])
        self.assertEqual(requests[-1], {**plain[-1], "log_message": "hello", "log_level": "warning"})
        self.assertTrue(all(len(encode_form(r)) < 3000 for r in requests))

    def test_apart_when_full(self) -> None:
        """
        When the last results request has no room left for the notes, they
        follow in a request of their own; with no rows, too.
        """
        from cuckoodist.crits import Note
        from cuckoodist.crits_encoding import encode_form

        crits = self.client(max_body=3000)
        note = Note("n" * 1500)
        plain = list(crits.result_requests(self.rows(1, size=2000)))
        self.assertGreater(len(encode_form(plain[-1])) + 1500, 3000)
        requests = list(crits.result_requests(self.rows(1, size=2000), [note]))
        self.assertEqual(requests[:-1], plain)
        self.assertEqual(requests[-1], {"object_type": "Sample", "object_id": "o" * 24, "analysis_id": "a-1",
                                        "log_message": note.message, "log_level": "info"})
        self.assertTrue(all(len(encode_form(r)) < 3000 for r in requests))
        self.assertEqual(list(crits.result_requests([], [note])), requests[-1:])
        self.assertEqual(list(crits.result_requests([], [])), [])
