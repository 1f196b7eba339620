# -*- test-case-name: tests.test_sim_crits -*-
"""
An in-process CRITs API: the services and samples resources cuckoodist
talks to, with the quirks recorded in C{docs/peers.md#crits-api-basics} and
the CRITs sections after it.

The quirks are the point.  A client that passes against this simulator
copes with the real thing:

  - tastypie authentication: C{Authorization: ApiKey user:key} (scheme in
    any case) or C{username}/C{api_key} in the query string or a POSTed
    form, never in a PATCH body; failures are a 401 with an empty body.
  - C{CRITsAPIResource.deserialize}: the C{Content-Type} must be exactly
    C{application/x-www-form-urlencoded} (a charset suffix is a 415), or
    multipart, or a type tastypie can deserialize (JSON here).
  - Django's C{DATA_UPLOAD_MAX_MEMORY_SIZE}: any body over C{max_body}
    bytes is a 500 and nothing is stored.
  - C{result_type} is a Python literal evaluated with C{ast.literal_eval}
    (so JSON C{true} is a 500), C{result_is_batch="0"} is true, C{finish}
    ends the analysis.
  - Canned tastypie 500/404 bodies, C{return_code} 1 answers with HTTP 200.

Samples download as CRITs serves them (C{docs/peers.md#crits-samples-download}):
C{GET /api/v1/samples/?c-md5=MD5&file=1} (or the detail URL with C{file=1})
answers 200 with C{Content-Type: application/octet-stream; charset=utf-8}
and a zip made as C{create_zip} makes it, with C{zip -r -j -P PASSWORD}
(or, where C{zip} is not installed, the same ZipCrypto format written by
L{zipcrypto_archive}), one member named by the md5.  When nothing matches
the answer is still 200 with that content type, and the body is the text
C{No files found!}: C{to_file} returns tastypie's C{BadRequest} instead of
raising it, and C{create_response} wraps whatever it returns in a new
200 response, so the zip's C{Content-Disposition} header is dropped too.
Uploaded samples are kept (by md5) so that tests can fetch them, and
L{CritsSimulator.add_sample} registers one directly.

Objects are created on first touch: posting results for an analysis or a
C{Sample} id that were never registered creates them, so a demo works
without a CRITs install.  The C{zip} upload format answers 500 as CRITs
does, but the simulator does not unpack the archive.

C{GET /_sim/state} and C{POST /_sim/control} exist only here, need no
credentials, and are for tests and demos only.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from cuckoodist.simulators.server import (
    FaultInjector,
    FormError,
    RequestCounter,
    body_length,
    check_fraction,
    check_non_negative,
    header,
    parse_control,
    parse_form,
    query_args,
    read_body,
    request_path,
    send_body,
)

__all__ = ["CritsSimulator", "DEFAULT_API_KEY", "RELATIONSHIP_TYPES", "TLO_TYPES", "zipcrypto_archive"]

_log = Logger()

#: The demo key of the default C{analyst} user.  Not a secret: it only
#: opens this simulator.
DEFAULT_API_KEY = "0123456789abcdef0123456789abcdef01234567"

#: Django's C{DATA_UPLOAD_MAX_MEMORY_SIZE} default.
DEFAULT_MAX_BODY = 2621440

#: The relationship vocabulary, each type with its reverse.
RELATIONSHIP_TYPES = {
    "Related To": "Related To",
    "Dropped": "Dropped By", "Dropped By": "Dropped",
    "Created": "Created By", "Created By": "Created",
    "Downloaded": "Downloaded By", "Downloaded By": "Downloaded",
    "Contains": "Contained Within", "Contained Within": "Contains",
    "Connected To": "Connected To",
    "Installed": "Installed By", "Installed By": "Installed",
    "Executed": "Executed By", "Executed By": "Executed",
    "Loaded From": "Loaded Into", "Loaded Into": "Loaded From",
    "Sent": "Sent By", "Sent By": "Sent",
    "Uploaded To": "Uploaded From", "Uploaded From": "Uploaded To",
}

#: Top-level object types CRITs knows; any other C{object_type} is a 500.
TLO_TYPES = frozenset({
    "Actor", "Backdoor", "Campaign", "Certificate", "Domain", "Email", "Event", "Exploit",
    "Indicator", "IP", "PCAP", "RawData", "Sample", "Screenshot", "Signature", "Target",
})

_CANNED_500 = {"error_message": "Sorry, this request could not be processed. Please try again later."}

_DJANGO_404 = (b"<h1>Not Found</h1><p>The requested resource was not found on this server.</p>")


class _Answer(Exception):
    """
    Stop handling the request and send this answer.

    @ivar code: the HTTP status.
    @ivar body: a JSON-able body, or L{None} for an empty body.
    """

    def __init__(self, code: int, body: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.body = body


def _server_error() -> _Answer:
    return _Answer(500, dict(_CANNED_500))


def _bson_safe(value: Any) -> Any:
    """
    What MongoDB would store of a literal: tuples become lists, byte
    strings text; sets, complex numbers and non-text keys cannot be stored.

    @raise _Answer: a 500, as the real insert fails.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise _server_error()
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_bson_safe(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _server_error()
        return {k: _bson_safe(v) for k, v in value.items()}
    raise _server_error()


def _extra_columns(literal: Any) -> dict[str, Any]:
    """
    C{ast.literal_eval} of one C{result_type}, which must be a dict
    (C{docs/peers.md#crits-result-type}).

    @raise _Answer: a 500 for anything else (malformed literals, JSON
        C{true}/C{null}, non-strings, non-dicts).
    """
    if not isinstance(literal, str):
        raise _server_error()
    try:
        value = ast.literal_eval(literal)
    except Exception:  # ValueError, SyntaxError, RecursionError, MemoryError...
        raise _server_error()
    if not isinstance(value, dict):
        raise _server_error()
    return _bson_safe(value)


@attrs.define
class _Analysis:
    object_type: str
    object_id: str
    start_date: str
    status: str = "started"
    finish_date: str | None = None
    results: list[dict[str, Any]] = attrs.field(factory=list)
    log: list[dict[str, Any]] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "finish_date": self.finish_date,
                "start_date": self.start_date, "results": list(self.results),
                "log": list(self.log), "object_type": self.object_type,
                "object_id": self.object_id}


