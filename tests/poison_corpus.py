"""
A corpus of hostile messages, one list per message kind, for the decoder
tests (L{tests.test_poison_corpus}) and the end-to-end poison test
(L{tests.test_poison_e2e}).

Anyone who can publish to a queue can send any of these, so each one is
a message the pipeline must end exactly once, never crash on.  A case
names the part of the reason it must be refused with, so a decoder that
refuses it for the wrong reason (or by luck) is caught too.

Bodies are built here, not stored as files: several are megabytes of
nesting or text, and building them shows what each one is.

Every request and task body carries L{API_KEY} in its CRITs context, so
the tests can check that no reason, log line or dump name repeats it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import attrs

__all__ = [
    "API_KEY",
    "Case",
    "REQUEST_CASES",
    "TASK_CASES",
    "FAILED_CASES",
    "RAW_CASES",
    "TOLERATED",
    "crits_doc",
    "request_doc",
    "task_doc",
    "failed_doc",
    "deep",
    "dumps",
]

#: A credential no real system uses, planted in every CRITs context.
API_KEY = "poison-corpus-key-7d41c0ffee93b2a85e60"

#: JSON with a lone surrogate escape, as text fragment (json.dumps writes
#: "\ud800" for a lone surrogate when ensure_ascii is on).
SURROGATE = "\ud800"
HUGE_INT = 10**399  # 400 digits


@attrs.frozen
class Case:
    """
    One hostile message.

    @ivar name: a short, unique, file-name-safe label.
    @ivar body: the bytes as published.
    @ivar reason: a fragment the decoder's L{InvalidMessage} reason must
        contain.
    """

    name: str
    body: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    reason: str


def deep(depth: int, leaf: Any = 0) -> str:
    """
    JSON text of a list nested C{depth} deep, built without recursion
    (json.dumps itself would hit the recursion limit).
    """
    return "[" * depth + json.dumps(leaf) + "]" * depth


def dumps(doc: Any) -> bytes:
    """
    Encode a document the way a hostile publisher might: ASCII escapes, so
    lone surrogates survive as C{\\ud800}, and huge integers verbatim.
    """
    return json.dumps(doc).encode("ascii")


def crits_doc(marker: str = "poison", **changes: Any) -> dict[str, Any]:
    """
    A valid CRITs context carrying L{API_KEY}; C{changes} override fields
    (a value of C{...} removes one).
    """
    doc = {
        "analysis_id": marker,
        "object_type": "Sample",
        "object_id": "5f0c0ffee0000000000000aa",
        "username": "analyst",
        "api_key": API_KEY,
        "md5": "d41d8cd98f00b204e9800998ecf8427e",
        "source": "poison",
    }
    return _apply(doc, changes)


def request_doc(marker: str = "poison", crits: dict | None = None, **changes: Any) -> dict[str, Any]:
    """
    A valid analysis request; C{changes} override top-level keys.
    """
    doc = {
        "payload": {"package": "exe", "timeout": "60"},
        "file": {"name": f"{marker}.exe", "data": base64.b64encode(b"MZ poison " + marker.encode()).decode()},
        "crits_data": crits if crits is not None else crits_doc(marker),
    }
    return _apply(doc, changes)


def task_doc(marker: str = "poison", cuckoo_url: str = "http://127.0.0.1:8090", crits: dict | None = None,
             **changes: Any) -> dict[str, Any]:
    """
    A valid task message; C{changes} override top-level keys.
    """
    doc = {
        "TaskId": 7,
        "CuckooURL": cuckoo_url,
        "CritsData": crits if crits is not None else crits_doc(marker),
        "SubmittedAt": 1_700_000_000.0,
        "Deadline": 1_700_003_600.0,
    }
    return _apply(doc, changes)


def failed_doc(msg: str = "{}", queue: str = "worker/feed_cuckoo", **changes: Any) -> dict[str, Any]:
    """
    A valid failed envelope in the Go workers' shape plus our fields.
    """
    doc = {
        "Service": "feed_cuckoo",
        "Queue": queue,
        "Error": "boom",
        "Desc": "transient failure",
        "Msg": msg,
        "Attempts": 1,
        "Final": False,
    }
    return _apply(doc, changes)


def _apply(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def _with(builder: Callable[..., dict], raw_replace: tuple[str, str] | None = None, **changes: Any) -> bytes:
    """
    A body from C{builder(**changes)}; C{raw_replace} swaps a placeholder
    string in the encoded JSON for raw JSON text (NaN, deep nesting).
    """
    text = json.dumps(builder(**changes))
    if raw_replace is not None:
        placeholder, raw = raw_replace
        text = text.replace(json.dumps(placeholder), raw, 1)
    return text.encode("ascii")


def _req_crits(**changes: Any) -> bytes:
    return dumps(request_doc(crits=crits_doc(**changes)))


def _task_crits(**changes: Any) -> bytes:
    return dumps(task_doc(crits=crits_doc(**changes)))


_B64 = base64.b64encode(b"MZ").decode()

REQUEST_CASES: list[Case] = [
    Case("req-surrogate-analysis-id", _req_crits(analysis_id=SURROGATE), "crits_data.analysis_id is not valid Unicode"),
    Case("req-surrogate-object-id", _req_crits(object_id="a" + SURROGATE), "crits_data.object_id is not valid Unicode"),
    Case("req-surrogate-object-type", _req_crits(object_type=SURROGATE + "x"), "crits_data.object_type is not valid Unicode"),
    Case("req-surrogate-crits-url", _req_crits(crits_url="http://x/" + SURROGATE), "crits_data.crits_url is not valid Unicode"),
    Case("req-surrogate-username", _req_crits(username=SURROGATE), "crits_data.username is not valid Unicode"),
    Case("req-surrogate-payload-key", dumps(request_doc(payload={SURROGATE: "x"})), "payload option name is not valid Unicode"),
    Case("req-surrogate-payload-value", dumps(request_doc(payload={"options": "a=" + SURROGATE})), "payload.options is not valid Unicode"),
    Case("req-surrogate-file-name", dumps(request_doc(file={"name": SURROGATE, "data": _B64})), "file.name is not valid Unicode"),
    Case("req-huge-int-option", dumps(request_doc(payload={"timeout": HUGE_INT})), "payload.timeout is out of range"),
    Case("req-nan-option", _with(request_doc, ("@NAN@", "NaN"), payload={"timeout": "@NAN@"}), "NaN"),
    Case("req-infinity-option", _with(request_doc, ("@INF@", "Infinity"), payload={"timeout": "@INF@"}), "Infinity"),
    Case("req-neg-infinity-option", _with(request_doc, ("@INF@", "-Infinity"), payload={"timeout": "@INF@"}), "Infinity"),
    Case("req-deep-payload", _with(request_doc, ("@DEEP@", deep(100_000)), payload={"x": "@DEEP@"}), "nested too deeply"),
    Case("req-deep-crits", _with(request_doc, ("@DEEP@", deep(100_000, {})), crits="@DEEP@"), "nested too deeply"),
    Case("req-3mb-analysis-id", _req_crits(analysis_id="A" * 3_000_000), "crits_data.analysis_id is 3000000 characters long"),
    Case("req-long-analysis-id", _req_crits(analysis_id="A" * 129), "crits_data.analysis_id is 129 characters long"),
    Case("req-int-analysis-id", _req_crits(analysis_id=12), "crits_data.analysis_id must be a string, got int"),
    Case("req-empty-analysis-id", _req_crits(analysis_id="  "), "crits_data.analysis_id is missing or empty"),
    Case("req-missing-object-type", _req_crits(object_type=...), "crits_data.object_type must be a string, got null"),
    Case("req-int-api-key", _req_crits(api_key=1234), "crits_data.api_key must be a string"),
    Case("req-long-username", _req_crits(username="u" * 70_000), "crits_data.username is 70000 characters long"),
    Case("req-crits-list", dumps(request_doc(crits=[crits_doc()])), "crits_data must be an object, got array"),
    Case("req-crits-missing", dumps(request_doc(crits_data=...)), "crits_data must be an object, got null"),
    Case("req-101-options", dumps(request_doc(payload={f"o{i}": "v" for i in range(101)})), "payload has 101 options"),
    Case("req-huge-option", dumps(request_doc(payload={"options": "x" * 70_000})), "payload.options is 70000 characters long"),
    Case("req-object-option", dumps(request_doc(payload={"timeout": {"a": 1}})), "payload.timeout must be a string, got object"),
    Case("req-bool-option", dumps(request_doc(payload={"enforce_timeout": True})), "payload.enforce_timeout must be a string, got boolean"),
    Case("req-list-option", dumps(request_doc(payload={"tags": ["a"]})), "payload.tags must be a string, got array"),
    Case("req-long-option-name", dumps(request_doc(payload={"k" * 200: "v"})), "payload option name is 200 characters long"),
    # A payload key would be quoted in the reason: a newline in it would forge a
    # second log line.
    Case("req-newline-payload-key", dumps(request_doc(payload={"x\n2024-01-01 [overseer] FORGED": {"a": 1}})), "a payload option name holds control characters"),
    Case("req-payload-list", dumps(request_doc(payload=["package", "exe"])), "payload must be an object, got array"),
    Case("req-payload-string", dumps(request_doc(payload="package=exe")), "payload must be an object, got string"),
    Case("req-file-missing", dumps(request_doc(file=...)), "file must be an object, got null"),
    Case("req-file-string", dumps(request_doc(file="TVo=")), "file must be an object, got string"),
    Case("req-file-not-base64", dumps(request_doc(file={"name": "x", "data": "!!not base64!!"})), "file.data is not valid base64"),
    Case("req-file-empty-data", dumps(request_doc(file={"name": "x", "data": ""})), "file.data is missing or empty"),
    Case("req-file-data-int", dumps(request_doc(file={"name": "x", "data": 77})), "file.data must be a string, got int"),
    Case("req-file-name-empty", dumps(request_doc(file={"name": "", "data": _B64})), "file.name is missing or empty"),
    Case("req-file-name-long", dumps(request_doc(file={"name": "n" * 5000, "data": _B64})), "file.name is 5000 characters long"),
]

TASK_CASES: list[Case] = [
    Case("task-huge-task-id", dumps(task_doc(TaskId=HUGE_INT)), "TaskId must be a positive integer"),
    Case("task-zero-task-id", dumps(task_doc(TaskId=0)), "TaskId must be a positive integer"),
    Case("task-negative-task-id", dumps(task_doc(TaskId=-5)), "TaskId must be a positive integer"),
    Case("task-string-task-id", dumps(task_doc(TaskId="12")), "TaskId must be a positive integer"),
    Case("task-float-task-id", dumps(task_doc(TaskId=1.5)), "TaskId must be a positive integer"),
    Case("task-bool-task-id", dumps(task_doc(TaskId=True)), "TaskId must be a positive integer"),
    Case("task-2pow53-task-id", dumps(task_doc(TaskId=2**53)), "TaskId must be a positive integer"),
    Case("task-missing-task-id", dumps(task_doc(TaskId=...)), "TaskId must be a positive integer"),
    Case("task-nan-task-id", _with(task_doc, ("@NAN@", "NaN"), TaskId="@NAN@"), "NaN"),
    Case("task-missing-url", dumps(task_doc(CuckooURL=...)), "CuckooURL must be a string, got null"),
    Case("task-ftp-url", dumps(task_doc(CuckooURL="ftp://127.0.0.1:8090")), "CuckooURL must be an http(s) URL"),
    Case("task-file-url", dumps(task_doc(CuckooURL="file:///etc/passwd")), "CuckooURL must be an http(s) URL"),
    Case("task-surrogate-url", dumps(task_doc(CuckooURL="http://h/" + SURROGATE)), "CuckooURL is not valid Unicode"),
    Case("task-long-url", dumps(task_doc(CuckooURL="http://h/" + "p" * 3000)), "CuckooURL is 3009 characters long"),
    Case("task-int-url", dumps(task_doc(CuckooURL=8090)), "CuckooURL must be a string, got int"),
    Case("task-huge-submitted-at", dumps(task_doc(SubmittedAt=HUGE_INT)), "SubmittedAt must be a time in epoch seconds"),
    Case("task-huge-deadline", dumps(task_doc(Deadline=HUGE_INT)), "Deadline must be a time in epoch seconds"),
    Case("task-negative-deadline", dumps(task_doc(Deadline=-1)), "Deadline must be a time in epoch seconds"),
    Case("task-string-deadline", dumps(task_doc(Deadline="tomorrow")), "Deadline must be a time in epoch seconds, got string"),
    Case("task-infinity-deadline", _with(task_doc, ("@INF@", "Infinity"), Deadline="@INF@"), "Infinity"),
    Case("task-huge-float-submitted-at", _with(task_doc, ("@BIG@", "1e400"), SubmittedAt="@BIG@"), "SubmittedAt must be a time in epoch seconds"),
    Case("task-crits-missing", dumps(task_doc(CritsData=...)), "CritsData must be an object, got null"),
    Case("task-surrogate-analysis-id", _task_crits(analysis_id=SURROGATE), "CritsData.analysis_id is not valid Unicode"),
    Case("task-surrogate-api-key", _task_crits(api_key=API_KEY + SURROGATE), "CritsData.api_key is not valid Unicode"),
    Case("task-3mb-analysis-id", _task_crits(analysis_id="A" * 3_000_000), "more than the 1048576 allowed"),
    Case("task-deep-crits", _with(task_doc, ("@DEEP@", deep(100_000, {})), CritsData="@DEEP@"), "nested too deeply"),
    Case("task-2mb-extra-field", dumps(task_doc(Extra="x" * 2_000_000)), "more than the 1048576 allowed"),
]

FAILED_CASES: list[Case] = [
    Case("failed-surrogate-service", dumps(failed_doc(Service=SURROGATE)), "Service is not valid Unicode"),
    Case("failed-missing-service", dumps(failed_doc(Service=...)), "Service must be a string, got null"),
    Case("failed-int-service", dumps(failed_doc(Service=3)), "Service must be a string, got int"),
    Case("failed-empty-service", dumps(failed_doc(Service=" ")), "Service is missing or empty"),
    Case("failed-missing-queue", dumps(failed_doc(Queue=...)), "Queue must be a string, got null"),
    Case("failed-long-queue", dumps(failed_doc(queue="q" * 600)), "Queue is 600 characters long"),
    Case("failed-surrogate-queue", dumps(failed_doc(queue="worker/" + SURROGATE)), "Queue is not valid Unicode"),
    Case("failed-list-queue", dumps(failed_doc(queue=["worker/feed_cuckoo"])), "Queue must be a string, got array"),
    Case("failed-surrogate-msg", dumps(failed_doc(msg='{"a":"' + SURROGATE + '"}')), "Msg is not valid Unicode"),
    Case("failed-object-msg", dumps(failed_doc(msg={"TaskId": 1})), "Msg must be a string, got object"),
    Case("failed-surrogate-error", dumps(failed_doc(Error=SURROGATE)), "Error is not valid Unicode"),
    Case("failed-object-desc", dumps(failed_doc(Desc={"d": 1})), "Desc must be a string, got object"),
    Case("failed-deep-extra", _with(failed_doc, ("@DEEP@", deep(100_000)), Extra="@DEEP@"), "nested too deeply"),
    Case("failed-nan-first-failure", _with(failed_doc, ("@NAN@", "NaN"), FirstFailure="@NAN@"), "NaN"),
    Case("failed-infinity-attempts", _with(failed_doc, ("@INF@", "Infinity"), Attempts="@INF@"), "Infinity"),
]

RAW_CASES: list[Case] = [
    Case("raw-empty", b"", "not valid JSON"),
    Case("raw-blank", b" \r\n\t ", "not valid JSON"),
    Case("raw-invalid-utf8", b'{"a": "\xff\xfe"}', "not valid JSON"),
    Case("raw-invalid-utf8-start", b"\xff\xfe\xfd{", "not valid JSON"),
    Case("raw-nul-bytes", b"\x00\x00\x00{", "not valid JSON"),
    Case("raw-truncated", b'{"payload": {', "not valid JSON"),
    Case("raw-trailing-garbage", b"{} {}", "not valid JSON"),
    Case("raw-array", b"[1, 2]", "must be a JSON object, got array"),
    Case("raw-null", b"null", "must be a JSON object, got null"),
    Case("raw-number", b"42", "must be a JSON object, got int"),
    Case("raw-string", b'"hello"', "must be a JSON object, got string"),
    Case("raw-true", b"true", "must be a JSON object, got boolean"),
    Case("raw-nan", b"NaN", "NaN"),
    Case("raw-deep-array", deep(100_000).encode(), "nested too deeply"),
    Case("raw-deep-object", (b'{"a":' * 100_000) + b"1" + b"}" * 100_000, "nested too deeply"),
    Case("raw-single-quotes", b"{'a': 1}", "not valid JSON"),
]

#: Hostile but decodable: each decoder must accept these (a count or a
#: time it cannot use is ignored, not fatal) and re-encode them.  Keyed by
#: decoder kind.
TOLERATED: dict[str, list[tuple[str, bytes]]] = {
    "request": [
        ("retry-huge-first-failure", dumps(request_doc(Retry={"attempts": 1, "first_failure": HUGE_INT}))),
        ("retry-huge-attempts", dumps(request_doc(Retry={"attempts": HUGE_INT, "first_failure": 1.0}))),
        ("unknown-surrogate-key", dumps(request_doc(**{SURROGATE: SURROGATE}))),
        ("hostile-file-name", dumps(request_doc(file={"name": "../../etc/pass\x00wd", "data": _B64}))),
    ],
    "task": [
        ("retry-huge-first-failure", dumps(task_doc(Retry={"attempts": 1, "first_failure": HUGE_INT}))),
        ("retry-not-object", dumps(task_doc(Retry=[1, 2]))),
        ("unknown-surrogate-key", dumps(task_doc(**{SURROGATE: 1}))),
    ],
    "failed": [
        ("huge-attempts", dumps(failed_doc(Attempts=HUGE_INT))),
        ("huge-first-failure", dumps(failed_doc(FirstFailure=HUGE_INT))),
        ("huge-task-id", dumps(failed_doc(TaskId=HUGE_INT))),
        ("service-path", dumps(failed_doc(Service="x/../../escape"))),
        ("service-nul", dumps(failed_doc(Service="feed\x00cuckoo"))),
        ("service-300", dumps(failed_doc(Service="s" * 300))),
        ("queue-amq", dumps(failed_doc(queue="amq.gen-poison"))),
        ("queue-non-ascii", dumps(failed_doc(queue="worker/fëed_çuckoo"))),
        ("queue-delay", dumps(failed_doc(queue="cuckoodist.delay.1000ms"))),
        ("analysis-id-surrogate", dumps(failed_doc(AnalysisId=SURROGATE * 500))),
    ],
}
