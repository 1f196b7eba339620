"""
Bounded report parsing: hostile nesting, hostile strings and hostile numbers
of values cost time in proportion to their size and flat memory, the rows
(and their budget) say what was cut or left out, and a parse stops when
asked.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.errors import PermanentError
from cuckoodist.report import PARSERS, ExtractOptions, extract_results, extract_results_plain
from cuckoodist.report._guard import Cancelled, Guard
from cuckoodist.report.extract import _extract_events
from cuckoodist.report.rows import MAX_ARGUMENTS_SIZE, MAX_NESTING, MAX_STRING
from cuckoodist.stages.parse_and_submit import ParseAndSubmit

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ExtractOptions(PARSERS, api_calls_max=3)
DEPTH = 200_000
HOLE = "@HOLE@"


def _call(api: str, argument: Any = 1) -> dict:
    return {"api": api, "category": "c", "status": 1, "return_value": 0, "tid": 7,
            "time": 1574853982.5, "arguments": {"a": argument}}


def _doc(hole: dict[str, Any]) -> dict:
    """
    A small 2.0 report; C{hole} says which values are replaced by the
    hostile text (by the placeholder L{HOLE}).
    """
    return {
        "info": {"id": 3, "version": "2.0.7", "machine": {"name": "m"},
                 "options": hole.get("info", "o")},
        "static": hole.get("static", {}),
        "signatures": [{"name": "s", "description": hole.get("signature", "d"),
                        "severity": 2, "marks": hole.get("marks", [])}],
        "behavior": {
            "processes": [{"pid": 1, "ppid": 2, "process_name": hole.get("process", "p.exe"),
                           "first_seen": 1574853981.5, "extra": hole.get("header", 0),
                           "calls": [_call("A", hole.get("argument", 1)), _call("B"),
                                     hole.get("call", _call("C")), _call("D"), _call("E"),
                                     hole.get("late", _call("F"))]}],
            "summary": {"file_opened": ["f", hole.get("summary", "g")],
                        "weird": hole.get("summary_other", [])},
        },
        "network": {"hosts": ["1.2.3.4", hole.get("host", "5.6.7.8")],
                    "http": [{"uri": hole.get("uri", "u"), "method": "GET"}]},
    }


def _render(hole: dict[str, Any], text: str) -> bytes:
    """
    The report with every hole holding C{text} (raw JSON).
    """
    return json.dumps(_doc({key: HOLE for key in hole})).replace(
        json.dumps(HOLE), text).encode("utf-8")


def _deep(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"k":' * depth + "1" + "}" * depth


class DeepNestingTests(SynchronousTestCase):
    """
    200,000 nested arrays or objects anywhere in a report: skipped, not
    refused, and never walked recursively.
    """

    def test_everywhere(self) -> None:
        """
        Deep values in a kept piece (info, a signature, a header, a kept
        call, a call past the cap, a summary, a host) and in a skipped
        section leave every other row as it would be without them; a deep
        call argument is left out and counted.
        """
        for kind in ("array", "object"):
            for place in ("info", "static", "marks", "header", "argument", "call", "late",
                          "summary_other", "host"):
                data = _render({place: None}, _deep(DEPTH, kind))
                result = extract_results(io.BytesIO(data), OPTIONS)
                # The same report with a harmless value in the hole.
                tame = extract_results_plain(_doc({place: None}), OPTIONS)
                if place in ("call", "late"):
                    # A deep object in a call list is a dict, so a call.
                    self.assertEqual(result.api_calls_seen, 6 if kind == "object" else 5)
                    if place == "call":
                        continue
                else:
                    self.assertEqual(result.api_calls_seen, tame.api_calls_seen)
                self.assertEqual(result.rows, tame.rows, (kind, place))
                self.assertEqual(result.values_skipped, int(place == "argument"), (kind, place))

    def test_argument_depth(self) -> None:
        """
        A call argument nesting MAX_NESTING levels is kept; one more level
        and it is left out and counted, by the streaming and the plain
        parser alike.
        """
        for depth, skipped in ((MAX_NESTING, 0), (MAX_NESTING + 1, 1)):
            doc = _doc({"argument": json.loads(_deep(depth, "array"))})
            data = json.dumps(doc).encode()
            streamed = extract_results(io.BytesIO(data), OPTIONS)
            self.assertEqual(streamed, extract_results_plain(doc, OPTIONS))
            self.assertEqual(streamed.values_skipped, skipped)
            argument = streamed.rows[[r.subtype for r in streamed.rows].index("api_call")]
            self.assertEqual(argument.extra["arguments"][0]["value"] is None, bool(skipped))

    def test_event_walk_refuses(self) -> None:
        """
        A deep report the text walk declines (here: trailing garbage) is
        refused by the event walk's guard with a clear reason, not read
        into quadratic memory.
        """
        data = _render({"static": None}, _deep(DEPTH, "array")) + b" x"
        with self.assertRaises(PermanentError) as caught:
            extract_results(io.BytesIO(data), OPTIONS)
        self.assertIn("nests deeper than", caught.exception.reason)

    def test_guard_across_blocks(self) -> None:
        """
        The guard follows depth across blocks and ignores brackets inside
        strings, including a string cut by a block boundary.
        """
        guard = Guard(max_depth=4)
        guard.feed(b'[[{"a": "[[[[\\"')
        self.assertEqual(guard.depth, 3)
        guard.feed(b'[[[", "b": [')
        self.assertEqual(guard.depth, 4)
        guard.feed(b"1]}]")
        self.assertEqual(guard.depth, 1)
        guard.feed(b"][[[[")
        self.assertEqual(guard.depth, 4)
        with self.assertRaises(PermanentError):
            guard.feed(b"[]")


class LongStringTests(SynchronousTestCase):
    """
    Kept strings longer than MAX_STRING are cut to it and counted.
    """

    def test_cut_and_counted(self) -> None:
        """
        Long strings, plain or full of escapes and surrogate pairs, in
        every kept place: the same rows and counts as the plain parser,
        every row string at most MAX_STRING long.
        """
        places = ("signature", "process", "argument", "summary", "host", "uri", "info", "late")
        for piece in ("x", "\\u00e9\\\\", "\\ud83d\\ude00", "\\n\\u0000"):
            repeat = MAX_STRING // len(json.loads('"' + piece + '"')) + 7
            text = '"' + piece * repeat + '"'
            data = _render(dict.fromkeys(places), text)
            doc = json.loads(data)
            streamed = extract_results(io.BytesIO(data), OPTIONS)
            plain = extract_results_plain(doc, OPTIONS)
            self.assertEqual(streamed, plain, piece)
            # signature, process, argument, summary, host, uri; info's
            # options and the late call never reach a row.
            self.assertEqual(streamed.values_truncated, 6)
            for row in streamed.rows:
                self.assertLessEqual(len(row.result), MAX_STRING)

    def test_short_strings_untouched(self) -> None:
        """
        A string of exactly MAX_STRING characters is not counted.
        """
        data = _render({"signature": None}, '"' + "y" * MAX_STRING + '"')
        streamed = extract_results(io.BytesIO(data), OPTIONS)
        self.assertEqual(streamed.values_truncated, 0)
        self.assertEqual(streamed.rows[1].result, "y" * MAX_STRING)

    def test_event_walk_refuses(self) -> None:
        """
        The event walk, which buffers whole strings, refuses a report with
        a string over its bound instead of reading it.
        """
        data = _render({"signature": None}, '"' + "z" * 200_000 + '"') + b"]"
        # The text walk reads it all, then declines the trailing "]".
        with self.assertRaises(PermanentError) as caught:
            extract_results(io.BytesIO(data), OPTIONS)
        self.assertIn("holds a string", caught.exception.reason)


def _three(data: bytes, options: ExtractOptions) -> tuple[Any, Any, Any]:
    """
    The text walk, the event walk and the plain parser on C{data}.
    """
    return (extract_results(io.BytesIO(data), options),
            _extract_events(io.BytesIO(data), options, None),
            extract_results_plain(json.loads(data), options))


class BudgetTests(SynchronousTestCase):
    """
    What one report can make us keep is bounded per subtype and in bytes,
    identically in all three parsers, and what is left out is counted.
    """

    def _many(self) -> dict:
        doc = _doc({})
        doc["signatures"] = [{"name": "s%d" % i, "description": "d", "severity": 1,
                              "marks": [{"pid": i}] * 50} for i in range(30)]
        doc["behavior"]["summary"] = {"file_opened": ["f%d" % i for i in range(40)],
                                      "file_moved": [["a", "b"], ["a", "b", "c"], "m"] * 5,
                                      "mutex": ["m%d" % i for i in range(7)]}
        doc["network"]["hosts"] = ["10.0.0.%d" % i for i in range(25)] + [{"ip": "h"}]
        doc["network"]["domains"] = [{"domain": "d%d" % i, "ip": "i"} for i in range(12)]
        doc["behavior"]["processes"] *= 20
        return doc

    def test_rows_per_subtype(self) -> None:
        """
        With C{rows_max=10}, each subtype keeps its first ten rows in report
        order, every other row is counted in C{rows_dropped}, and the three
        parsers agree.
        """
        doc = self._many()
        options = ExtractOptions(PARSERS, api_calls_max=1000, rows_max=10)
        text, events, plain = _three(json.dumps(doc).encode(), options)
        self.assertEqual(text, plain)
        self.assertEqual(events, plain)
        whole = extract_results_plain(doc, ExtractOptions(PARSERS, api_calls_max=1000))
        counts: dict[str, int] = {}
        for row in whole.rows:
            counts[row.subtype] = counts.get(row.subtype, 0) + 1
        self.assertEqual(plain.rows_dropped, sum(max(0, n - 10) for n in counts.values()))
        self.assertGreater(plain.rows_dropped, 100)
        for subtype, n in counts.items():
            kept = [row for row in plain.rows if row.subtype == subtype]
            self.assertEqual(kept, [row for row in whole.rows if row.subtype == subtype][:10])
        self.assertEqual(whole.rows_dropped, 0)

    def test_bytes(self) -> None:
        """
        A byte budget keeps rows in report order until the next one does
        not fit; every row after that is left out and counted, the info row
        excepted.
        """
        doc = self._many()
        for budget in (0, 2000, 20_000):
            options = ExtractOptions(PARSERS, api_calls_max=1000, kept_bytes_max=budget)
            text, events, plain = _three(json.dumps(doc).encode(), options)
            self.assertEqual(text, plain, budget)
            self.assertEqual(events, plain, budget)
            whole = extract_results_plain(doc, ExtractOptions(PARSERS, api_calls_max=1000))
            self.assertEqual(len(plain.rows) + plain.rows_dropped, len(whole.rows), budget)
            self.assertLess(len(plain.rows), len(whole.rows))
            self.assertEqual(plain.rows[0].subtype, "info")
        self.assertEqual(len(extract_results_plain(doc, ExtractOptions(
            PARSERS, kept_bytes_max=0)).rows), 1)

    def test_oversized_arguments(self) -> None:
        """
        A call whose arguments are larger than MAX_ARGUMENTS_SIZE keeps its
        row without arguments, counted in values_skipped, in the text walk
        as in the plain parser (the event walk refuses such a call: see
        below); the calls around it keep theirs.
        """
        for arguments in ({"k%d" % i: i for i in range(MAX_ARGUMENTS_SIZE // 8)},
                          [{"name": "n", "value": ["x" * 1000] * (MAX_ARGUMENTS_SIZE // 900)}],
                          {"a": 1}):
            doc = _doc({"call": dict(_call("C"), arguments=arguments)})
            data = json.dumps(doc).encode()
            text = extract_results(io.BytesIO(data), OPTIONS)
            plain = extract_results_plain(doc, OPTIONS)
            self.assertEqual(text, plain)
            calls = [row for row in plain.rows if row.subtype == "api_call"]
            oversized = arguments != {"a": 1}
            self.assertEqual(calls[2].extra["arguments"] == [], oversized)
            self.assertEqual(plain.values_skipped, int(oversized))
            self.assertEqual(calls[1].extra["arguments"], [{"name": "a", "value": 1}])

    def test_event_walk_refuses_huge_call(self) -> None:
        """
        The event walk, where C builds each kept call whole, refuses a call
        spanning more than its bound instead of building it.
        """
        doc = _doc({"call": dict(_call("C"), arguments={"k%d" % i: i for i in range(400_000)})})
        with self.assertRaises(PermanentError) as caught:
            _extract_events(io.BytesIO(json.dumps(doc).encode()), OPTIONS, None)
        self.assertIn("API call longer than", caught.exception.reason)


# The peak RSS comes from /proc's VmHWM: getrusage's ru_maxrss survives
# exec on Linux, so a child would report this test process's peak.
_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from cuckoodist.report import PARSERS, ExtractOptions, extract_results
started = time.process_time()
with open({path!r}, "rb") as fp:
    result = extract_results(fp, ExtractOptions(PARSERS))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) // 1024, result.values_truncated,
      max(len(row.result) for row in result.rows), time.process_time() - started,
      len(result.rows), result.rows_dropped)
"""

