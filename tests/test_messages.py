"""
The wire format: compatible with the Go workers, strict on bad input.
"""

import base64
import json

import attrs

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import InvalidMessage
from cuckoodist.messages import (
    AnalysisRequest, CritsData, FailedMessage, RetryInfo, TaskMessage, crits_data_of, safe_file_name, with_retry,
)

CRITS = {"analysis_id": "a-1", "object_type": "Sample", "object_id": "5f0c", "username": "u",
         "api_key": "SECRET-KEY", "md5": "d41d", "source": "src"}


def request(**changes) -> bytes:
    doc = {"payload": {"package": "exe"}, "file": {"name": "x.exe", "data": base64.b64encode(b"MZ").decode()},
           "crits_data": dict(CRITS)}
    doc.update(changes)
    return json.dumps(doc).encode()


class AnalysisRequestTests(SynchronousTestCase):
    def test_go_format(self) -> None:
        """
        A request in the Go service's format decodes, sample and all.
        """
        r = AnalysisRequest.decode(request())
        self.assertEqual((r.file_name, r.file_data, r.payload), ("x.exe", b"MZ", {"package": "exe"}))
        self.assertEqual(r.crits.analysis_id, "a-1")

    def test_secret_not_in_repr(self) -> None:
        """
        The API key never shows in a repr, so it cannot leak into a log.
        """
        self.assertNotIn("SECRET-KEY", repr(AnalysisRequest.decode(request())))

    def test_invalid(self) -> None:
        """
        Each malformed request is refused with a reason naming the field.
        """
        cases = {
            b"[1]": "JSON object",
            b"{nope": "not valid JSON",
            request(file={"name": "x"}): "file.data",
            request(file={"name": "x", "data": "!!!"}): "base64",
            request(file={"name": "x", "data": ""}): "file.data",
            request(crits_data={"object_type": "Sample"}): "crits_data.analysis_id",
            request(payload={"timeout": {"a": 1}}): "payload.timeout",
            request(crits_data=None): "crits_data",
        }
        for body, expected in cases.items():
            with self.assertRaises(InvalidMessage) as caught:
                AnalysisRequest.decode(body)
            self.assertIn(expected, caught.exception.reason, body)

    def test_hostile_name(self) -> None:
        """
        Sample names lose directories and control characters.
        """
        self.assertEqual(safe_file_name("../../etc/pass\x00wd"), "passwd")
        self.assertEqual(safe_file_name("C:\\evil\\..\\"), "sample.bin")
        self.assertEqual(len(safe_file_name("a" * 500)), 200)


class TaskMessageTests(SynchronousTestCase):
    def test_round_trip_keeps_go_keys(self) -> None:
        """
        Task messages use the Go struct's field names, plus only added ones.
        """
        task = TaskMessage(7, "http://c:8090", CritsData.from_json(CRITS, "c"), submitted_at=10.0)
        doc = json.loads(task.encode())
        self.assertEqual(doc["TaskId"], 7)
        self.assertEqual(doc["CuckooURL"], "http://c:8090")
        self.assertEqual(doc["CritsData"]["analysis_id"], "a-1")
        self.assertEqual(TaskMessage.decode(task.encode()), task)

    def test_requested_at_carried(self) -> None:
        """
        A request's C{requested_at} becomes the task's C{RequestedAt}, which
        every later stage keeps.  It is only a measurement: a value that is
        no plausible time is left out, and the request still goes.
        """
        request = AnalysisRequest.decode(json.dumps({
            "file": {"name": "a.exe", "data": "TVo="}, "crits_data": CRITS, "requested_at": 1796191602.5,
        }).encode())
        self.assertEqual(request.requested_at, 1796191602.5)
        self.assertEqual(json.loads(request.encode())["requested_at"], 1796191602.5)
        task = TaskMessage(7, "http://c:8090", CritsData.from_json(CRITS, "c"), requested_at=request.requested_at)
        self.assertEqual(json.loads(task.encode())["RequestedAt"], 1796191602.5)
        self.assertEqual(TaskMessage.decode(task.for_next_stage().encode()).requested_at, 1796191602.5)
        for bad in ("yesterday", -1, 1e300, True, {"t": 1}):
            body = json.dumps({"file": {"name": "a.exe", "data": "TVo="}, "crits_data": CRITS, "requested_at": bad})
            self.assertIsNone(AnalysisRequest.decode(body.encode()).requested_at)

    def test_retry_kept_within_a_stage(self) -> None:
        """
        A task re-published to its own stage (a poll) keeps its retry
        count; the next stage gets it with none, since counts are per stage.
        """
        task = TaskMessage(7, "http://c:8090", CritsData.from_json(CRITS, "c"), retry=RetryInfo(2, 5.0))
        self.assertEqual(TaskMessage.decode(task.encode()).retry, RetryInfo(2, 5.0))
        forwarded = task.for_next_stage().encode()
        self.assertNotIn(b"Retry", forwarded)
        self.assertEqual(TaskMessage.decode(forwarded).retry, RetryInfo())

    def test_bad_task(self) -> None:
        """
        A task id that is not a positive integer, or a URL that is not
        http(s), is refused.
        """
        for doc in ({"TaskId": 0, "CuckooURL": "http://c", "CritsData": CRITS},
                    {"TaskId": True, "CuckooURL": "http://c", "CritsData": CRITS},
                    {"TaskId": 1, "CuckooURL": "file:///etc", "CritsData": CRITS}):
            self.assertRaises(InvalidMessage, TaskMessage.decode, json.dumps(doc).encode())


class FailedMessageTests(SynchronousTestCase):
    def test_go_envelope(self) -> None:
        """
        A failed message from a Go worker (no added fields) decodes as not
        final, with no attempt count: it does not say, and the overseer
        must count for it.
        """
        go = {"Service": "feed_cuckoo", "Queue": "worker/feed_cuckoo", "Error": "boom", "Desc": "d", "Msg": "{}"}
        failed = FailedMessage.decode(json.dumps(go).encode())
        self.assertEqual((failed.attempts, failed.final), (None, False))
        self.assertEqual(FailedMessage.decode(failed.encode()), attrs.evolve(failed, attempts=1))

    def test_retry_travels_in_message(self) -> None:
        """
        The retry count is added to the message, keeping its other fields.
        """
        body = with_retry(json.loads(request()), RetryInfo(2, 5.0))
        doc = json.loads(body)
        self.assertEqual(doc["Retry"], {"attempts": 2, "first_failure": 5.0})
        self.assertEqual(AnalysisRequest.decode(body).retry, RetryInfo(2, 5.0))
        self.assertEqual(doc["crits_data"]["analysis_id"], "a-1")

    def test_crits_data_of(self) -> None:
        """
        The CRITs context is found in either message shape, or not at all.
        """
        self.assertEqual(crits_data_of(json.loads(request())).analysis_id, "a-1")
        self.assertEqual(crits_data_of({"CritsData": CRITS}).object_id, "5f0c")
        self.assertIsNone(crits_data_of({"CritsData": {"analysis_id": 5}}))
        self.assertIsNone(crits_data_of({}))
