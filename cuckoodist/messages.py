# -*- test-case-name: tests.test_messages -*-
"""
The JSON wire format, shared with the original Go workers.

Field names and shapes are a compatibility contract: a fleet may mix old and
new workers on the same queues.  We only ever I{add} fields (Go's decoder
ignores unknown ones):

  - C{"Retry": {"attempts", "first_failure"}} on a message the overseer
    re-publishes, so retry counts survive restarts and are shared by every
    overseer;
  - C{"SubmittedAt"} and C{"Deadline"} on task messages, so any
    check_results instance can tell when to give up;
  - C{"requested_at"} on analysis requests and C{"RequestedAt"} on task
    messages, for the end-to-end latency;
  - C{"Attempts"}, C{"FirstFailure"}, C{"Final"}, C{"AnalysisId"},
    C{"TaskId"} on failed messages.

Everything here is pure: bytes in, value objects out, and back.  Decoding
raises L{InvalidMessage} with a reason that names the offending field, and
nothing else, whatever the bytes: anyone who can publish to a queue can send
them.  So sizes, nesting, number ranges and encodability are all checked
here, once, and every string a stage uses is one that can be encoded again,
framed and logged.  Encoding escapes everything outside ASCII, so whatever
a message carried in fields we pass through untouched (a lone surrogate
included) can always be written out again.
"""

import base64
import binascii
import hashlib
import json
import math
import os
import re
from types import MappingProxyType
from typing import Any, Mapping

import attrs

from cuckoodist.errors import InvalidMessage

__all__ = [
    "CritsData",
    "RetryInfo",
    "AnalysisRequest",
    "TaskMessage",
    "FailedMessage",
    "Peek",
    "decode_json",
    "crits_data_of",
    "peek",
    "resubmittable",
    "with_retry",
    "MAX_TASK_MESSAGE_BYTES",
    "PRIORITIES",
]

#: A task message is a few hundred bytes; anything far larger is not one.
MAX_TASK_MESSAGE_BYTES = 1024 * 1024
#: Identifiers appear in every log line about a sample: CRITs uses UUIDs and
#: ObjectIds, so 128 characters is generous and keeps log lines short.
_MAX_ID = 128
#: Everything else we read: URLs, user names, keys, sources, option values.
_MAX_TEXT = 64 * 1024
#: How many Cuckoo options a request may carry.
_MAX_OPTIONS = 100
#: Sample names are cut to 200 characters anyway; refuse absurd ones outright.
_MAX_NAME = 4096
#: Cuckoo task ids are database integers; JSON readers agree up to 2**53.
_MAX_TASK_ID = 2**53
#: Times are epoch seconds; this is the year 5138, far past any real one.
_MAX_EPOCH = 1e11
#: Far more attempts than any configured max_retries (at most 100).
_MAX_ATTEMPTS = 1_000_000


@attrs.frozen
class CritsData:
    """
    Where in CRITs an analysis lives, and whose credentials post to it.
    C{api_key} stays out of every repr and log line.
    """

    analysis_id: str
    object_type: str
    object_id: str
    crits_url: str = ""
    username: str = ""
    api_key: str = attrs.field(default="", repr=False)
    md5: str = ""
    source: str = ""

    @classmethod
    def from_json(cls, value: object, where: str) -> "CritsData":
        doc = _mapping(value, where)
        fields = {}
        for name in ("analysis_id", "object_type", "object_id"):
            fields[name] = _string(doc.get(name), f"{where}.{name}", required=True, limit=_MAX_ID, printable=True)
        for name in ("crits_url", "username", "api_key", "md5", "source"):
            fields[name] = _string(doc.get(name, ""), f"{where}.{name}")
        return cls(**fields)

    def to_json(self) -> dict[str, str]:
        return {
            "crits_url": self.crits_url,
            "analysis_id": self.analysis_id,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "username": self.username,
            "api_key": self.api_key,
            "md5": self.md5,
            "source": self.source,
        }