#: One item of each hostile list, by where it goes (C{%d}: its index).
_ITEMS = {
    "marks": b'{"type":"call","pid":1,"cid":2,"call":{"api":"NtClose"}}',
    "summary": b'"C:\\\\Windows\\\\System32\\\\x%d.dll"',
    "processes": b'{"pid":%d,"ppid":1,"process_name":"p.exe","first_seen":1574853981.5,'
                 b'"calls":[]}',
    "hosts": b'"10.%d.0.1"',
}


def _huge_list(place: str, count: int) -> list[bytes]:
    """
    A report whose C{place} is a list of C{count} small values, in parts.
    """
    doc = _doc({})
    if place == "marks":
        doc["signatures"][0]["marks"] = HOLE
    elif place == "summary":
        doc["behavior"]["summary"]["file_opened"] = HOLE
    elif place == "processes":
        doc["behavior"]["processes"] = HOLE
    else:
        doc["network"]["hosts"] = HOLE
    head, tail = json.dumps(doc).encode().split(json.dumps(HOLE).encode())
    item = _ITEMS[place]
    parts = [head, b"["]
    for start in range(0, count, 100_000):
        chunk = b",".join(item % index if b"%d" in item else item
                          for index in range(start, min(count, start + 100_000)))
        parts.append(b"," + chunk if start else chunk)
    parts.extend([b"]", tail])
    return parts


