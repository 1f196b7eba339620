# -*- test-case-name: tests.test_stage_parse_and_submit,tests.test_sim_crits -*-
"""
The CRITs API, as used to fetch samples and deliver results: the services
API for results, logs and finishing an analysis, and the samples API for
samples requested by reference and for dropped files.

CRITs answers most failures with HTTP 200 and C{return_code: 1}; a bad API
key with an empty 401; a body over Django's 2.5 MB limit with a 500.  This
module turns those into our failure vocabulary and keeps the API key in
the C{Authorization: ApiKey} header only (never in a URL, a form or a log).
Form posts use exactly C{application/x-www-form-urlencoded}, without a
charset, because CRITs compares the content type for equality.

Requests are few on purpose (issue #12): a step's notes for the analysis
log ride on its last results request (CRITs adds the results, then the log
line, in one request), and a dropped file is related to the analysed
object by its upload (C{related_id}, C{related_type}), not by a second
request.

The API facts relied on here are in C{docs/peers.md}, from
C{#crits-api-basics} on.
"""

import hashlib
import json
import re
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import attrs

from cuckoodist.crits_encoding import encode_form, result_batches
from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.http import HTTPClient, Peer, Response
from cuckoodist.messages import CritsData
from cuckoodist.results import ResultRow

__all__ = ["CritsClient", "CRITS_MAX_BODY", "LOG_LEVELS", "MAX_LOG_MESSAGE", "Note", "Upload", "log_fields"]

#: Django's default DATA_UPLOAD_MAX_MEMORY_SIZE, which CRITs does not change.
CRITS_MAX_BODY = 2_621_440

#: CRITs' log levels, least severe first (it does not check them).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: Characters of one note, and of one folded log message: enough for a
#: few hundred notes, and far below any body limit even URL-encoded.
MAX_NOTE = 4000
MAX_LOG_MESSAGE = 20000

_FORM = "application/x-www-form-urlencoded"

#: CRITs' words when an upload's related object is missing; the sample is
#: saved all the same (C{docs/peers.md#crits-samples-upload}).
_RELATED_MISSING = re.compile(r"Related \S+ not found")

#: Object types that CRITs does not relate "Related To" in an upload: an
#: Email gets "Contained Within", so for one the relationship is forged
#: apart, as before.
_RELATED_OTHERWISE = frozenset({"Email"})


@attrs.frozen
class Note:
    """
    A line for the CRITs analysis log.
    """

    message: str
    level: str = "info"


def log_fields(notes: Iterable[Note]) -> dict[str, str]:
    """
    The C{log_message} and C{log_level} fields that carry C{notes} as one
    log line: the notes in order, one per line, at the most severe of their
    levels; nothing for no notes.  The message stays under
    L{MAX_LOG_MESSAGE} characters, and says how many notes it left out.
    """
    notes = list(notes)
    if not notes:
        return {}
    rank = {level: n for n, level in enumerate(LOG_LEVELS)}
    level = max((note.level for note in notes), key=lambda lv: rank.get(lv, rank["info"]))
    lines: list[str] = []
    used = 0
    for index, note in enumerate(notes):
        line = note.message[:MAX_NOTE]
        # Keep room for the marker line.
        if used + len(line) > MAX_LOG_MESSAGE - 40:
            lines.append(f"... and {len(notes) - index} more note(s)")
            break
        lines.append(line)
        used += len(line) + 1
    return {"log_message": "\n".join(lines), "log_level": level}


@attrs.frozen
class Upload:
    """
    What an upload of a dropped file did.

    @ivar sample_id: the sample's id, if CRITs said it.
    @ivar md5: the file's md5.
    @ivar related: whether the upload related the sample to the analysed
        object; if not, L{not_related} says why, or the caller must relate
        it (an object type CRITs would relate otherwise).
    @ivar not_related: CRITs' reason when it stored the sample but could
        not relate it (the analysed object is missing); C{None} otherwise.
    """

    sample_id: str | None
    md5: str
    related: bool
    not_related: str | None = None