@attrs.frozen
class RetryInfo:
    """
    How often a message has failed, carried in the message itself.
    """

    attempts: int = 0
    first_failure: float | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "RetryInfo":
        raw = doc.get("Retry")
        if not isinstance(raw, Mapping):
            return cls()
        return cls(
            attempts=_count(raw.get("attempts"), 0),
            first_failure=_epoch(raw.get("first_failure")),
        )

    def add_to(self, doc: dict[str, Any]) -> dict[str, Any]:
        """
        Set C{doc}'s C{Retry} field, unless there is nothing to count yet.
        """
        if self != RetryInfo():
            doc["Retry"] = {"attempts": self.attempts, "first_failure": self.first_failure}
        return doc


@attrs.frozen
class AnalysisRequest:
    """
    A sample to analyse, as published by the CRITs-side service.

    The sample travels inline, base64 in C{file.data} (the Go service's
    format), or by reference: C{file.data} absent, C{file.md5} (and
    C{file.sha256} when known) naming a sample feed_cuckoo fetches from
    CRITs.  With both, the inline bytes are used and must match the digests.

    @ivar payload: Cuckoo submission options (package, timeout, options...).
    @ivar file_data: the sample, or C{None} for a request by reference.
    @ivar md5: lower-case hex, C{""} when not given.
    @ivar sha256: lower-case hex, C{""} when not given.
    @ivar priority: Cuckoo's task priority (1 to 3), or C{None} for
        Cuckoo's default.
    @ivar requested_at: C{requested_at}, epoch seconds when the request was
        published (the CRITs service, C{cuckoodist submit} and the demo set
        it; the Go service did not), carried on as C{RequestedAt} for the
        end-to-end latency.
    """

    payload: Mapping[str, str]
    file_name: str
    file_data: bytes | None = attrs.field(repr=lambda data: "by reference" if data is None else f"<{len(data)} bytes>")
    crits: CritsData
    retry: RetryInfo = RetryInfo()
    md5: str = ""
    sha256: str = ""
    priority: int | None = None
    requested_at: float | None = None

    @property
    def by_reference(self) -> bool:
        """
        Whether feed_cuckoo must fetch the sample from CRITs.
        """
        return self.file_data is None

    @classmethod
    def decode(cls, body: bytes) -> "AnalysisRequest":
        doc = decode_json(body)
        payload = _mapping(doc.get("payload", {}) if doc.get("payload") is not None else {}, "payload")
        if len(payload) > _MAX_OPTIONS:
            raise InvalidMessage(f"payload has {len(payload)} options, at most {_MAX_OPTIONS} are allowed")
        options = {}
        for key, value in payload.items():
            key = _string(key, "a payload option name", required=True, limit=_MAX_ID, printable=True)
            where = f"payload.{key}"
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InvalidMessage(f"{where} must be a string, got {_kind(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidMessage(f"{where} must be a finite number")
            options[key] = _string(value, where) if isinstance(value, str) else _number_text(value, where)
        file = _mapping(doc.get("file"), "file")
        name = _string(file.get("name"), "file.name", required=True, limit=_MAX_NAME)
        md5 = _digest(file.get("md5"), "file.md5", 32)
        sha256 = _digest(file.get("sha256"), "file.sha256", 64)
        data: bytes | None = None
        if file.get("data") is not None or not md5:
            encoded = _string(file.get("data"), "file.data", required=not md5, limit=None)
            if not encoded:
                raise InvalidMessage("file.data is missing or empty, and no file.md5 names a sample to fetch")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidMessage("file.data is not valid base64") from None
            if not data:
                raise InvalidMessage("file.data decodes to an empty sample")
            if md5 and hashlib.md5(data).hexdigest() != md5:
                raise InvalidMessage("file.data does not match file.md5")
            if sha256 and hashlib.sha256(data).hexdigest() != sha256:
                raise InvalidMessage("file.data does not match file.sha256")
        return cls(
            payload=options,
            file_name=safe_file_name(name),
            file_data=data,
            crits=CritsData.from_json(doc.get("crits_data"), "crits_data"),
            retry=RetryInfo.from_doc(doc),
            md5=md5,
            sha256=sha256,
            priority=_priority(doc.get("priority"), "priority"),
            # Only a measurement: an unusable time is left out, the sample
            # is not refused for it.
            requested_at=_epoch(doc.get("requested_at")),
        )

    def encode(self) -> bytes:
        file: dict[str, str] = {"name": self.file_name}
        if self.file_data is not None:
            file["data"] = base64.b64encode(self.file_data).decode("ascii")
        if self.md5:
            file["md5"] = self.md5
        if self.sha256:
            file["sha256"] = self.sha256
        doc: dict[str, Any] = {"payload": dict(self.payload), "file": file, "crits_data": self.crits.to_json()}
        if self.priority is not None:
            doc["priority"] = self.priority
        if self.requested_at is not None:
            doc["requested_at"] = self.requested_at
        return _dump(self.retry.add_to(doc))


@attrs.frozen
class TaskMessage:
    """
    A Cuckoo task on its way through check_results and parse_and_submit.

    @ivar submitted_at: epoch seconds when feed_cuckoo created the task.
    @ivar deadline: epoch seconds after which check_results gives up.
    @ivar progress: what the stage that failed on this message had already
        done (counts by step name), so that its retry does not post the
        same results to CRITs again.
    @ivar priority: the request's Cuckoo priority (1 to 3), carried as
        C{Priority} (omitted when C{None}) so later stages can publish
        with it; kept by L{for_next_stage}.
    @ivar expected_end: C{ExpectedEnd}, epoch seconds when the analysis
        should be over (submission plus the request's C{timeout}), so that
        check_results asks Cuckoo first then, not every interval from the
        start.  Set by feed_cuckoo when the request names a timeout.
    @ivar pending_since: C{PendingSince}, the latest epoch seconds at which
        check_results saw the task still pending or running in a task
        view: its analysis completed later than that, so a task list
        covering completions since then answers for it
        (L{cuckoodist.task_board}).
    @ivar last_view: C{LastView}, epoch seconds of check_results' last
        per-task view, which spaces out the views that find failed tasks.
    @ivar requested_at: C{RequestedAt}, the request's C{requested_at}.

    The last three are hints for check_results' timing only, dropped by
    L{for_next_stage}; Go workers ignore them (and their check_results,
    which re-marshals its struct, drops them, which only costs one view).
    Like every field they are decoded as hostile input.
    """

    task_id: int
    cuckoo_url: str
    crits: CritsData
    submitted_at: float | None = None
    deadline: float | None = None
    retry: RetryInfo = RetryInfo()
    progress: Mapping[str, int] = attrs.field(factory=dict, converter=lambda p: MappingProxyType(dict(p)))
    priority: int | None = None
    expected_end: float | None = None
    pending_since: float | None = None
    last_view: float | None = None
    requested_at: float | None = None

    @classmethod
    def decode(cls, body: bytes) -> "TaskMessage":
        doc = decode_json(body, MAX_TASK_MESSAGE_BYTES)
        task_id = _task_id(doc.get("TaskId"))
        if task_id is None:
            raise InvalidMessage(f"TaskId must be a positive integer below {_MAX_TASK_ID}")
        url = _string(doc.get("CuckooURL"), "CuckooURL", required=True, limit=2048)
        if not re.match(r"^https?://[^/\s]+", url):
            raise InvalidMessage("CuckooURL must be an http(s) URL")
        return cls(
            task_id=task_id,
            cuckoo_url=url.rstrip("/"),
            crits=CritsData.from_json(doc.get("CritsData"), "CritsData"),
            submitted_at=_optional_epoch(doc.get("SubmittedAt"), "SubmittedAt"),
            deadline=_optional_epoch(doc.get("Deadline"), "Deadline"),
            retry=RetryInfo.from_doc(doc),
            progress=_progress(doc.get("Progress")),
            priority=_priority(doc.get("Priority"), "Priority"),
            expected_end=_optional_epoch(doc.get("ExpectedEnd"), "ExpectedEnd"),
            pending_since=_optional_epoch(doc.get("PendingSince"), "PendingSince"),
            last_view=_optional_epoch(doc.get("LastView"), "LastView"),
            requested_at=_epoch(doc.get("RequestedAt")),
        )

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "TaskId": self.task_id,
            "CuckooURL": self.cuckoo_url,
            "CritsData": self.crits.to_json(),
        }
        if self.submitted_at is not None:
            doc["SubmittedAt"] = self.submitted_at
        if self.requested_at is not None:
            doc["RequestedAt"] = self.requested_at
        if self.deadline is not None:
            doc["Deadline"] = self.deadline
        if self.progress:
            doc["Progress"] = dict(self.progress)
        if self.priority is not None:
            doc["Priority"] = self.priority
        for key, value in (("ExpectedEnd", self.expected_end), ("PendingSince", self.pending_since), ("LastView", self.last_view)):
            if value is not None:
                doc[key] = value
        return _dump(self.retry.add_to(doc))

    def for_next_stage(self) -> "TaskMessage":
        """
        The message as the next stage receives it.  Retry counts are per
        stage: failures this stage had (and got past) do not use up the
        next stage's retries.  A poll re-published to the same stage keeps
        its count.
        """
        return attrs.evolve(self, retry=RetryInfo(), progress={}, expected_end=None, pending_since=None, last_view=None)