class MemoryTests(SynchronousTestCase):
    """
    Peak RSS of a whole parse, measured in a child process.
    """

    def _parse_in_child(self, data_parts: list[bytes]) -> tuple[Any, ...]:
        with tempfile.NamedTemporaryFile(prefix="cuckoodist-bounds-", suffix=".json",
                                         delete=False) as out:
            for part in data_parts:
                out.write(part)
        self.addCleanup(os.unlink, out.name)
        output = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), path=out.name)],
                                check=True, capture_output=True, text=True).stdout.split()
        return (int(output[0]), int(output[1]), int(output[2]), float(output[3]),
                int(output[4]), int(output[5]))

    def test_huge_kept_string(self) -> None:
        """
        A 50 MB string as a signature's description is cut, counted, and
        never held: the child's peak RSS stays under 100 MB.
        """
        head, tail = _render({"signature": None}, HOLE).split(HOLE.encode())
        rss, truncated, longest, *_ = self._parse_in_child(
            [head, b'"', *[b"A" * (1 << 20)] * 50, b'"', tail])
        self.assertEqual((truncated, longest), (1, MAX_STRING))
        self.assertLess(rss, 100)

    def test_deep_nesting(self) -> None:
        """
        200,000 nested arrays in several sections of one report: the child's
        peak RSS stays under 100 MB (it once grew to 23.8 GB).
        """
        deep = _deep(DEPTH, "array")
        data = json.dumps(_doc({"info": HOLE, "static": HOLE, "marks": HOLE})).replace(
            json.dumps(HOLE), deep).encode()
        rss, _, _, cpu, _, _ = self._parse_in_child([data])
        self.assertLess(rss, 100)
        self.assertLess(cpu, 10)

    def _huge(self, place: str, count: int, dropped: int) -> None:
        """
        Parse a report holding C{count} small values at C{place} in a
        child: peak RSS under 200 MB, the default budget's C{rows_max}
        rows kept and C{dropped} rows counted as left out.
        """
        rss, _, _, cpu, rows, left_out = self._parse_in_child(_huge_list(place, count))
        self.assertLess(rss, 200, place)
        self.assertEqual(left_out, dropped, place)
        self.assertLess(rows, ExtractOptions(PARSERS).rows_max + 20, place)

    def test_signature_marks(self) -> None:
        """
        A signature holding 5 million marks: never built, no row dropped
        (marks make no rows), under 200 MB.
        """
        self._huge("marks", 5_000_000, 0)

    def test_summary_list(self) -> None:
        """
        A summary list of 5 million paths: 50,000 file rows kept, the other
        4,950,000 counted.
        """
        self._huge("summary", 5_000_000, 5_000_000 - 50_000)

    def test_processes(self) -> None:
        """
        2 million processes: 50,000 process rows kept, the rest counted.
        """
        self._huge("processes", 2_000_000, 2_000_000 - 50_000)

    def test_network_hosts(self) -> None:
        """
        2 million network hosts: 50,000 Host rows kept, the rest counted.
        """
        self._huge("hosts", 2_000_000, 2_000_000 - 50_000)


