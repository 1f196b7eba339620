"""
The message side of samples by reference and of priorities: digests
checked as hex of the right length, priorities 1 to 3 only, both carried
through encode and decode.
"""

import base64
import hashlib
import json

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import InvalidMessage
from cuckoodist.messages import AnalysisRequest, CritsData, TaskMessage

CRITS = {"analysis_id": "a-1", "object_type": "Sample", "object_id": "5f0c"}
MD5 = hashlib.md5(b"MZ").hexdigest()
SHA256 = hashlib.sha256(b"MZ").hexdigest()


def body(file: dict, **top) -> bytes:
    return json.dumps({"file": file, "crits_data": CRITS, **top}).encode()


class RequestTests(SynchronousTestCase):
    def test_by_reference(self) -> None:
        """
        A request with md5 (and sha256) and no data is by reference; the
        digests are kept in lower case and survive a round trip.
        """
        r = AnalysisRequest.decode(body({"name": "x.exe", "md5": MD5.upper(), "sha256": SHA256}))
        self.assertTrue(r.by_reference)
        self.assertEqual((r.md5, r.sha256, r.file_data, r.priority), (MD5, SHA256, None, None))
        self.assertEqual(AnalysisRequest.decode(r.encode()), r)
        self.assertNotIn("data", json.loads(r.encode())["file"])

    def test_inline_with_digests(self) -> None:
        """
        Inline data with digests must match them.
        """
        data = base64.b64encode(b"MZ").decode()
        r = AnalysisRequest.decode(body({"name": "x", "data": data, "md5": MD5}))
        self.assertEqual(r.file_data, b"MZ")
        with self.assertRaises(InvalidMessage) as caught:
            AnalysisRequest.decode(body({"name": "x", "data": data, "md5": "0" * 32}))
        self.assertIn("file.md5", caught.exception.reason)

    def test_bad_digests(self) -> None:
        """
        Digests of the wrong length, not hex, or not strings are refused,
        naming the field; no data and no md5 is refused too.
        """
        cases = [
            ({"name": "x", "md5": MD5[:-1]}, "file.md5"),
            ({"name": "x", "md5": "g" * 32}, "file.md5"),
            ({"name": "x", "md5": 5}, "file.md5"),
            ({"name": "x", "md5": MD5, "sha256": MD5}, "file.sha256"),
            ({"name": "x", "md5": "\u0661" * 32}, "file.md5"),
            ({"name": "x"}, "file.data"),
        ]
        for file, words in cases:
            with self.assertRaises(InvalidMessage) as caught:
                AnalysisRequest.decode(body(file))
            self.assertIn(words, caught.exception.reason)

    def test_priority(self) -> None:
        """
        Priority is 1 to 3 or absent (None); anything else is refused.
        """
        for value in (1, 2, 3):
            r = AnalysisRequest.decode(body({"name": "x", "md5": MD5}, priority=value))
            self.assertEqual(r.priority, value)
            self.assertEqual(AnalysisRequest.decode(r.encode()).priority, value)
        self.assertIsNone(AnalysisRequest.decode(body({"name": "x", "md5": MD5}, priority=None)).priority)
        for value in (0, 4, -1, True, "2", 2.0, 2**70, [1]):
            with self.assertRaises(InvalidMessage) as caught:
                AnalysisRequest.decode(body({"name": "x", "md5": MD5}, priority=value))
            self.assertIn("priority", caught.exception.reason)


class TaskPriorityTests(SynchronousTestCase):
    def test_carried(self) -> None:
        """
        A task's priority is carried as Priority, omitted when None, and
        kept by for_next_stage; a bad one is refused.
        """
        task = TaskMessage(task_id=1, cuckoo_url="http://c", crits=CritsData("a", "Sample", "o"), priority=3)
        self.assertEqual(json.loads(task.encode())["Priority"], 3)
        self.assertEqual(TaskMessage.decode(task.encode()).priority, 3)
        self.assertEqual(task.for_next_stage().priority, 3)
        plain = TaskMessage(task_id=1, cuckoo_url="http://c", crits=CritsData("a", "Sample", "o"))
        self.assertNotIn("Priority", json.loads(plain.encode()))
        doc = json.loads(task.encode())
        doc["Priority"] = 9
        with self.assertRaises(InvalidMessage):
            TaskMessage.decode(json.dumps(doc).encode())
