# -*- test-case-name: tests.test_report_generator -*-
"""
Tests for L{cuckoodist.simulators.reports}.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.simulators.reports import AWKWARD_STRINGS, write_report


def generate(fmt: str, **kwargs: Any) -> bytes:
    """
    Write a report with small defaults and return its bytes.
    """
    params: dict[str, Any] = dict(task_id=71, target_name="cmdkey.exe",
                                  target_md5="a" * 32, target_size=36864)
    params.update(kwargs)
    buffer = io.BytesIO()
    write_report(buffer, fmt, **params)
    return buffer.getvalue()


class GeneratorTests(SynchronousTestCase):
    """
    L{write_report} writes deterministic, valid reports in the documented
    shapes.
    """

    def test_deterministic(self) -> None:
        """
        The same arguments give the same bytes; another seed gives others.
        """
        for fmt in ("2.0", "1.2", "cape"):
            self.assertEqual(generate(fmt, seed=3), generate(fmt, seed=3))
            self.assertNotEqual(generate(fmt, seed=3), generate(fmt, seed=4))

    def test_unknown_format(self) -> None:
        """
        An unknown format is refused before anything is written.
        """
        buffer = io.BytesIO()
        self.assertRaises(ValueError, write_report, buffer, "3.0", task_id=1,
                          target_name="x", target_md5="0" * 32, target_size=1)
        self.assertEqual(buffer.getvalue(), b"")

    def test_ascii_and_awkward(self) -> None:
        """
        Output is ASCII JSON, like Cuckoo's writers, yet decodes to the
        awkward strings (mojibake, control characters, quotes).
        """
        data = generate("2.0", processes=3, calls_per_process=200, signatures=4)
        data.decode("ascii")
        text = json.dumps(json.loads(data), ensure_ascii=False)
        self.assertIn(json.dumps(AWKWARD_STRINGS[3], ensure_ascii=False)[1:-1], text)
        self.assertIn("\\u0007", text)
        self.assertIn('\\"hello\\"', text)

    def test_shape_20(self) -> None:
        """
        2.0 reports use epoch floats, pid/ppid, dict arguments, int status and
        return_value, fine-grained summary keys with moved-file pairs, and
        signatures with marks, markcount and ttp.
        """
        doc = json.loads(generate("2.0", processes=3, calls_per_process=30, seed=1,
                                  dropped=[("drop.bin", b"payload")]))
        info = doc["info"]
        self.assertEqual((info["id"], info["version"]), (71, "2.0.7"))
        self.assertIsInstance(info["started"], float)
        procs = doc["behavior"]["processes"]
        self.assertEqual(len(procs), 3)
        for proc in procs:
            self.assertEqual(len(proc["calls"]), 30)
            self.assertIsInstance(proc["pid"], int)
            self.assertIsInstance(proc["ppid"], int)
            self.assertIsInstance(proc["first_seen"], float)
            for call in proc["calls"]:
                self.assertIs(type(call["status"]), int)
                self.assertIs(type(call["return_value"]), int)
                self.assertIsInstance(call["time"], float)
                self.assertIsInstance(call.get("arguments", {}), dict)
                self.assertNotIn("repeated", call)
        summary = doc["behavior"]["summary"]
        for key in ("file_opened", "regkey_read", "mutex", "file_moved", "dll_loaded"):
            self.assertIn(key, summary)
        self.assertTrue(all(len(pair) == 2 for pair in summary["file_moved"]))
        for sig in doc["signatures"]:
            self.assertEqual(sig["markcount"], len(sig["marks"]))
            self.assertIn("ttp", sig)
        severities = [s["severity"] for s in doc["signatures"]]
        self.assertEqual(severities, sorted(severities))
        self.assertEqual(doc["dropped"][0]["name"], "drop.bin")
        self.assertEqual(doc["dropped"][0]["size"], 7)
        self.assertEqual(doc["dropped"][0]["md5"], "321c3cf486ed509164edec1e1981fec8")
        self.assertTrue(all(isinstance(h, str) for h in doc["network"]["hosts"]))
        self.assertIn("method", doc["network"]["http"][0])
        self.assertIn("domain", doc["network"]["domains"][0])

    def test_shape_12(self) -> None:
        """
        1.2 reports use date strings, process_id/parent_id, list arguments,
        bool status, hex return strings, string thread ids, repeated/id and
        files/keys/mutexes summaries, and signatures with data.
        """
        doc = json.loads(generate("1.2", processes=2, calls_per_process=25, seed=2))
        info = doc["info"]
        self.assertEqual(info["version"], "1.2")
        self.assertRegex(info["started"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        for proc in doc["behavior"]["processes"]:
            self.assertIsInstance(proc["process_id"], int)
            self.assertIn("parent_id", proc)
            self.assertRegex(proc["first_seen"], r",\d{3}$")
            self.assertEqual([c["id"] for c in proc["calls"]], list(range(25)))
            for call in proc["calls"]:
                self.assertIs(type(call["status"]), bool)
                self.assertTrue(re.match(r"^0x[0-9a-f]{8}$", call["return"]))
                self.assertIsInstance(call["thread_id"], str)
                self.assertIsInstance(call["repeated"], int)
                self.assertRegex(call["timestamp"],
                                 r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}$")
                for argument in call.get("arguments", []):
                    self.assertEqual(sorted(argument), ["name", "value"])
        self.assertEqual(sorted(doc["behavior"]["summary"]), ["files", "keys", "mutexes"])
        for sig in doc["signatures"]:
            self.assertIn("data", sig)
            self.assertNotIn("marks", sig)

    def test_shape_cape(self) -> None:
        """
        CAPE reports keep the 1.x call layout, add caller fields, use the
        CAPE summary keys and describe hosts as dicts.
        """
        doc = json.loads(generate("cape", seed=5))
        call = doc["behavior"]["processes"][0]["calls"][0]
        self.assertIn("caller", call)
        self.assertIsInstance(call["arguments"], list)
        self.assertIn("module_path", doc["behavior"]["processes"][0])
        self.assertIn("read_keys", doc["behavior"]["summary"])
        self.assertIn("ip", doc["network"]["hosts"][0])
        self.assertIn("CAPE", doc)

    def test_missing_keys(self) -> None:
        """
        Some seeds leave out or null keys the way real reports do: a
        2.0 guest-less C{machine: {}} and a null end time.
        """
        self.assertEqual(json.loads(generate("2.0", seed=3))["info"]["machine"], {})
        self.assertIsNone(json.loads(generate("2.0", seed=4))["info"]["ended"])
        self.assertEqual(json.loads(generate("1.2", seed=3))["info"]["machine"], "")

    def test_incremental(self) -> None:
        """
        The report reaches the file in several writes, not one big one, so a
        large report never sits in memory.
        """
        writes: list[int] = []

        class Recorder(io.BytesIO):
            def write(self, data: Any) -> int:
                writes.append(len(data))
                return super().write(data)

        recorder = Recorder()
        write_report(recorder, "2.0", task_id=1, target_name="x", target_md5="0" * 32,
                     target_size=1, processes=2, calls_per_process=8000)
        self.assertGreater(len(writes), 2)
        self.assertLess(max(writes), 3 << 20)
        json.loads(recorder.getvalue())
