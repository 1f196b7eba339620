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
  - C{"Attempts"}, C{"FirstFailure"}, C{"Final"}, C{"AnalysisId"},
    C{"TaskId"} on failed messages.

Everything here is pure: bytes in, value objects out, and back.  Decoding
raises L{InvalidMessage} with a reason that names the offending field.
"""

import base64
import binascii
import json
import os
import re
from typing import Any, Mapping

import attrs

from cuckoodist.errors import InvalidMessage

__all__ = [
    "CritsData",
    "RetryInfo",
    "AnalysisRequest",
    "TaskMessage",
    "FailedMessage",
    "decode_json",
    "crits_data_of",
]


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
            fields[name] = _string(doc.get(name), f"{where}.{name}", required=True)
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
        attempts = raw.get("attempts", 0)
        first = raw.get("first_failure")
        return cls(
            attempts=attempts if isinstance(attempts, int) and attempts >= 0 else 0,
            first_failure=float(first) if isinstance(first, (int, float)) else None,
        )


@attrs.frozen
class AnalysisRequest:
    """
    A sample to analyse, as published by the CRITs-side service.

    @ivar payload: Cuckoo submission options (package, timeout, options...).
    """

    payload: Mapping[str, str]
    file_name: str
    file_data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    crits: CritsData
    retry: RetryInfo = RetryInfo()

    @classmethod
    def decode(cls, body: bytes) -> "AnalysisRequest":
        doc = decode_json(body)
        payload = _mapping(doc.get("payload", {}) if doc.get("payload") is not None else {}, "payload")
        options = {}
        for key, value in payload.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise InvalidMessage(f"payload.{key} must be a string, got {_kind(value)}")
            options[key] = str(value)
        file = _mapping(doc.get("file"), "file")
        name = _string(file.get("name"), "file.name", required=True)
        encoded = _string(file.get("data"), "file.data", required=True)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMessage("file.data is not valid base64") from None
        if not data:
            raise InvalidMessage("file.data decodes to an empty sample")
        return cls(
            payload=options,
            file_name=safe_file_name(name),
            file_data=data,
            crits=CritsData.from_json(doc.get("crits_data"), "crits_data"),
            retry=RetryInfo.from_doc(doc),
        )

    def encode(self) -> bytes:
        return _dump(
            {
                "payload": dict(self.payload),
                "file": {"name": self.file_name, "data": base64.b64encode(self.file_data).decode("ascii")},
                "crits_data": self.crits.to_json(),
            }
        )


@attrs.frozen
class TaskMessage:
    """
    A Cuckoo task on its way through check_results and parse_and_submit.

    @ivar submitted_at: epoch seconds when feed_cuckoo created the task.
    @ivar deadline: epoch seconds after which check_results gives up.
    """

    task_id: int
    cuckoo_url: str
    crits: CritsData
    submitted_at: float | None = None
    deadline: float | None = None
    retry: RetryInfo = RetryInfo()

    @classmethod
    def decode(cls, body: bytes) -> "TaskMessage":
        doc = decode_json(body)
        task_id = doc.get("TaskId")
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id <= 0:
            raise InvalidMessage("TaskId must be a positive integer")
        url = _string(doc.get("CuckooURL"), "CuckooURL", required=True)
        if not re.match(r"^https?://[^/\s]+", url):
            raise InvalidMessage("CuckooURL must be an http(s) URL")
        return cls(
            task_id=task_id,
            cuckoo_url=url.rstrip("/"),
            crits=CritsData.from_json(doc.get("CritsData"), "CritsData"),
            submitted_at=_optional_number(doc.get("SubmittedAt"), "SubmittedAt"),
            deadline=_optional_number(doc.get("Deadline"), "Deadline"),
            retry=RetryInfo.from_doc(doc),
        )

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "TaskId": self.task_id,
            "CuckooURL": self.cuckoo_url,
            "CritsData": self.crits.to_json(),
        }
        if self.submitted_at is not None:
            doc["SubmittedAt"] = self.submitted_at
        if self.deadline is not None:
            doc["Deadline"] = self.deadline
        return _dump(doc)


@attrs.frozen
class FailedMessage:
    """
    The envelope of a message a stage could not handle, for the overseer.

    @ivar queue: where to re-publish C{msg} (the delivery's routing key).
    @ivar msg: the original message body, as text.
    @ivar final: the stage knows retrying cannot help.
    """

    service: str
    queue: str
    error: str
    desc: str
    msg: str
    attempts: int = 1
    first_failure: float | None = None
    final: bool = False
    analysis_id: str = ""
    task_id: int | None = None

    @classmethod
    def decode(cls, body: bytes) -> "FailedMessage":
        doc = decode_json(body)
        service = _string(doc.get("Service"), "Service", required=True)
        queue = _string(doc.get("Queue"), "Queue", required=True)
        attempts = doc.get("Attempts", 1)
        task_id = doc.get("TaskId")
        return cls(
            service=service,
            queue=queue,
            error=_string(doc.get("Error", ""), "Error"),
            desc=_string(doc.get("Desc", ""), "Desc"),
            msg=_string(doc.get("Msg", ""), "Msg"),
            attempts=attempts if isinstance(attempts, int) and attempts >= 1 else 1,
            first_failure=_optional_number(doc.get("FirstFailure"), "FirstFailure"),
            final=doc.get("Final") is True,
            analysis_id=doc.get("AnalysisId") if isinstance(doc.get("AnalysisId"), str) else "",
            task_id=task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None,
        )

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "Service": self.service,
            "Queue": self.queue,
            "Error": self.error,
            "Desc": self.desc,
            "Msg": self.msg,
            "Attempts": self.attempts,
            "Final": self.final,
            "AnalysisId": self.analysis_id,
        }
        if self.first_failure is not None:
            doc["FirstFailure"] = self.first_failure
        if self.task_id is not None:
            doc["TaskId"] = self.task_id
        return _dump(doc)


def with_retry(body: bytes, retry: RetryInfo) -> bytes:
    """
    Return C{body} with its C{Retry} field set; other fields are kept as
    they are, unknown ones included.

    @raise InvalidMessage: if C{body} is not a JSON object.
    """
    doc = decode_json(body)
    doc["Retry"] = {"attempts": retry.attempts, "first_failure": retry.first_failure}
    return _dump(doc)


def crits_data_of(body: bytes) -> CritsData | None:
    """
    Find the CRITs context in any pipeline message, if it has a valid one.
    """
    try:
        doc = decode_json(body)
        raw = doc.get("crits_data", doc.get("CritsData"))
        return CritsData.from_json(raw, "crits_data") if raw is not None else None
    except InvalidMessage:
        return None


def decode_json(body: bytes) -> dict[str, Any]:
    """
    Parse a message body that must be a JSON object.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidMessage(f"message is not valid JSON: {e}") from None
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
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidMessage(f"{where} must be an object, got {_kind(value)}")
    return value


def _string(value: object, where: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidMessage(f"{where} must be a string, got {_kind(value)}")
    if required and not value.strip():
        raise InvalidMessage(f"{where} is missing or empty")
    return value


def _optional_number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(f"{where} must be a number, got {_kind(value)}")
    return float(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)
