"""
Property tests for the wire decoders on hostile input.

The documents generated here are shaped like each message (the right keys,
often with valid values, so decoding gets deep into each decoder) with
hostile values mixed in: lone surrogates, 400-digit integers, NaN and
Infinity, long strings, nesting past the parser's limit, wrong types.
Bodies are also written as invalid UTF-8, cut short, or replaced by
arbitrary bytes.  The properties:

  - decoding raises nothing but L{InvalidMessage}, with a one-line,
    bounded reason that never repeats the API key;
  - whatever decodes re-encodes to ASCII bytes that decode to the same
    value (the fields C{encode} does not carry aside);
  - L{peek} never raises.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.errors import InvalidMessage
from cuckoodist.messages import (
    MAX_TASK_MESSAGE_BYTES, AnalysisRequest, FailedMessage, RetryInfo, TaskMessage, peek,
)
from tests import poison_corpus as corpus

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_NASTY = ["\ud800", "\udfff", "\udc80", "\x00", "\n", "\x1b", "\u202e", "\ufeff", "é", "\U0001f600"]

_text = st.text(st.one_of(st.characters(), st.sampled_from(_NASTY)), max_size=24)
_plain = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=24)


class _Raw(str):
    """
    A placeholder that L{_encode} replaces by raw JSON text: NaN, Infinity,
    1e400 and nesting too deep for C{json.dumps} to write.
    """


_raw = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]),
    st.builds(corpus.deep, st.sampled_from([200, 5_000, 100_000])),
).map(_Raw)

_long = st.builds(lambda n, c: c * n, st.sampled_from([129, 4097, 70_000, 1_100_000]), st.sampled_from(["a", "\ud800", "é"]))

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=10**399, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    _long,
    _raw,
)

_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)


def _maybe(good: st.SearchStrategy, *, missing: bool = True) -> st.SearchStrategy:
    """
    A field value: mostly a valid one (so that whole documents often get
    past every check), sometimes anything, sometimes the key is left out
    (L{_MISSING}).
    """
    def pick(n: int) -> st.SearchStrategy:
        if n == 14:
            return _values
        if n == 15 and missing:
            return st.just(_MISSING)
        return good

    return st.sampled_from(range(16)).flatmap(pick)


_MISSING = object()


def _doc(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """
    A JSON object with the given keys (each maybe missing) plus a few
    unknown ones.
    """
    def build(values: dict, extra: dict) -> dict:
        doc = {k: v for k, v in values.items() if v is not _MISSING}
        doc.update(extra)
        return doc

    extra = st.one_of(st.just({}), st.just({}), st.dictionaries(_text, _values, max_size=2))
    return st.builds(build, st.fixed_dictionaries(fields), extra)


_ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=8))
_api_keys = st.just(corpus.API_KEY)

_crits = _doc(
    analysis_id=_maybe(_ids),
    object_type=_maybe(st.just("Sample")),
    object_id=_maybe(_ids),
    crits_url=_maybe(st.sampled_from(["", "http://127.0.0.1:8080", "http://evil.example/"])),
    username=_maybe(st.just("analyst")),
    api_key=_maybe(_api_keys),
    md5=_maybe(st.just("d41d8cd98f00b204e9800998ecf8427e")),
    source=_maybe(st.just("fuzz")),
)

_retry = _maybe(_doc(attempts=_maybe(st.integers(0, 5)), first_failure=_maybe(st.floats(0, 2e9))))

_b64 = st.binary(min_size=1, max_size=32).map(lambda b: base64.b64encode(b).decode())

_option_names = st.one_of(st.sampled_from(["package", "timeout", "options", "machine"]), _plain.filter(str.strip), _text)

_requests = _doc(
    payload=_maybe(st.dictionaries(_option_names, st.one_of(_plain, _plain, _text, st.integers(), st.floats(allow_nan=False)), max_size=4)),
    file=_maybe(_doc(name=_maybe(st.text(min_size=1, max_size=30)), data=_maybe(_b64))),
    crits_data=_maybe(_crits),
    Retry=_retry,
)

_epochs = st.floats(0, 2e9)


_tasks = _doc(
    TaskId=_maybe(st.integers(1, 10**6)),
    CuckooURL=_maybe(st.sampled_from(["http://127.0.0.1:8090", "https://c/", "http://other:1/x?y=1"])),
    CritsData=_maybe(_crits),
    SubmittedAt=_maybe(_epochs),
    Deadline=_maybe(_epochs),
    Retry=_retry,
)

_failed = _doc(
    Service=_maybe(st.sampled_from(["feed_cuckoo", "check_results", "x/../../escape", "s" * 300])),
    Queue=_maybe(st.sampled_from(["worker/feed_cuckoo", "amq.x", "cuckoodist.delay.1000ms", "q" * 300])),
    Error=_maybe(_text),
    Desc=_maybe(_text),
    Msg=_maybe(st.one_of(_text, _requests.map(lambda d: _encode(d).decode("utf-8", "replace")))),
    Attempts=_maybe(st.integers(0, 10)),
    FirstFailure=_maybe(_epochs),
    Final=_maybe(st.booleans()),
    AnalysisId=_maybe(_ids),
    TaskId=_maybe(st.integers(1, 10**6)),
)


def _encode(doc: Any, how: str = "ascii") -> bytes:
    """
    Write C{doc} as a hostile publisher might: ASCII escapes (lone
    surrogates stay escapes), or raw UTF-8 with surrogates passed through
    (invalid UTF-8 on the wire), with L{_Raw} placeholders spliced in.
    """
    raws: list[str] = []

    def mark(value: Any) -> Any:
        if isinstance(value, _Raw):
            raws.append(str(value))
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(doc), ensure_ascii=(how == "ascii"))
    for n, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{n}@@"', raw, 1)
    return text.encode("utf-8", "surrogatepass")


def _bodies(docs: st.SearchStrategy) -> st.SearchStrategy:
    """
    Bodies made from C{docs}: encoded either way, sometimes cut short or
    with a byte changed; and plain arbitrary bytes.
    """
    encoded = st.builds(_encode, docs, st.sampled_from(["ascii", "utf8"]))

    def damage(body: bytes, cut: int, at: int, byte: int, how: str) -> bytes:
        if not body or how == "none":
            return body
        if how == "cut":
            return body[: cut % len(body)]
        i = at % len(body)
        return body[:i] + bytes([byte]) + body[i + 1:]

    damaged = st.builds(damage, encoded, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 255),
                        st.sampled_from(["none", "none", "cut", "flip"]))
    return st.one_of(damaged, damaged, damaged, st.binary(max_size=64))


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "request": AnalysisRequest.decode,
    "task": TaskMessage.decode,
    "failed": FailedMessage.decode,
}


def _carried(kind: str, value: Any) -> Any:
    """
    What C{encode} promises to carry: everything but the retry count of
    requests and tasks (only L{with_retry} writes that), and a missing
    attempt count on a failed envelope written as 1.
    """
    if kind == "failed":
        return attrs.evolve(value, attempts=value.attempts if value.attempts is not None else 1)
    return attrs.evolve(value, retry=RetryInfo())


class DecoderProperties(SynchronousTestCase):
    def _check(self, kind: str, body: bytes) -> None:
        decode = DECODERS[kind]
        try:
            value = decode(body)
        except InvalidMessage as e:
            self.assertNotIn("\n", e.reason)
            self.assertLess(len(e.reason), 2500)
            self.assertNotIn(corpus.API_KEY, e.reason)
            e.reason.encode("utf-8")
        else:
            encoded = value.encode()
            self.assertIsInstance(encoded, bytes)
            encoded.decode("ascii")
            again = decode(encoded)
            self.assertEqual(_carried(kind, again), _carried(kind, value))
            self.assertEqual(again.encode(), encoded)
            self.assertNotIn(corpus.API_KEY, repr(value))
        seen = peek(body)
        if seen.doc is None:
            self.assertNotIn("\n", seen.problem)
        seen.analysis_id.encode("utf-8")
        peek(body, MAX_TASK_MESSAGE_BYTES)

    @_SETTINGS
    @given(_bodies(_requests))
    def test_request(self, body: bytes) -> None:
        """
        L{AnalysisRequest.decode} on request-shaped hostile bodies.
        """
        self._check("request", body)

    @_SETTINGS
    @given(_bodies(_tasks))
    def test_task(self, body: bytes) -> None:
        """
        L{TaskMessage.decode} on task-shaped hostile bodies.
        """
        self._check("task", body)

    @_SETTINGS
    @given(_bodies(_failed))
    def test_failed(self, body: bytes) -> None:
        """
        L{FailedMessage.decode} on failed-envelope-shaped hostile bodies.
        """
        self._check("failed", body)

    @_SETTINGS
    @given(st.one_of(_bodies(_requests), _bodies(_tasks), _bodies(_failed)))
    def test_every_decoder_any_shape(self, body: bytes) -> None:
        """
        Each decoder on the other kinds' bodies: a message on the wrong
        queue is refused cleanly too.
        """
        for kind in DECODERS:
            self._check(kind, body)


def _successes(kind: str, docs: st.SearchStrategy) -> list[bytes]:
    """
    Run C{kind}'s decoder over generated bodies; return those it accepted.
    """
    decoded: list[bytes] = []

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.builds(_encode, docs))
    def run(body: bytes) -> None:
        try:
            DECODERS[kind](body)
        except InvalidMessage:
            return
        decoded.append(body)

    run()
    return decoded


class RoundTripCoverage(SynchronousTestCase):
    def test_properties_see_successes(self) -> None:
        """
        A fair share of generated bodies decode, so the re-encoding property
        is exercised, for each kind.
        """
        for kind, docs in (("request", _requests), ("task", _tasks), ("failed", _failed)):
            self.assertGreaterEqual(len(_successes(kind, docs)), 5, kind)


class RetryReencodeTests(SynchronousTestCase):
    def test_task_retry_survives_reencode(self) -> None:
        """
        A task message's C{Retry} survives being decoded and encoded again.

        check_results re-publishes every unfinished poll with
        C{task.encode()} (and forwards finished tasks the same way), so if
        C{encode} drops C{Retry}, the count the overseer put in the message
        is gone after one poll, and only the per-process AttemptMemory still
        bounds the retries; across a restart, nothing does.
        """
        body = corpus.dumps(corpus.task_doc(Retry={"attempts": 2, "first_failure": 1_700_000_000.0}))
        task = TaskMessage.decode(body)
        self.assertEqual(task.retry, RetryInfo(2, 1_700_000_000.0))
        self.assertEqual(TaskMessage.decode(task.encode()).retry, task.retry)