@attrs.frozen
class FailedMessage:
    """
    The envelope of a message a stage could not handle, for the overseer.

    @ivar queue: where to re-publish C{msg} (the delivery's routing key).
    @ivar msg: the original message body, as text.
    @ivar final: the stage knows retrying cannot help.
    @ivar attempts: how many times the message has failed, counting this
        time; C{None} when the envelope does not say (the Go workers'
        envelopes never do).
    """

    service: str
    queue: str
    error: str
    desc: str
    msg: str = attrs.field(repr=False)
    attempts: int | None = 1
    first_failure: float | None = None
    final: bool = False
    analysis_id: str = ""
    task_id: int | None = None

    @classmethod
    def decode(cls, body: bytes) -> "FailedMessage":
        doc = decode_json(body)
        # Service and Queue name where a message came from: shown in logs
        # and dump files, so Service is cut to a printable label, and Queue
        # is checked by whoever would publish to it.
        service = _loggable_id(_string(doc.get("Service"), "Service", required=True, limit=None)) or "unknown"
        queue = _string(doc.get("Queue"), "Queue", required=True, limit=_MAX_ID * 4)
        attempts = _count(doc.get("Attempts"), None)
        return cls(
            service=service,
            queue=queue,
            error=_clip(_string(doc.get("Error", ""), "Error", limit=None)),
            desc=_clip(_string(doc.get("Desc", ""), "Desc", limit=None)),
            msg=_string(doc.get("Msg", ""), "Msg", limit=None),
            attempts=attempts if attempts is None or attempts >= 1 else 1,
            first_failure=_epoch(doc.get("FirstFailure")),
            final=doc.get("Final") is True,
            analysis_id=_loggable_id(doc.get("AnalysisId")),
            task_id=_task_id(doc.get("TaskId")),
        )

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "Service": self.service,
            "Queue": self.queue,
            "Error": self.error,
            "Desc": self.desc,
            "Msg": self.msg,
            "Attempts": self.attempts if self.attempts is not None else 1,
            "Final": self.final,
            "AnalysisId": self.analysis_id,
        }
        if self.first_failure is not None:
            doc["FirstFailure"] = self.first_failure
        if self.task_id is not None:
            doc["TaskId"] = self.task_id
        return _dump(doc)