class CritsClient:
    """
    One CRITs analysis's view of the CRITs API.

    @param crits: the message's CRITs context, with credentials resolved.
    @param max_body: keep every request body under this many bytes.
    @param peer: counts and times every request (L{Peer}); C{None} for
        neither.
    """

    def __init__(
        self,
        http: HTTPClient,
        crits: CritsData,
        verify_ssl: bool = True,
        max_body: int = 2_500_000,
        peer: Peer | None = None,
    ) -> None:
        self._http = http
        self._peer = peer
        self._crits = crits
        self._url = crits.crits_url.rstrip("/")
        self._verify = verify_ssl
        self._max_body = min(max_body, CRITS_MAX_BODY)
        self._headers = {"Authorization": f"ApiKey {crits.username}:{crits.api_key}"}

    def __repr__(self) -> str:
        return f"<CritsClient {self._url} analysis={self._crits.analysis_id}>"

    @property
    def _object_fields(self) -> dict[str, str]:
        return {
            "object_type": self._crits.object_type,
            "object_id": self._crits.object_id,
            "analysis_id": self._crits.analysis_id,
        }

    async def _post_service(self, fields: Mapping[str, str]) -> Mapping[str, Any]:
        body = encode_form(fields)
        response = await self._http.request(
            "POST",
            f"{self._url}/api/v1/services/",
            headers={**self._headers, "Content-Type": _FORM},
            data=body,
            verify=self._verify,
            max_body=1024 * 1024,
            what=f"CRITs {self._url}",
            peer=self._peer,
        )
        return _check(response, self._url, "services")

    def result_requests(self, rows: Sequence[ResultRow], notes: Sequence[Note] = ()) -> Iterator[Mapping[str, str]]:
        """
        The form bodies that add C{rows} to the analysis, and C{notes} to
        its log, in as few requests as the body limit allows.  Post each
        with L{post_request}, so that a retry repeats only the failed one.

        The notes, folded into one line (L{log_fields}), ride on the last
        results request; only when there are no rows, or that request
        would reach the body limit with them, do they get a request of
        their own, after the results.  The requests depend only on the
        rows and notes, so a retry of the same step gets the same ones.
        """
        log = log_fields(notes)
        batches = result_batches(rows, self._object_fields, self._max_body)
        return self._with_log(batches, log) if log else batches

    def _with_log(self, batches: Iterator[dict[str, str]], log: Mapping[str, str]) -> Iterator[Mapping[str, str]]:
        last: dict[str, str] | None = None
        for fields in batches:
            if last is not None:
                yield last
            last = fields
        if last is not None:
            carrying = {**last, **log}
            if len(encode_form(carrying)) < self._max_body:
                yield carrying
                return
            yield last
        yield {**self._object_fields, **log}

    async def post_request(self, fields: Mapping[str, str]) -> None:
        """
        Post one body from L{result_requests}.
        """
        await self._post_service(fields)

    async def log(self, message: str, level: str = "info") -> None:
        """
        Add a line to the analysis log shown in CRITs, in a request of its
        own.  A stage's notes go with its results instead
        (L{result_requests}).
        """
        await self._post_service({**self._object_fields, "log_message": message[:MAX_NOTE], "log_level": level})

    async def finish(self, error: str | None = None) -> None:
        """
        Mark the analysis finished: completed, or error with C{error} as
        the log line saying why.
        """
        fields = {**self._object_fields, "finish": "1", "status": "error" if error else "completed"}
        if error:
            fields.update(log_message=error[:MAX_NOTE], log_level="error")
        await self._post_service(fields)

    async def upload_sample(self, file_name: str, path: str, source: str) -> Upload:
        """
        Upload a dropped file as a Sample, related "Related To" the
        analysed object in the same request (C{related_id},
        C{related_type}).  CRITs answers a known md5 with the existing
        sample's id and keeps an existing relationship, so a redelivered
        upload creates nothing new.

        When the analysed object is missing, CRITs refuses the relation
        (C{return_code} 1) but saves the sample: that is no failure here,
        the L{Upload} says so (a second request could not relate it
        either).  For an object CRITs would relate otherwise (an Email:
        "Contained Within"), the upload relates nothing and the caller
        forges the relationship with L{relate}.
        """
        with open(path, "rb") as fp:
            data = fp.read()
        if len(data) + 4096 > self._max_body:
            raise PermanentError(
                f"dropped file {file_name!r} ({len(data)} bytes) is over CRITs' {self._max_body}-byte request limit"
            )
        md5 = hashlib.md5(data).hexdigest()
        fields = [
            ("upload_type", "file"),
            ("file_format", "raw"),
            ("source", source),
            ("method", "cuckoodist"),
            ("md5", md5),
        ]
        relating = self._crits.object_type not in _RELATED_OTHERWISE
        if relating:
            fields += [("related_id", self._crits.object_id), ("related_type", self._crits.object_type)]
        response = await self._http.request(
            "POST",
            f"{self._url}/api/v1/samples/",
            headers=self._headers,
            data=fields,
            files={"filedata": (file_name, "application/octet-stream", data)},
            verify=self._verify,
            max_body=1024 * 1024,
            what=f"CRITs {self._url}",
            peer=self._peer,
        )
        _check_status(response, self._url, "samples API")
        doc = response.json_object(f"CRITs {self._url}", "from the samples API")
        sample_id = doc.get("id")
        if not isinstance(sample_id, str) or not sample_id:
            sample_id = None
        message = str(doc.get("message", ""))
        if relating and doc.get("return_code", 0) != 0 and _RELATED_MISSING.search(message):
            reason = f"CRITs has no {self._crits.object_type} {self._crits.object_id} to relate it to"
            return Upload(sample_id, md5, related=False, not_related=reason)
        _check_answer(doc, "samples")
        if sample_id is None:
            raise TransientError(f"CRITs {self._url} stored the sample but returned no id")
        return Upload(sample_id, md5, related=relating)

    async def download_sample(self, md5: str, sink: BinaryIO, max_size: int) -> None:
        """
        Stream CRITs' zip of the sample with this md5 into C{sink}: C{GET
        /api/v1/samples/?c-md5=MD5&file=1} (C{docs/peers.md#crits-samples-download}).

        CRITs answers 200 either way: the archive, or the text C{No files
        found!} when no sample matches; telling them apart, and opening the
        archive, is L{cuckoodist.sample_zip}'s work.

        @param max_size: refuse a body larger than this many bytes
            (L{cuckoodist.http.BodyTooLarge}).
        @raise TransientError: a 5xx, or CRITs unreachable.
        @raise PermanentError: credentials refused, or any other status.
        """
        response = await self._http.request(
            "GET",
            f"{self._url}/api/v1/samples/",
            headers=self._headers,
            params=[("c-md5", md5), ("file", "1")],
            verify=self._verify,
            max_body=max_size,
            sink=sink,
            what=f"CRITs {self._url}",
            peer=self._peer,
        )
        _check_status(response, self._url, "samples download")

    async def relate(self, sample_id: str, rel_type: str = "Related To") -> None:
        """
        Forge a relationship from a dropped sample to the analysed object,
        for the objects an upload does not relate "Related To" (an Email;
        see L{upload_sample}).  "Relationship already exists" is success: a
        redelivery asks again.
        """
        body = json.dumps(
            {
                "action": "forge_relationship",
                "right_type": self._crits.object_type,
                "right_id": self._crits.object_id,
                "rel_type": rel_type,
                "rel_confidence": "high",
            }
        ).encode("utf-8")
        response = await self._http.request(
            "PATCH",
            f"{self._url}/api/v1/samples/{sample_id}/",
            headers={**self._headers, "Content-Type": "application/json"},
            data=body,
            verify=self._verify,
            max_body=1024 * 1024,
            what=f"CRITs {self._url}",
            peer=self._peer,
        )
        try:
            _check(response, self._url, "relationship")
        except PermanentError as e:
            if "already exists" not in e.reason:
                raise


