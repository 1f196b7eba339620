"""
Every decoder against the hostile-message corpus (L{tests.poison_corpus}).

The contract under test: whatever bytes arrive, a decoder either returns a
value or raises L{InvalidMessage} with a reason that fits one log line,
names the right field and never repeats the API key.  Anything else (a
RecursionError, an OverflowError, a UnicodeEncodeError) would escape the
stage's failure routing as an "internal error" at best.
"""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import InvalidMessage
from cuckoodist.messages import AnalysisRequest, FailedMessage, RetryInfo, TaskMessage, decode_json, peek
from tests import poison_corpus as corpus

DECODERS: dict[str, Callable[[bytes], object]] = {
    "request": AnalysisRequest.decode,
    "task": TaskMessage.decode,
    "failed": FailedMessage.decode,
}

KIND_CASES = {
    "request": corpus.REQUEST_CASES,
    "task": corpus.TASK_CASES,
    "failed": corpus.FAILED_CASES,
}

#: A reason goes into one log line, one CRITs log entry and one dump file.
MAX_REASON = 2500


class CorpusShapeTests(SynchronousTestCase):
    def test_size_and_names(self) -> None:
        """
        The corpus holds at least 50 refusals, spread over every kind, and
        its names are unique (the end-to-end test matches dumps by them).
        """
        everything = corpus.REQUEST_CASES + corpus.TASK_CASES + corpus.FAILED_CASES + corpus.RAW_CASES
        self.assertGreaterEqual(len(everything), 50)
        for cases in (corpus.REQUEST_CASES, corpus.TASK_CASES, corpus.FAILED_CASES, corpus.RAW_CASES):
            self.assertGreaterEqual(len(cases), 10)
        names = [c.name for c in everything]
        self.assertEqual(len(names), len(set(names)))


class DecoderRefusalTests(SynchronousTestCase):
    def _refused(self, decode: Callable[[bytes], object], case: corpus.Case, label: str) -> str:
        try:
            value = decode(case.body)
        except InvalidMessage as e:
            reason = e.reason
        except BaseException as e:  # noqa: B902 - the point is that nothing else escapes
            self.fail(f"{label}/{case.name}: raised {type(e).__name__}: {str(e)[:200]}")
        else:
            self.fail(f"{label}/{case.name}: decoded instead of being refused: {value!r}"[:400])
        self.assertIsInstance(reason, str)
        self.assertIn(case.reason, reason, f"{label}/{case.name}")
        self.assertNotIn("\n", reason, f"{label}/{case.name}")
        self.assertNotIn("\r", reason, f"{label}/{case.name}")
        self.assertLess(len(reason), MAX_REASON, f"{label}/{case.name}")
        self.assertNotIn(corpus.API_KEY, reason, f"{label}/{case.name}")
        reason.encode("utf-8")  # loggable: no lone surrogate
        return reason

    def test_kind_cases(self) -> None:
        """
        Each decoder refuses every case of its own kind with
        L{InvalidMessage}, and the reason contains the expected fragment.
        """
        problems = []
        for kind, cases in KIND_CASES.items():
            for case in cases:
                try:
                    self._refused(DECODERS[kind], case, kind)
                except self.failureException as e:
                    problems.append(str(e)[:300])
        self.assertEqual(problems, [])

    def test_raw_cases_every_decoder(self) -> None:
        """
        Bytes that are not a JSON object are refused by every decoder and
        by L{decode_json} itself, with the same kind of reason.
        """
        problems = []
        for case in corpus.RAW_CASES:
            for kind, decode in list(DECODERS.items()) + [("decode_json", decode_json)]:
                try:
                    self._refused(decode, case, kind)
                except self.failureException as e:
                    problems.append(str(e)[:300])
        self.assertEqual(problems, [])

    def test_peek_never_raises(self) -> None:
        """
        L{peek} reads any corpus body without raising; bodies that are not
        JSON objects give no document and say why in one line.
        """
        everything = corpus.REQUEST_CASES + corpus.TASK_CASES + corpus.FAILED_CASES + corpus.RAW_CASES
        for case in everything:
            seen = peek(case.body)
            self.assertLessEqual(len(seen.analysis_id), 131, case.name)
            seen.analysis_id.encode("utf-8")
            if seen.doc is None:
                self.assertTrue(seen.problem, case.name)
                self.assertNotIn("\n", seen.problem, case.name)
        for case in corpus.RAW_CASES:
            self.assertIsNone(peek(case.body).doc, case.name)

    def test_task_size_limit_in_peek(self) -> None:
        """
        L{peek} with a size limit refuses a 3 MB body without parsing it.
        """
        case = next(c for c in corpus.TASK_CASES if c.name == "task-3mb-analysis-id")
        seen = peek(case.body, max_size=1024 * 1024)
        self.assertIsNone(seen.doc)
        self.assertIn("more than the 1048576 allowed", seen.problem)

    def test_case_differs_from_valid_by_one_field(self) -> None:
        """
        The templates the cases are built from decode: each case is refused
        for what it changed, not because the template was already wrong.
        """
        AnalysisRequest.decode(corpus.dumps(corpus.request_doc()))
        TaskMessage.decode(corpus.dumps(corpus.task_doc()))
        FailedMessage.decode(corpus.dumps(corpus.failed_doc()))


class ToleratedTests(SynchronousTestCase):
    def test_tolerated_decode_and_reencode(self) -> None:
        """
        Hostile values in fields a decoder may ignore (a 400-digit retry
        count or time, an unusable Service or Queue in a failed envelope)
        decode, to values that encode into ASCII bytes that decode again.
        Counts and times it cannot use are dropped, never overflowed.
        """
        for kind, items in corpus.TOLERATED.items():
            for name, body in items:
                value = DECODERS[kind](body)
                again = DECODERS[kind](value.encode())
                value.encode().decode("ascii")
                if kind == "failed":
                    self.assertEqual(again, attrs.evolve(value, attempts=value.attempts or 1), name)
                    self.assertNotEqual(value.first_failure, float("inf"), name)
                else:
                    self.assertEqual(attrs.evolve(again, retry=value.retry), value, name)
                    self.assertIn(value.retry.first_failure, (None, 1.0), name)
                    self.assertLessEqual(value.retry.attempts, 1_000_000, name)

    def test_failed_service_is_a_label(self) -> None:
        """
        A failed envelope's Service is reduced to printable text of bounded
        length, whatever it held; the dump store builds file names from it.
        """
        for service in ("x/../../escape", "feed\x00cuckoo", "s" * 300):
            failed = FailedMessage.decode(corpus.dumps(corpus.failed_doc(Service=service)))
            self.assertTrue(failed.service.isprintable())
            self.assertLessEqual(len(failed.service), 131)

    def test_huge_retry_counts_ignored(self) -> None:
        """
        A 400-digit C{Retry.attempts} or C{first_failure} counts as absent.
        """
        body = corpus.dumps(corpus.request_doc(Retry={"attempts": corpus.HUGE_INT, "first_failure": corpus.HUGE_INT}))
        self.assertEqual(AnalysisRequest.decode(body).retry, RetryInfo(0, None))
        self.assertEqual(peek(body).retry, RetryInfo(0, None))