def with_retry(doc: Mapping[str, Any], retry: RetryInfo) -> bytes:
    """
    Encode the decoded message C{doc} with its C{Retry} field set; other
    fields are kept as they are, unknown ones included.
    """
    return _dump(retry.add_to(dict(doc)))


def resubmittable(message: str) -> bytes:
    """
    The bytes to publish for a dumped message, with its C{Retry} count
    cleared.

    The overseer stored the body as text (decoded from UTF-8), so the text
    encoded as UTF-8 is the body as it was received.  A message without a
    C{Retry} field is published exactly so.  Text holding a lone surrogate
    has no UTF-8 form; such a surrogate is written as the JSON escape
    C{\\udXXX} (C{backslashreplace}), which is how a JSON body must have
    carried it, so the result is valid UTF-8 and, for a JSON message, the
    same JSON.  A message whose C{Retry} is cleared is re-serialised as
    ASCII JSON (as every message here is written), which keeps any lone
    surrogate as an escape too.
    """
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and "Retry" in doc:
        del doc["Retry"]
        return _dump(doc)
    return message.encode("utf-8", "backslashreplace")


def crits_data_of(doc: Mapping[str, Any]) -> CritsData | None:
    """
    Find the CRITs context in any pipeline message, if it has a valid one:
    C{crits_data} in a request, C{CritsData} in a task message.
    """
    raw = doc.get("crits_data", doc.get("CritsData"))
    if raw is None:
        return None
    try:
        return CritsData.from_json(raw, "crits_data")
    except InvalidMessage:
        return None