def _check_status(response: Response, url: str, what: str) -> None:
    """
    What a status code means for any CRITs API call: 401 is bad
    credentials, 413 and 5xx may pass (a busy web server, a body over
    Django's limit), anything but 200 is a refusal.
    """
    if response.code == 401:
        raise PermanentError(f"CRITs {url} refused the API credentials (401)")
    if response.code == 413 or response.code >= 500:
        raise TransientError(f"CRITs {url} answered {response.code} on the {what}")
    if response.code != 200:
        raise PermanentError(f"CRITs {url} answered {response.code} on the {what}: {_error_text(response)}")


def _check(response: Response, url: str, what: str) -> Mapping[str, Any]:
    _check_status(response, url, f"{what} API")
    doc = response.json_object(f"CRITs {url}", f"from the {what} API")
    _check_answer(doc, what)
    return doc


def _check_answer(doc: Mapping[str, Any], what: str) -> None:
    """
    CRITs says a refusal with HTTP 200 and C{return_code} 1.
    """
    if doc.get("return_code", 0) != 0:
        message = str(doc.get("message", "")).strip(", ")[:300]
        raise PermanentError(f"CRITs {what} API refused the request: {message or 'no reason given'}")


def _error_text(response: Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("error") or doc.get("error_message") or "")[:300]
    except Exception:
        return ""
