"""
The fast text walk against hostile input: corrupted reports are either
refused as invalid JSON or read exactly as the plain parser reads them.
"""

import io
import os
import json

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import PermanentError
from cuckoodist.report import PARSERS, ExtractOptions, extract_results, extract_results_plain
from cuckoodist.simulators.reports import write_report

OPTIONS = ExtractOptions(parsers=frozenset(PARSERS), api_calls_max=40)


def _report(fmt: str) -> bytes:
    out = io.BytesIO()
    write_report(out, fmt, task_id=3, target_name="x.exe", target_md5="0" * 32, target_size=9,
                 processes=2, calls_per_process=30, seed=7)
    return out.getvalue()


REPORTS = {fmt: _report(fmt) for fmt in ("2.0", "1.2", "cape")}
NASTY = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\x00", b"\xff", b"\xc3", b"NaN", b"1e999",
         b'"\\ud800"', b"true", b"null", b" ", b"\n", b"-", b"0"]


def _strict_load(data: bytes):
    """
    What a strict JSON parser accepts: json.loads without NaN/Infinity.

    A number too large for a float (C{1e99999}) is valid JSON: the grammar
    has no range, and parsers differ only in what they make of it.  It is
    accepted here as json.loads accepts it, as infinity.
    """

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(data, parse_constant=refuse)


@st.composite
def corrupted(draw):
    fmt = draw(st.sampled_from(sorted(REPORTS)))
    data = bytearray(REPORTS[fmt])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        piece = draw(st.sampled_from(NASTY))
        if action == "replace":
            data[at:at + len(piece)] = piece
        elif action == "insert":
            data[at:at] = piece
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


class CorruptedReportTests(SynchronousTestCase):
    @settings(max_examples=int(os.environ.get("CUCKOODIST_HYPOTHESIS_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(corrupted())
    def test_refused_or_read_as_plain(self, data: bytes) -> None:
        """
        A corrupted report never raises anything but PermanentError; what is
        not JSON is refused; what is a JSON object gives exactly the rows
        the plain parser gives.
        """
        try:
            streamed = extract_results(io.BytesIO(data), OPTIONS)
        except PermanentError:
            streamed = None
        try:
            doc = _strict_load(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.assertIsNone(streamed, f"invalid JSON was accepted: {data[:120]!r}...{data[-60:]!r}")
            return
        if streamed is not None and isinstance(doc, dict):
            self.assertEqual(streamed, extract_results_plain(doc, OPTIONS))

    def test_fallback_agrees(self) -> None:
        """
        A valid report the fast walk declines (a byte-order mark in front)
        is still read, through the event walker, to the same rows.
        """
        data = REPORTS["2.0"]
        expected = extract_results_plain(json.loads(data), OPTIONS)
        self.assertEqual(extract_results(io.BytesIO(data), OPTIONS), expected)
        with_spaces = b" \n\t" + data + b"\n "
        self.assertEqual(extract_results(io.BytesIO(with_spaces), OPTIONS), expected)