class CancelTests(TestCase):
    """
    A parse stops soon after it is asked to.
    """

    def setUp(self) -> None:
        from cuckoodist.simulators.reports import write_report

        self.spool = tempfile.TemporaryFile(prefix="cuckoodist-bounds-")
        self.addCleanup(self.spool.close)
        write_report(self.spool, "2.0", task_id=1, target_name="t.exe", target_md5="0" * 32,
                     target_size=1, processes=4, calls_per_process=40_000, seed=3)
        self.spool.seek(0)

    def test_stop_flag(self) -> None:
        """
        Setting the stop flag from another thread ends the walk within a
        second, with Cancelled.
        """
        stop = threading.Event()
        outcome: list[Any] = []

        def parse() -> None:
            try:
                outcome.append(extract_results(self.spool, ExtractOptions(PARSERS), stop))
            except Cancelled as e:
                outcome.append(e)

        stop.set()
        parse()
        self.assertIsInstance(outcome.pop(), Cancelled)
        self.spool.seek(0)
        stop.clear()
        thread = threading.Thread(target=parse)
        thread.start()
        time.sleep(0.02)
        stop.set()
        asked = time.monotonic()
        thread.join(5)
        self.assertFalse(thread.is_alive())
        self.assertLess(time.monotonic() - asked, 1.0)
        self.assertIsInstance(outcome.pop(), Cancelled)

    @defer.inlineCallbacks
    def test_stage_cancel_sets_flag(self) -> Any:
        """
        Cancelling the Deferred the stage awaits (what the consumer does
        after grace_period) sets the parse's stop flag, and the pool thread
        is free again within a second.
        """
        stage = SimpleNamespace(context=SimpleNamespace(reactor=reactor))
        stop = threading.Event()
        waiting = ParseAndSubmit.in_thread(stage, extract_results, self.spool,
                                           ExtractOptions(PARSERS), stop, on_cancel=stop.set)
        yield defer.succeed(None)
        waiting.cancel()
        self.assertTrue(stop.is_set())
        self.failureResultOf(waiting, defer.CancelledError)
        # The thread pool runs a new job once the parse thread gave up.
        asked = time.monotonic()
        from twisted.internet.threads import deferToThread
        yield deferToThread(lambda: None)
        self.assertLess(time.monotonic() - asked, 1.0)