@attrs.frozen
class Peek:
    """
    What can be told about a message that may not decode at all: enough to
    name it in a log line and to count its retries.

    @ivar doc: the decoded JSON object, or C{None} if the body is not one.
    @ivar analysis_id: the CRITs analysis id, cut to a loggable length;
        C{""} when the message has none that is usable.
    @ivar priority: the request's C{priority} or the task's C{Priority}
        when it is a valid one, so a retry keeps it.
    @ivar problem: why C{doc} is C{None}.
    """

    doc: Mapping[str, Any] | None = attrs.field(repr=False)
    analysis_id: str = ""
    task_id: int | None = None
    retry: RetryInfo = RetryInfo()
    priority: int | None = None
    problem: str = ""

    @property
    def crits(self) -> CritsData | None:
        """
        The message's CRITs context, if it has a valid one.
        """
        return crits_data_of(self.doc) if self.doc is not None else None


def peek(body: bytes, max_size: int | None = None) -> Peek:
    """
    Read what can be read of any pipeline message, never raising: this is
    what failure handling uses, when the message itself may be the problem.
    """
    try:
        doc = decode_json(body, max_size)
    except InvalidMessage as e:
        return Peek(doc=None, problem=e.reason)
    crits = doc.get("crits_data", doc.get("CritsData"))
    return Peek(
        doc=doc,
        analysis_id=_loggable_id(crits.get("analysis_id")) if isinstance(crits, dict) else "",
        task_id=_task_id(doc.get("TaskId")),
        retry=RetryInfo.from_doc(doc),
        priority=_valid_priority(doc.get("priority", doc.get("Priority"))),
    )