@attrs.define
class _Sample:
    id: str
    md5: str | None
    filename: str | None
    size: int | None
    sources: list[str] = attrs.field(factory=list)
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"md5": self.md5, "filename": self.filename,
                "source": self.sources[0] if self.sources else None,
                "sources": list(self.sources), "size": self.size, "method": self.method}


class CritsSimulator:
    """
    A faithful stand-in for the CRITs services and samples APIs.

    @ivar resource: the L{IResource} to serve at the site root.
    @ivar max_body: the largest accepted request body, in bytes.
    @ivar faults: the failure knobs (C{fail_rate}, C{slow_body_seconds}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        users: Mapping[str, str] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        fail_rate: float = 0.0,
        seed: int = 0,
        slow_body_seconds: float = 0.0,
        sources: frozenset[str] | None = None,
        zip_password: str = "infected",
    ) -> None:
        """
        @param clock: the time source for dates and slow bodies.
        @param zip_password: CRITs' C{zip7_password}, for C{file=1}
            downloads.
        @param users: user name -> API key; default one C{analyst} user
            with L{DEFAULT_API_KEY}.
        @param sources: source names users may write to; L{None} allows
            any.
        """
        self._clock = clock
        self._users = dict(users if users is not None else {"analyst": DEFAULT_API_KEY})
        self.max_body = max_body
        self.sources = sources
        self.faults = FaultInjector(fail_rate=fail_rate, slow_body_seconds=slow_body_seconds,
                                    seed=seed)
        self.requests = RequestCounter()
        #: What the requests did, beyond their route: a services POST can
        #: add results, a log line and finish at once, and an upload can
        #: relate its sample, so the route alone does not tell.
        self.actions = RequestCounter()
        self._analyses: dict[str, _Analysis] = {}
        self._samples: dict[str, _Sample] = {}
        self._objects: set[tuple[str, str]] = set()
        self._relationships: list[tuple[str, str, str, str, str]] = []
        self._next_id = 1
        self.zip_password = zip_password
        #: md5 -> the sample's bytes, or the path of a file holding them.
        self._contents: dict[str, bytes | str] = {}
        #: md5 -> the exact body a C{file=1} download answers (tests).
        self._downloads: dict[str, bytes] = {}
        self._zips: dict[tuple[str, str], str] = {}
        self._zip_dir: str | None = None
        self.resource: IResource = _CritsResource(self)

    def __repr__(self) -> str:
        # Never show keys.
        return (f"<CritsSimulator users={sorted(self._users)} analyses={len(self._analyses)} "
                f"samples={len(self._samples)}>")

    # -- helpers ------------------------------------------------------------

    def now_text(self) -> str:
        """
        C{str(datetime.now())}, as CRITs stores dates, from the clock.
        """
        moment = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        return str(moment.replace(tzinfo=None))

    def check_key(self, username: str | None, api_key: str | None) -> bool:
        """
        @return: whether this user exists and the key is one of theirs.
        """
        if not username or not api_key:
            return False
        expected = self._users.get(username)
        if expected is None:
            return False
        return hmac.compare_digest(api_key.encode("utf-8"), expected.encode("utf-8"))

    def _new_id(self) -> str:
        number = self._next_id
        self._next_id += 1
        return "%08x%016x" % (int(self._clock.seconds()) & 0xFFFFFFFF, number)

    def object_exists(self, object_type: str, object_id: str) -> bool:
        if object_type == "Sample":
            return object_id in self._samples
        return (object_type, object_id) in self._objects

    def touch_object(self, object_type: str, object_id: str) -> None:
        """
        Create the object on first touch (the simulator's leniency).
        """
        if object_type == "Sample":
            if object_id not in self._samples:
                self._samples[object_id] = _Sample(id=object_id, md5=None, filename=None,
                                                   size=None)
        else:
            self._objects.add((object_type, object_id))

    def analysis(self, analysis_id: str, object_type: str, object_id: str) -> _Analysis:
        found = self._analyses.get(analysis_id)
        if found is None:
            found = self._analyses[analysis_id] = _Analysis(
                object_type=object_type, object_id=object_id, start_date=self.now_text())
        return found

    def relate(self, left_type: str, left_id: str, right_type: str, right_id: str,
               rel_type: str) -> bool:
        """
        Write a relationship on both sides.

        @return: L{False} when both sides already existed.
        """
        forward = (left_type, left_id, right_type, right_id, rel_type)
        reverse = (right_type, right_id, left_type, left_id, RELATIONSHIP_TYPES[rel_type])
        existed = True
        for side in (forward, reverse):
            if side not in self._relationships:
                self._relationships.append(side)
                existed = False
        return not existed

    # -- control and inspection ---------------------------------------------

    def control_settings(self) -> dict[str, Callable[[Any], Callable[[], None]]]:
        """
        The knobs C{POST /_sim/control} accepts: C{fail_rate},
        C{slow_body_seconds}, C{max_body}.
        """

        def fail_rate(value: Any) -> Callable[[], None]:
            checked = check_fraction("fail_rate", value)
            return lambda: setattr(self.faults, "fail_rate", checked)

        def slow(value: Any) -> Callable[[], None]:
            checked = check_non_negative("slow_body_seconds", value)
            return lambda: setattr(self.faults, "slow_body_seconds", checked)

        def max_body(value: Any) -> Callable[[], None]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("max_body must be an integer >= 0")
            return lambda: setattr(self, "max_body", value)

        return {"fail_rate": fail_rate, "slow_body_seconds": slow, "max_body": max_body}

    def state(self) -> dict[str, Any]:
        """
        C{/_sim/state}: analyses, samples, relationships, request counts per
        route and per action (C{results}, C{log}, C{log only}, C{finish},
        C{upload}, C{upload related}, C{forge_relationship}).
        """
        return {
            "analyses": {k: a.to_dict() for k, a in self._analyses.items()},
            "samples": {k: s.to_dict() for k, s in self._samples.items()},
            "relationships": [
                {"left_type": lt, "left_id": li, "right_type": rt, "right_id": ri, "rel_type": r}
                for lt, li, rt, ri, r in self._relationships],
            "requests": dict(self.requests.counts),
            "actions": dict(self.actions.counts),
            "settings": {"fail_rate": self.faults.fail_rate,
                         "slow_body_seconds": self.faults.slow_body_seconds,
                         "max_body": self.max_body},
        }

    # -- services -----------------------------------------------------------

    def post_service(self, d: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /api/v1/services/}, as C{ServiceResource.obj_create}
        (C{docs/peers.md#crits-services}).
        """
        object_type = d.get("object_type")
        object_id = d.get("object_id")
        analysis_id = d.get("analysis_id")
        result = d.get("result")
        result_type = d.get("result_type")
        result_subtype = d.get("result_subtype")
        result_is_batch = d.get("result_is_batch", False)
        log_message = d.get("log_message")
        log_level = d.get("log_level", "info")
        status = d.get("status")
        finish = d.get("finish", False)

        def refuse(message: str) -> dict[str, Any]:
            return {"return_code": 1, "type": object_type, "message": message}

        if not object_type or not object_id or not analysis_id:
            return refuse("Need an object type, object id, and analysis id.")
        if not isinstance(object_type, str) or object_type not in TLO_TYPES:
            raise _server_error()  # class_from_type() is None
        object_type, object_id, analysis_id = str(object_type), str(object_id), str(analysis_id)
        rows: list[dict[str, Any]] = []
        if result:
            if not result_type or not result_subtype:
                return refuse("When adding a result, also need type and subtype")
            if result_is_batch:
                try:
                    results = json.loads(result)
                    types = json.loads(result_type)
                    subtypes = json.loads(result_subtype)
                except (TypeError, ValueError):
                    raise _server_error()
                if not all(isinstance(v, list) for v in (results, types, subtypes)):
                    raise _server_error()
                if not len(results) == len(types) == len(subtypes):
                    return refuse("When adding results in batch result, result_type, and "
                                  "result_subtype must have the same length!")
            else:
                results, types, subtypes = [result], [result_type], [result_subtype]
            for value, literal, subtype in zip(results, types, subtypes):
                row = {"subtype": _bson_safe(subtype), "result": _bson_safe(value)}
                row.update(_extra_columns(literal))
                rows.append(row)
        self.touch_object(object_type, object_id)
        analysis = self.analysis(analysis_id, object_type, object_id)
        analysis.results.extend(rows)
        if result:
            self.actions.hit("results")
        if log_message:
            self.actions.hit("log")
            if not result and not finish:
                self.actions.hit("log only")
        if finish:
            self.actions.hit("finish")
        if log_message:
            analysis.log.append({"message": _bson_safe(log_message),
                                 "level": _bson_safe(log_level),
                                 "datetime": self.now_text()})
        if finish:
            analysis.status = "error" if status == "error" else "completed"
            analysis.finish_date = self.now_text()
        return {"return_code": 0, "type": object_type, "message": "", "id": object_id,
                "url": f"/api/v1/{object_type.lower()}s/{object_id}/"}

    # -- samples ------------------------------------------------------------

    def add_sample(self, data: bytes | None = None, *, path: str | None = None,
                   filename: str = "sample.bin", source: str = "sim") -> str:
        """
        Store a sample, as an upload would: its bytes, or a file holding
        them (read only when a download asks, in blocks).

        @return: its md5.
        """
        if path is not None:
            digest = hashlib.md5()
            with open(path, "rb") as fp:
                for block in iter(lambda: fp.read(1 << 20), b""):
                    digest.update(block)
            md5, size, content = digest.hexdigest(), os.path.getsize(path), path
        else:
            assert data is not None
            md5, size, content = hashlib.md5(data).hexdigest(), len(data), data
        self._contents[md5] = content
        if self.find_by_md5(md5) is None:
            sample = _Sample(id=self._new_id(), md5=md5, filename=filename, size=size,
                             sources=[source], method="File Upload - sim")
            self._samples[sample.id] = sample
        return md5

    def set_download(self, md5: str, body: bytes) -> None:
        """
        Make C{file=1} for C{md5} answer exactly C{body} (a hostile
        archive, for tests), as if a sample with that md5 existed.
        """
        self._downloads[md5] = body

    def uploaded(self, md5: str) -> bytes | None:
        """
        The bytes of a sample stored under C{md5}, for tests.
        """
        content = self._contents.get(md5)
        if isinstance(content, str):
            with open(content, "rb") as fp:
                return fp.read()
        return content

    def download_path(self, md5s: list[str]) -> str | bytes | None:
        """
        What C{file=1} answers for the matching samples: the path of their
        zip (built once, cached), exact bytes set with L{set_download}, or
        L{None} for C{No files found!}.
        """
        for md5 in md5s:
            if md5 in self._downloads:
                return self._downloads[md5]
        present = [m for m in md5s if m in self._contents]
        if not present:
            return None
        key = (",".join(present), self.zip_password)
        if key not in self._zips:
            if self._zip_dir is None:
                self._zip_dir = tempfile.mkdtemp(prefix="cuckoodist-sim-crits-")
            out = os.path.join(self._zip_dir, f"{len(self._zips)}.zip")
            members = []
            for md5 in present:
                content = self._contents[md5]
                members.append((md5, content))
            make_zip(out, members, self.zip_password)
            self._zips[key] = out
        return self._zips[key]

    def close(self) -> None:
        """
        Remove the cached archives.
        """
        if self._zip_dir is not None:
            shutil.rmtree(self._zip_dir, ignore_errors=True)
            self._zip_dir = None
            self._zips.clear()

    def find_by_md5(self, md5: str) -> _Sample | None:
        for sample in self._samples.values():
            if sample.md5 == md5:
                return sample
        return None

    def post_sample(self, d: Mapping[str, Any], files: Mapping[str, list[tuple[str, bytes]]],
                    multipart: bool) -> dict[str, Any]:
        """
        C{POST /api/v1/samples/}, as C{SampleResource.obj_create} and
        C{handle_uploaded_file} (C{docs/peers.md#crits-samples-upload}).
        """

        def refuse(message: str, sample_id: str | None = None) -> dict[str, Any]:
            answer = {"return_code": 1, "type": "Sample", "message": message}
            if sample_id is not None:
                answer.update(id=sample_id, url=f"/api/v1/samples/{sample_id}/")
            return answer

        if "filedata" in d and not multipart:
            raise _Answer(400, {"error": "Filedata only supported in multipart forms."})
        if multipart and "filedata" in d:
            raise _Answer(400, {"error": "Expected filehandle, got string."})
        upload_type = d.get("upload_type")
        if not upload_type:
            return refuse("Must provide an upload type.")
        if upload_type not in ("metadata", "file"):
            return refuse("Not a valid upload type.")
        related_id, related_type = d.get("related_id"), d.get("related_type")
        related_md5 = d.get("related_md5")
        if bool(related_id) != bool(related_type):
            return refuse("Must specify related_type and related_id")
        if upload_type == "file":
            uploads = files.get("filedata")
            if not uploads:
                return refuse("Upload type of 'file' but no file uploaded.")
            filename, content = uploads[0]
            md5 = hashlib.md5(content).hexdigest()
            size: int | None = len(content)
            self._contents.setdefault(md5, content)
        else:
            filename, md5, size = d.get("filename"), d.get("md5"), None
            if not filename or not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
                return refuse("Need a filename and a valid md5 for a metadata upload.")
            md5 = md5.lower()
        source = d.get("source")
        if not source:
            return refuse("Missing source information.")
        if not isinstance(source, str):
            raise _server_error()
        if self.sources is not None and source not in self.sources:
            return refuse(f"User does not have permission to add object using source {source}.")
        if d.get("file_format") == "zip":
            # crits/crits: unzip_file() returns md5 strings and api.py calls
            # .get() on one -- an AttributeError, i.e. tastypie's 500.
            raise _server_error()
        sample = self.find_by_md5(md5)
        link = f'<a href="/samples/details/{md5}/">{md5}.</a>'
        if sample is None:
            sample = _Sample(id=self._new_id(), md5=md5, filename=str(filename), size=size,
                             method="File Upload - " + str(d.get("method", "") or ""))
            self._samples[sample.id] = sample
            message = "Success: Added new sample " + link
        else:
            message = "Success: Updated sample " + link
        if source not in sample.sources:
            sample.sources.append(str(source))
        success = True
        related: tuple[str, str] | None = None
        self.actions.hit("upload related" if related_md5 or related_id else "upload")
        if related_md5:
            found = self.find_by_md5(str(related_md5))
            if found is None:
                message += f" Related {related_md5} not found. Sample not uploaded."
                success = False
            else:
                related = ("Sample", found.id)
        elif related_id:
            related_id = str(related_id)
            if (isinstance(related_type, str) and related_type in TLO_TYPES
                    and self.object_exists(related_type, related_id)):
                related = (related_type, related_id)
            else:
                message += f" Related {related_id} not found. Sample not uploaded."
                success = False
        if related is not None and related != ("Sample", sample.id):
            # handle_file: "Contained Within" an Email, "Related To" the rest.
            kind = "Contained Within" if related[0] == "Email" else "Related To"
            self.relate("Sample", sample.id, related[0], related[1], kind)
        return {"return_code": 0 if success else 1, "type": "Sample", "message": message,
                "id": sample.id, "url": f"/api/v1/samples/{sample.id}/"}

    def patch_sample(self, sample_id: str, d: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{PATCH /api/v1/samples/<id>/}: only C{forge_relationship}
        (C{docs/peers.md#crits-relationships}).
        """
        if sample_id not in self._samples:
            raise _Answer(404, dict(_CANNED_500))
        action = d.get("action")

        def answer(code: int, message: str) -> dict[str, Any]:
            return {"return_code": code, "type": "Sample", "message": message, "id": sample_id}

        if action != "forge_relationship":
            return answer(1, f"'{action}' is not a valid action.")
        right_type, right_id = d.get("right_type"), d.get("right_id")
        rel_type = d.get("rel_type")
        if (not isinstance(right_type, str) or right_type not in TLO_TYPES or not right_id
                or not self.object_exists(right_type, str(right_id))):
            return answer(1, "Failed to get right TLO")
        right_id = str(right_id)
        if (right_type, right_id) == ("Sample", sample_id):
            return answer(1, "Cannot forge relationship to oneself")
        if not isinstance(rel_type, str) or rel_type not in RELATIONSHIP_TYPES:
            return answer(1, "Could not find relationship type")
        self.actions.hit("forge_relationship")
        if not self.relate("Sample", sample_id, right_type, right_id, rel_type):
            return answer(1, "Relationship already exists")
        return answer(0, "success!")

    def sample_document(self, sample: _Sample) -> dict[str, Any]:
        return {"_id": sample.id, "md5": sample.md5, "filename": sample.filename,
                "size": sample.size,
                "source": [{"name": s, "instances": [{"method": sample.method}]}
                           for s in sample.sources],
                "relationships": [
                    {"type": rt, "value": ri, "relationship": r}
                    for lt, li, rt, ri, r in self._relationships
                    if (lt, li) == ("Sample", sample.id)]}

    def list_samples(self, args: Mapping[str, list[str]]) -> dict[str, Any]:
        """
        C{GET /api/v1/samples/}, with the exact C{c-md5=} filter only
        (C{docs/peers.md#crits-samples-download}).
        """
        found = list(self._samples.values())
        md5 = args.get("c-md5", [None])[0]
        if md5:
            found = [s for s in found if s.md5 == md5.lower()]
        return {"meta": {"limit": 20, "next": None, "offset": 0, "previous": None,
                         "total_count": len(found)},
                "objects": [self.sample_document(s) for s in found[:20]]}


_FORM = "application/x-www-form-urlencoded"


class _CritsResource(Resource):
    """
    The HTTP face of a L{CritsSimulator}: URL dispatch (Django), then
    authentication and deserialization (tastypie, CRITs).
    """

    isLeaf = True

    _routes = [
        (re.compile(r"/api/v1/services/"), ("POST",), "services"),
        (re.compile(r"/api/v1/samples/"), ("GET", "POST"), "samples"),
        (re.compile(r"/api/v1/samples/([^/]+)/"), ("GET", "PATCH"), "samples/detail"),
    ]

    def __init__(self, sim: CritsSimulator) -> None:
        super().__init__()
        self._sim = sim

    def _json(self, request: Request, body: Any, code: int = 200,
              slow: bool = True) -> bytes | int:
        request.setResponseCode(code)
        if body is None:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return b""
        request.setHeader(b"content-type", b"application/json")
        data = json.dumps(body).encode("utf-8")
        if not slow:
            return data
        return send_body(request, self._sim._clock, data, self._sim.faults.slow_body_seconds)

    def _file(self, request: Request, answer: str | bytes | None) -> bytes | int:
        """
        C{CRITsSerializer.to_file} wrapped by C{create_response}: 200 and
        C{application/octet-stream; charset=utf-8} whatever happened.
        """
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/octet-stream; charset=utf-8")
        if answer is None:
            return b"No files found!"
        if isinstance(answer, bytes):
            return answer
        fp = open(answer, "rb")
        request.setHeader(b"content-length", str(os.path.getsize(answer)).encode())

        def done(_: object) -> None:
            fp.close()
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()

        FileSender().beginFileTransfer(fp, request).addBoth(done)
        return NOT_DONE_YET

    def render(self, request: Request) -> bytes | int:
        sim = self._sim
        request.setHeader(b"server", b"Apache")
        path = request_path(request)
        method = request.method.decode("ascii", "replace").upper()
        if path == "/_sim/state" and method == "GET":
            return self._json(request, sim.state(), slow=False)
        if path == "/_sim/control" and method == "POST":
            code, problem = parse_control(request, sim.control_settings())
            return self._json(request, problem or sim.state()["settings"], code, slow=False)
        for pattern, methods, name in self._routes:
            match = pattern.fullmatch(path)
            if match:
                break
            if pattern.fullmatch(path + "/"):
                # Django's APPEND_SLASH: a redirect (which loses a POST body).
                sim.requests.hit("redirect")
                request.setResponseCode(301)
                query = request.uri.split(b"?", 1)
                target = path.encode("latin-1") + b"/" + (b"?" + query[1] if len(query) > 1 else b"")
                request.setHeader(b"location", target)
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return b""
        else:
            sim.requests.hit("unknown")
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/html")
            return _DJANGO_404
        sim.requests.hit(f"{name} {method}")
        if method not in methods:
            request.setHeader(b"allow", ", ".join(methods).encode())
            return self._json(request, None, 405)
        try:
            self._authenticate(request, method)
            if sim.faults.should_fail():
                raise _server_error()
            if body_length(request) > sim.max_body:
                raise _server_error()  # RequestDataTooBig
            if name == "services":
                data, _ = self._deserialize(request, method)
                return self._json(request, sim.post_service(data))
            if name == "samples" and method == "POST":
                data, files = self._deserialize(request, method)
                media = (header(request, b"content-type") or "").lower()
                return self._json(request, sim.post_sample(data, files,
                                                           media.startswith("multipart")))
            args = query_args(request)
            wants_file = bool(args.get("file", [""])[-1].strip())
            if name == "samples":
                if wants_file:
                    md5 = (args.get("c-md5", [""])[-1] or "").strip().lower()
                    found = [s.md5 for s in sim._samples.values() if s.md5 and (not md5 or s.md5 == md5)]
                    if md5 and md5 in sim._downloads:
                        found = [md5]
                    return self._file(request, sim.download_path(found[:20]))
                return self._json(request, sim.list_samples(args))
            sample_id = match.group(1)
            if method == "GET":
                sample = sim._samples.get(sample_id)
                if sample is None:
                    raise _Answer(404, dict(_CANNED_500))
                if wants_file:
                    return self._file(request, sim.download_path([sample.md5] if sample.md5 else []))
                return self._json(request, sim.sample_document(sample))
            if sample_id not in sim._samples:
                raise _Answer(404, dict(_CANNED_500))
            data, _ = self._deserialize(request, method)
            return self._json(request, sim.patch_sample(sample_id, data))
        except _Answer as answer:
            return self._json(request, answer.body, answer.code)
        except Exception:
            # tastypie's wrap_view: any other exception is the canned 500.
            _log.failure("CRITs simulator failed on {path}", path=path)
            return self._json(request, dict(_CANNED_500), 500)

    def _post_form(self, request: Request, method: str) -> Mapping[str, Any]:
        """
        Django's C{request.POST}: only filled for a POST of a form.
        """
        media = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if method != "POST" or media not in (_FORM, "multipart/form-data"):
            return {}
        if body_length(request) > self._sim.max_body:
            raise _server_error()  # RequestDataTooBig while reading request.POST
        try:
            return _last_values(parse_form(request).fields)
        except FormError:
            return {}

    def _authenticate(self, request: Request, method: str) -> None:
        """
        tastypie's C{ApiKeyAuthentication}: the header first; without a
        valid C{ApiKey} header, C{GET} then C{POST} parameters
        (C{docs/peers.md#crits-authentication}).

        @raise _Answer: 401 with an empty body.
        """
        authorization = header(request, b"authorization") or ""
        scheme, space, data = authorization.partition(" ")
        if space and scheme.lower() == "apikey":
            username, colon, api_key = data.partition(":")
            if not colon:
                raise _Answer(401)
        else:
            query = _last_values(query_args(request))
            username = query.get("username")
            api_key = query.get("api_key")
            if not username or not api_key:
                form = self._post_form(request, method)
                username = username or form.get("username")
                api_key = api_key or form.get("api_key")
        if not self._sim.check_key(username, api_key):
            raise _Answer(401)

    def _deserialize(self, request: Request,
                     method: str) -> tuple[Mapping[str, Any], Mapping[str, list[tuple[str, bytes]]]]:
        """
        C{CRITsAPIResource.deserialize}: an exact form type, multipart, or
        what tastypie can read (JSON); see C{docs/peers.md#crits-request-bodies}.

        @return: the data (last value per field, as a Django QueryDict
            gives) and uploaded files.
        @raise _Answer: 415 for an unsupported type, 400 for bad JSON, 500
            for a broken form.
        """
        raw_type = header(request, b"content-type")
        if raw_type is None:
            raw_type = "application/json"
        if raw_type == _FORM or raw_type.lower().startswith("multipart"):
            try:
                form = parse_form(request, max_file_size=self._sim.max_body,
                                  max_field_size=self._sim.max_body)
            except FormError:
                raise _server_error()
            return _last_values(form.fields), form.files
        media = raw_type.split(";")[0].strip()
        if media != "application/json":
            raise _Answer(415, {"error": f"The format indicated '{media}' had no available "
                                         "deserialization method."})
        body = read_body(request, self._sim.max_body) or b""
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise _Answer(400, {"error": "Request is not valid JSON."})
        if not isinstance(data, dict):
            raise _server_error()
        return data, {}


def _last_values(fields: Mapping[str, list[str]]) -> dict[str, str]:
    """
    A Django QueryDict's C{get}: the last value of each field.
    """
    return {k: v[-1] for k, v in fields.items() if v}


def make_zip(out: str, members: list[tuple[str, bytes | str]], password: str) -> None:
    """
    Write the zip CRITs' C{create_zip} makes: C{zip -r -j -P PASSWORD} over
    a directory holding one file per member (bytes, or a path to copy).
    Without C{zip} installed, L{zipcrypto_archive} writes the same format.
    """
    zip_command = shutil.which("zip")
    if zip_command is None:
        loaded = []
        for name, content in members:
            if isinstance(content, str):
                with open(content, "rb") as fp:
                    content = fp.read()
            loaded.append((name, content))
        with open(out, "wb") as fp:
            fp.write(zipcrypto_archive(loaded, password))
        return
    work = tempfile.mkdtemp(prefix="cuckoodist-sim-zip-")
    try:
        for name, content in members:
            target = os.path.join(work, name)
            if isinstance(content, str):
                os.symlink(os.path.abspath(content), target)
            else:
                with open(target, "wb") as fp:
                    fp.write(content)
        # zip adds ".zip" to a name without an extension.
        subprocess.run([zip_command, "-q", "-r", "-j", "-P", password, out + ".zip", work],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.replace(out + ".zip", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


def _zipcrypto_encrypt(data: bytes, password: bytes) -> bytes:
    """
    PKWARE's traditional encryption (APPNOTE 6.1), in pure Python: fine
    for test samples, far too slow for large ones.
    """
    k0, k1, k2 = 0x12345678, 0x23456789, 0x34567890

    def update(c: int) -> None:
        nonlocal k0, k1, k2
        k0 = (k0 >> 8) ^ _CRC[(k0 ^ c) & 0xFF]
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = (k2 >> 8) ^ _CRC[(k2 ^ (k1 >> 24)) & 0xFF]

    for c in password:
        update(c)
    out = bytearray(len(data))
    for i, c in enumerate(data):
        t = (k2 | 2) & 0xFFFF
        out[i] = c ^ (((t * (t ^ 1)) >> 8) & 0xFF)
        update(c)
    return bytes(out)


def zipcrypto_archive(members: list[tuple[str, bytes]], password: str | None,
                      *, method: int = 8, declared_sizes: dict[str, int] | None = None) -> bytes:
    """
    A zip as C{zip -P} writes it: each member deflated (or stored, with
    C{method=0}) and encrypted with ZipCrypto, the check byte taken from
    the CRC.  C{password=None} writes unencrypted members; C{method} other
    than 0 and 8 (99 for WinZip AES) only labels the member, for tests of
    refusals; C{declared_sizes} makes a header lie about a member's size.
    """
    when = time.localtime(946684800)
    dos_time = (when.tm_hour << 11) | (when.tm_min << 5) | (when.tm_sec // 2)
    dos_date = ((when.tm_year - 1980) << 9) | (when.tm_mon << 5) | when.tm_mday
    body = bytearray()
    directory = bytearray()
    for name, data in members:
        raw_name = name.encode("utf-8")
        crc = zlib.crc32(data) & 0xFFFFFFFF
        if method == 8:
            squeezer = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = squeezer.compress(data) + squeezer.flush()
        else:
            packed = data
        flags = 0
        if password is not None:
            flags = 1
            header = secrets.token_bytes(11) + bytes([crc >> 24])
            packed = _zipcrypto_encrypt(header + packed, password.encode("utf-8"))
        size = (declared_sizes or {}).get(name, len(data))
        offset = len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, dos_time, dos_date,
                            crc, len(packed), size, len(raw_name), 0) + raw_name + packed
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, flags, method, dos_time,
                                 dos_date, crc, len(packed), size, len(raw_name), 0, 0, 0, 0,
                                 0o100644 << 16, offset) + raw_name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(directory), len(body), 0)
    return bytes(body + directory + end)
