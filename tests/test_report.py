# -*- test-case-name: tests.test_report -*-
"""
Tests for L{cuckoodist.report}: the streaming extractor, the reference
extractor, and their agreement.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import PermanentError
from cuckoodist.report import (
    PARSERS,
    ExtractOptions,
    Extraction,
    extract_results,
    extract_results_plain,
)
from cuckoodist.report.times import format_date, format_log_time
from cuckoodist.results import ResultRow
from cuckoodist.simulators.reports import write_report

FIXTURE = Path(__file__).parent / "data" / "report-2.0.7-benign.json"
ALL = ExtractOptions(PARSERS)


def both(data: bytes, options: ExtractOptions = ALL) -> tuple[Extraction, Extraction]:
    """
    Run the streaming and the reference extractor on C{data}.
    """
    return (extract_results(io.BytesIO(data), options),
            extract_results_plain(json.loads(data), options))


def generated(fmt: str, **kwargs: Any) -> bytes:
    params: dict[str, Any] = dict(task_id=9, target_name="t.exe", target_md5="b" * 32,
                                  target_size=5)
    params.update(kwargs)
    buffer = io.BytesIO()
    write_report(buffer, fmt, **params)
    return buffer.getvalue()


def of(extraction: Extraction, subtype: str) -> list[ResultRow]:
    return [row for row in extraction.rows if row.subtype == subtype]


class ParityTests(SynchronousTestCase):
    """
    The streaming extractor gives exactly the reference extractor's result.
    """

    def test_fixture(self) -> None:
        """
        On the real Cuckoo 2.0.7 report, with every parser and several caps.
        """
        data = FIXTURE.read_bytes()
        for cap in (0, 1, 10, 5000):
            streamed, plain = both(data, ExtractOptions(PARSERS, api_calls_max=cap))
            self.assertEqual(streamed, plain)

    def test_generated(self) -> None:
        """
        On generated 2.0, 1.2 and CAPE reports with awkward strings, several
        seeds, caps that fall inside, between and beyond processes, and
        each parser alone.
        """
        for fmt in ("2.0", "1.2", "cape"):
            for seed in range(6):
                data = generated(fmt, seed=seed, processes=3, calls_per_process=40,
                                 signatures=5, dropped=[("d.bin", b"x")])
                for cap in (0, 1, 39, 40, 41, 119, 120, 5000):
                    streamed, plain = both(data, ExtractOptions(PARSERS, api_calls_max=cap))
                    self.assertEqual(streamed, plain, (fmt, seed, cap))
                    self.assertEqual(streamed.format, fmt)
                for parser in PARSERS:
                    options = ExtractOptions(frozenset({parser}))
                    self.assertEqual(*both(data, options))

    def test_large_process(self) -> None:
        """
        A cap reached in the middle of a long call list (past the internal
        chunk size) keeps exactly the first calls and still counts them all.
        """
        data = generated("2.0", processes=2, calls_per_process=3000)
        streamed, plain = both(data, ExtractOptions(PARSERS, api_calls_max=2500))
        self.assertEqual(streamed, plain)
        self.assertEqual(streamed.api_calls_seen, 6000)
        self.assertEqual(len(of(streamed, "api_call")), 2500)

    def test_hostile_shapes(self) -> None:
        """
        Wrong types, nulls and missing keys are skipped the same way by both.
        """
        doc = {
            "info": {"id": True, "machine": 5, "started": "none", "ended": None,
                     "version": 7},
            "signatures": [None, "x", {"description": None, "severity": "high"},
                           {"name": "n", "description": "d", "severity": 2}],
            "behavior": {
                "processes": [None, [], {"pid": "1", "calls": "none"},
                              {"calls": [1, "a", None, {"api": 5, "status": "yes",
                                                         "arguments": "zz"}, [],
                                         {"api": "A", "arguments": [1, {"name": 2},
                                                                    {"name": "k"}],
                                          "return_value": -1073741772, "tid": 3,
                                          "time": 1e300}],
                               "process_name": None, "first_seen": None}],
                "summary": {"file_moved": [["a", "b"], ["a"], "c", 5],
                            "mutex": None, "keys": [None, "k"], "item": ["x"]},
            },
            "network": {"hosts": [None, 5, {"ip": 3}, {"ip": "1.2.3.4"}, "5.6.7.8"],
                        "domains": [{"domain": "d", "ip": None}, {"ip": "x"}],
                        "http": [{"uri": 5}, {"uri": "u", "port": True,
                                              "user-agent": ""}, "x"]},
        }
        data = json.dumps(doc).encode("ascii")
        streamed, plain = both(data)
        self.assertEqual(streamed, plain)
        calls = of(streamed, "api_call")
        self.assertEqual([row.result for row in calls], ["", "A"])
        self.assertEqual(calls[1].extra["return"], "0xc0000034")
        self.assertEqual(calls[1].extra["arguments"], [{"name": "k", "value": None}])
        self.assertEqual(calls[0].extra["arguments"], [])
        self.assertEqual(streamed.api_calls_seen, 2)
        self.assertEqual([r.result for r in of(streamed, "file")], ["a -> b", "c"])
        self.assertEqual([r.result for r in of(streamed, "Host")], ["1.2.3.4", "5.6.7.8"])
        self.assertEqual(of(streamed, "info")[0].extra,
                         {"started": "", "ended": "", "analysis_id": None})
        self.assertEqual(of(streamed, "HTTP Request")[0].extra["port"], None)
        self.assertEqual(of(streamed, "User-Agent"), [])

    def test_same_extra_keys(self) -> None:
        """
        Every row of one subtype carries the same extra keys, whatever the
        format (CRITs takes table columns from the first row).
        """
        keys: dict[str, set] = {}
        for fmt in ("2.0", "1.2", "cape"):
            for seed in range(3):
                for row in both(generated(fmt, seed=seed))[0].rows:
                    keys.setdefault(row.subtype, set()).add(tuple(row.extra))
        for subtype, variants in keys.items():
            if subtype in ("file", "registry_key", "mutex"):
                self.assertEqual(variants, {("category",)})
            else:
                self.assertEqual(len(variants), 1, subtype)
        self.assertEqual(keys["api_call"], {(
            "category", "status", "return", "timestamp", "thread_id", "repeated", "id",
            "process", "process_id", "arguments")})


class FixtureTests(SynchronousTestCase):
    """
    Specific rows from the real Cuckoo 2.0.7 report.
    """

    def setUp(self) -> None:
        with FIXTURE.open("rb") as fp:
            self.extraction = extract_results(fp, ExtractOptions(PARSERS, task_id=1))

    def test_format_and_counts(self) -> None:
        """
        The report is detected as 2.0 and holds 33 calls.
        """
        self.assertEqual(self.extraction.format, "2.0")
        self.assertEqual(self.extraction.api_calls_seen, 33)
        self.assertEqual(len(of(self.extraction, "api_call")), 33)

    def test_info(self) -> None:
        """
        The info row names the machine and gives UTC start and end strings
        and the task id from the report (not the option).
        """
        self.assertEqual(of(self.extraction, "info"), [ResultRow("info", "windows7_1", {
            "started": "2019-11-27 11:26:21", "ended": "2019-11-27 11:29:21",
            "analysis_id": 71})])

    def test_signatures(self) -> None:
        """
        Signature rows keep the report's order, names and severities.
        """
        self.assertEqual(
            [(r.extra["name"], r.extra["severity"]) for r in of(self.extraction, "signature")],
            [("has_pdb", 1), ("pe_unknown_resource_name", 1), ("nolookup_communication", 3),
             ("snort_alert", 3), ("network_icmp", 4)])
        self.assertEqual(of(self.extraction, "signature")[0].result,
                         "This executable has a PDB path")

    def test_processes(self) -> None:
        """
        Process rows use pid/ppid and a 1.x-style first_seen string.
        """
        self.assertEqual(of(self.extraction, "process"), [
            ResultRow("process", "lsass.exe", {"process_id": 504, "parent_id": 396,
                                               "first_seen": "2019-11-27 09:44:16,281"}),
            ResultRow("process", "cmdkey.exe", {"process_id": 1620, "parent_id": 1856,
                                                "first_seen": "2019-11-27 11:27:45,756"})])

    def test_api_calls(self) -> None:
        """
        2.0 calls become 1.x-shaped rows: bool status, hex return, string
        time and thread id, index as id, dict arguments as a name/value list.
        """
        calls = of(self.extraction, "api_call")
        self.assertEqual(calls[1], ResultRow("api_call", "SetUnhandledExceptionFilter", {
            "category": "exception", "status": False, "return": "0x00000000",
            "timestamp": "2019-11-27 11:20:36,399", "thread_id": "872", "repeated": 0,
            "id": 1, "process": "cmdkey.exe", "process_id": 1620, "arguments": []}))
        self.assertEqual(calls[2].extra["arguments"], [
            {"name": "module_handle", "value": "0x0000000000000000"},
            {"name": "nSize", "value": 260},
            {"name": "file_name",
             "value": "C:\\Users\\guestwindows\\AppData\\Local\\Temp\\cmdkey.exe"}])
        self.assertEqual([c.extra["id"] for c in calls], list(range(33)))

    def test_registry(self) -> None:
        """
        The summary's only key, regkey_read, gives registry_key rows with
        that category; there are no file or mutex rows.
        """
        self.assertEqual(of(self.extraction, "registry_key"), [ResultRow(
            "registry_key", "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\"
            "CurrentVersion\\GRE_Initialize\\DisableMetaFiles", {"category": "regkey_read"})])
        self.assertEqual(of(self.extraction, "file") + of(self.extraction, "mutex"), [])

    def test_network(self) -> None:
        """
        Hosts and domains come from the network section; the empty http list
        gives no rows.
        """
        self.assertEqual([r.result for r in of(self.extraction, "Host")],
                         ["110.93.194.205", "172.217.18.131", "216.58.208.78",
                          "40.81.188.85", "8.8.8.8"])
        self.assertIn(ResultRow("Domain", "teredo.ipv6.microsoft.com", {"ip": ""}),
                      of(self.extraction, "Domain"))
        self.assertEqual(of(self.extraction, "HTTP Request"), [])

    def test_subtype_order(self) -> None:
        """
        Rows come grouped by subtype in a fixed order.
        """
        order = ["info", "signature", "process", "api_call", "registry_key", "Host", "Domain"]
        seen = [r.subtype for i, r in enumerate(self.extraction.rows)
                if i == 0 or self.extraction.rows[i - 1].subtype != r.subtype]
        self.assertEqual(seen, order)


class GeneratedRowsTests(SynchronousTestCase):
    """
    Rows from generated reports of each format.
    """

    def test_12_calls(self) -> None:
        """
        1.2 calls keep their own timestamp, thread id, return, repeated and id.
        """
        data = generated("1.2", processes=1, calls_per_process=5)
        doc = json.loads(data)
        call = doc["behavior"]["processes"][0]["calls"][3]
        row = of(extract_results(io.BytesIO(data), ALL), "api_call")[3]
        self.assertEqual(row.extra["timestamp"], call["timestamp"])
        self.assertEqual(row.extra["thread_id"], call["thread_id"])
        self.assertEqual(row.extra["return"], call["return"])
        self.assertEqual(row.extra["repeated"], call["repeated"])
        self.assertEqual(row.extra["id"], 3)
        self.assertEqual(row.extra["status"], call["status"])

    def test_summary_categories(self) -> None:
        """
        2.0 fine-grained keys, 1.2 files/keys/mutexes and CAPE keys map to the
        file, registry_key and mutex subtypes with the report's key as
        category; moved files become "old -> new".
        """
        rows20 = extract_results(io.BytesIO(generated("2.0")), ALL)
        categories = {(r.subtype, r.extra["category"]) for r in rows20.rows
                      if r.subtype in ("file", "registry_key", "mutex")}
        self.assertIn(("file", "file_moved"), categories)
        self.assertIn(("file", "dll_loaded"), categories)
        self.assertIn(("registry_key", "regkey_written"), categories)
        self.assertIn(("mutex", "mutex"), categories)
        self.assertNotIn("command_line", {c for _, c in categories})
        moved = [r.result for r in rows20.rows if r.extra.get("category") == "file_moved"]
        self.assertTrue(all(" -> " in m for m in moved))
        rows12 = extract_results(io.BytesIO(generated("1.2")), ALL)
        self.assertEqual({r.extra["category"] for r in rows12.rows
                          if r.subtype in ("file", "registry_key", "mutex")},
                         {"files", "keys", "mutexes"})
        cape = extract_results(io.BytesIO(generated("cape")), ALL)
        self.assertIn(("registry_key", "read_keys"),
                      {(r.subtype, r.extra.get("category")) for r in cape.rows})

    def test_network_rows(self) -> None:
        """
        HTTP requests give one row each with a fixed extra key set; user
        agents are deduplicated; CAPE dict hosts give their ip.
        """
        extraction = extract_results(io.BytesIO(generated("cape", seed=0)), ALL)
        http = of(extraction, "HTTP Request")
        self.assertEqual(len(http), 3)
        self.assertEqual(set(http[0].extra), {"method", "host", "port", "path", "version"})
        agents = [r.result for r in of(extraction, "User-Agent")]
        self.assertEqual(len(agents), len(set(agents)))
        self.assertEqual(len(agents), 2)
        self.assertEqual(len(of(extraction, "Host")), 4)

    def test_cap(self) -> None:
        """
        At most api_calls_max call rows are kept, the first ones in report
        order across processes, while all calls are counted.
        """
        data = generated("2.0", processes=4, calls_per_process=10)
        extraction = extract_results(io.BytesIO(data), ExtractOptions(PARSERS,
                                                                      api_calls_max=15))
        calls = of(extraction, "api_call")
        self.assertEqual(len(calls), 15)
        self.assertEqual(extraction.api_calls_seen, 40)
        self.assertEqual([c.extra["process_id"] for c in calls], [1000] * 10 + [1004] * 5)
        none = extract_results(io.BytesIO(data), ExtractOptions(PARSERS, api_calls_max=0))
        self.assertEqual((of(none, "api_call"), none.api_calls_seen), ([], 40))

    def test_parsers(self) -> None:
        """
        Only the enabled parsers produce rows.
        """
        data = generated("2.0")
        only = extract_results(io.BytesIO(data), ExtractOptions(frozenset({"network"})))
        self.assertEqual({r.subtype for r in only.rows},
                         {"Host", "Domain", "HTTP Request", "User-Agent"})
        self.assertEqual(extract_results(io.BytesIO(data),
                                         ExtractOptions(frozenset())).rows, ())

    def test_missing_sections(self) -> None:
        """
        Missing or empty sections give no rows and no error; a guest-less
        2.0 report has an empty machine name; the option's task id stands in
        for a missing info id.  A document that is not an object is no
        report, and is refused.
        """
        for doc in ({}, {"info": {}}, {"behavior": {}}, {"behavior": {"processes": []}},
                    {"network": {}}, {"signatures": []}):
            data = json.dumps(doc).encode()
            streamed, plain = both(data, ExtractOptions(PARSERS, task_id=4))
            self.assertEqual(streamed, plain)
            self.assertEqual(streamed.api_calls_seen, 0)
        extraction = extract_results(io.BytesIO(b'{"info": {"machine": {}}}'),
                                     ExtractOptions(PARSERS, task_id=4))
        self.assertEqual(extraction.rows, (ResultRow(
            "info", "", {"started": "", "ended": "", "analysis_id": 4}),))
        for not_a_report in (b"[1, 2]", b"0", b'0\n"', b"null"):
            with self.assertRaises(PermanentError) as caught:
                extract_results(io.BytesIO(not_a_report), ALL)
            self.assertIn("not a JSON object", caught.exception.reason)


class InvalidTests(SynchronousTestCase):
    """
    Input that is not one JSON document is a L{PermanentError}.
    """

    def assertInvalid(self, data: bytes) -> PermanentError:
        error = self.assertRaises(PermanentError, extract_results, io.BytesIO(data), ALL)
        self.assertTrue(error.reason.startswith("report is not valid JSON: "), error.reason)
        return error

    def test_not_json(self) -> None:
        """
        HTML error pages, empty files, bad UTF-8 and trailing data are refused.
        """
        for data in (b"<html>404</html>", b"", b'{"info": "\xff"}', b"{} {}", b"{}x"):
            self.assertInvalid(data)

    def test_truncated(self) -> None:
        """
        A report cut anywhere, even in the middle of the calls, is refused.
        """
        data = generated("2.0", processes=2, calls_per_process=50)
        for cut in (1, len(data) // 3, len(data) // 2, len(data) - 3):
            self.assertInvalid(data[:cut])

    def test_reason_has_no_content(self) -> None:
        """
        The error reason is one line and does not quote the report's bytes.
        """
        error = self.assertInvalid(b'{"secret-token-xyz": nope}')
        self.assertNotIn("secret-token-xyz", error.reason)
        self.assertNotIn("\n", error.reason)


class TimeTests(SynchronousTestCase):
    """
    L{format_date} and L{format_log_time} accept every known time shape.
    """

    def test_format_date(self) -> None:
        """
        Epoch numbers become UTC strings, 1.x strings lose any fraction,
        anything else becomes an empty string.
        """
        self.assertEqual(format_date(1574853981.995138), "2019-11-27 11:26:21")
        self.assertEqual(format_date(0), "1970-01-01 00:00:00")
        self.assertEqual(format_date("2015-03-05 10:00:00,123"), "2015-03-05 10:00:00")
        for value in (None, "none", True, [], 1e300, float("nan"), "Wed, 19 Dec 2012"):
            self.assertEqual(format_date(value), "")

    def test_format_log_time(self) -> None:
        """
        Epoch numbers get milliseconds; strings stay as given.
        """
        self.assertEqual(format_log_time(1574853636.39952), "2019-11-27 11:20:36,399")
        self.assertEqual(format_log_time("2015-03-05 10:00:00,456"),
                         "2015-03-05 10:00:00,456")
        self.assertEqual(format_log_time(None), "")
        self.assertEqual(format_log_time(False), "")


class OneSourceTests(SynchronousTestCase):
    """
    The parser names and the section walk are each defined once, in the
    report package, for every reader.
    """

    def test_parser_names(self) -> None:
        """
        The configuration's parser names and parse_and_submit's report
        parsers are the report package's.
        """
        import attrs

        from cuckoodist.report import rows
        from cuckoodist.stages import parse_and_submit

        self.assertIs(attrs.fields(parse_and_submit.ParseAndSubmitConfig).enabled_parsers.default, rows.STAGE_PARSERS)
        self.assertIs(parse_and_submit.REPORT_PARSERS, rows.PARSERS)
        self.assertEqual(rows.STAGE_PARSERS, rows.REPORT_PARSERS + ("dropped",))
        self.assertEqual(PARSERS, frozenset(rows.REPORT_PARSERS))

    def test_readers_are_walkers(self) -> None:
        """
        The text walk, the event walk and the plain reader each give every
        operation of the one L{Walker} the section walk uses, and share its
        L{Walker.pick}.
        """
        from cuckoodist.report._text import _Text
        from cuckoodist.report._walker import Walker
        from cuckoodist.report.extract import _Events
        from cuckoodist.report.plain import _Decoded

        for reader in (_Text, _Events, _Decoded):
            for name in ("kind", "entries", "items", "skip", "whole", "scalar", "calls"):
                self.assertIsNot(getattr(reader, name), getattr(Walker, name),
                                 (reader, name))
            self.assertIs(reader.pick, Walker.pick)