def decode_json(body: bytes, max_size: int | None = None) -> dict[str, Any]:
    """
    Parse a message body that must be a JSON object.

    C{NaN} and C{Infinity} are refused (they are not JSON, and Go's decoder
    refuses them too), and so is nesting deeper than the parser's
    recursion limit.

    @param max_size: refuse bodies longer than this many bytes.
    """
    if max_size is not None and len(body) > max_size:
        raise InvalidMessage(f"message is {len(body)} bytes, more than the {max_size} allowed for its kind")
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidMessage("message is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidMessage(f"message is not valid JSON: {_clip(str(e), 200)}") from None
    if not isinstance(doc, dict):
        raise InvalidMessage(f"message must be a JSON object, got {_kind(doc)}")
    return doc


def safe_file_name(name: str) -> str:
    """
    Reduce a sample name from a message to something safe to hand to
    Cuckoo and CRITs as a file name: no directories, no control characters,
    at most 200 characters, never empty.
    """
    base = os.path.basename(name.replace("\\", "/"))
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        base = "sample.bin"
    return base[:200]


def _dump(doc: Mapping[str, Any]) -> bytes:
    # ASCII output: a lone surrogate in a field we pass through untouched
    # stays a valid escape instead of making the message unencodable.
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidMessage(f"{where} must be an object, got {_kind(value)}")
    return value


def _string(value: object, where: str, required: bool = False, limit: int | None = _MAX_TEXT, printable: bool = False) -> str:
    """
    A string field: of the right type, within C{limit} characters, and
    encodable as UTF-8 (JSON escapes can spell lone surrogates, which
    nothing downstream could send or log).  Reasons never quote the value.

    @param printable: refuse control characters too, for values that
        appear in log lines and reasons (ids, option names), where a
        newline would forge a log line.
    """
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidMessage(f"{where} must be a string, got {_kind(value)}")
    if limit is not None and len(value) > limit:
        raise InvalidMessage(f"{where} is {len(value)} characters long, at most {limit} are allowed")
    if required and not value.strip():
        raise InvalidMessage(f"{where} is missing or empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMessage(f"{where} is not valid Unicode (it holds a lone surrogate)") from None
    if printable and not value.isprintable():
        raise InvalidMessage(f"{where} holds control characters")
    return value


def _number_text(value: int | float, where: str) -> str:
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidMessage(f"{where} is out of range")
    return str(value)


def _optional_epoch(value: object, where: str) -> float | None:
    if value is None:
        return None
    epoch = _epoch(value)
    if epoch is None:
        raise InvalidMessage(f"{where} must be a time in epoch seconds, got {_kind(value)}")
    return epoch


def _epoch(value: object) -> float | None:
    """
    Epoch seconds, or C{None} for anything that is not a plausible time:
    a 400-digit integer would overflow C{float}.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 <= value <= _MAX_EPOCH:
        return None
    return float(value)


def _count(value: object, default: int | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ATTEMPTS:
        return default
    return value


def _progress(value: object) -> dict[str, int]:
    """
    A stage's own progress record, read leniently: anything malformed
    means only that the stage starts from the beginning again.
    """
    if not isinstance(value, dict) or len(value) > 16:
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and len(k) <= 32 and _count(v, None) is not None}


#: Cuckoo's task priorities: 1 (its default) to 3.
PRIORITIES = range(1, 4)


def _valid_priority(value: object) -> int | None:
    try:
        return _priority(value, "priority")
    except InvalidMessage:
        return None


def _priority(value: object, where: str) -> int | None:
    """
    An optional Cuckoo priority: absent or null is C{None}; anything but an
    integer from 1 to 3 is refused.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        got = "an integer out of range" if type(value) is int else _kind(value)
        raise InvalidMessage(f"{where} must be an integer from 1 to 3, got {got}")
    return value


def _digest(value: object, where: str, length: int) -> str:
    """
    An optional hex digest of C{length} digits, returned in lower case.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidMessage(f"{where} must be a string, got {_kind(value)}")
    if len(value) != length or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise InvalidMessage(f"{where} must be {length} hex digits")
    return value.lower()


def _task_id(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _MAX_TASK_ID:
        return None
    return value


def _loggable_id(value: object) -> str:
    """
    An identifier fit for a log line, or C{""}: printable, encodable and
    short, whatever the message said.
    """
    if not isinstance(value, str):
        return ""
    text = "".join(c for c in value[:_MAX_ID] if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF)
    return text + ("..." if len(value) > _MAX_ID else "")


_CUT = " [cut]"


def _clip(text: str, limit: int = 2000) -> str:
    """
    Cut free text (an error from another worker) to a length a log line
    and a CRITs log entry can carry, and make it encodable.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    # The result is at most C{limit} characters long, so clipping it again
    # changes nothing: a message decoded, encoded and decoded again reads
    # the same.
    return text if len(text) <= limit else text[: limit - len(_CUT)] + _CUT


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
