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

The API facts relied on here are in C{docs/peers.md}, from
C{#crits-api-basics} on.
"""

import hashlib
import json
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

from cuckoodist.crits_encoding import encode_form, result_batches
from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.http import HTTPClient, Response
from cuckoodist.messages import CritsData
from cuckoodist.results import ResultRow

__all__ = ["CritsClient", "CRITS_MAX_BODY"]

#: Django's default DATA_UPLOAD_MAX_MEMORY_SIZE, which CRITs does not change.
CRITS_MAX_BODY = 2_621_440

_FORM = "application/x-www-form-urlencoded"


class CritsClient:
    """
    One CRITs analysis's view of the CRITs API.

    @param crits: the message's CRITs context, with credentials resolved.
    @param max_body: keep every request body under this many bytes.
    """

    def __init__(
        self,
        http: HTTPClient,
        crits: CritsData,
        verify_ssl: bool = True,
        max_body: int = 2_500_000,
    ) -> None:
        self._http = http
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
        )
        return _check(response, self._url, "services")

    def result_requests(self, rows: Sequence[ResultRow]) -> Iterator[Mapping[str, str]]:
        """
        The form bodies that add C{rows} to the analysis, in as few
        requests as the body limit allows.  Post each with
        L{post_request}, so that a retry repeats only the failed one.
        """
        return result_batches(rows, self._object_fields, self._max_body)

    async def post_request(self, fields: Mapping[str, str]) -> None:
        """
        Post one body from L{result_requests}.
        """
        await self._post_service(fields)

    async def log(self, message: str, level: str = "info") -> None:
        """
        Add a line to the analysis log shown in CRITs.
        """
        await self._post_service({**self._object_fields, "log_message": message[:4000], "log_level": level})

    async def finish(self, error: str | None = None) -> None:
        """
        Mark the analysis finished: completed, or error with C{error} as
        the log line saying why.
        """
        fields = {**self._object_fields, "finish": "1", "status": "error" if error else "completed"}
        if error:
            fields.update(log_message=error[:4000], log_level="error")
        await self._post_service(fields)

    async def upload_sample(self, file_name: str, path: str, source: str) -> tuple[str, str]:
        """
        Upload a dropped file as a Sample.  CRITs answers a known md5 with
        the existing sample's id, so a redelivered upload creates nothing
        new.

        @return: C{(sample id, md5)}.
        """
        with open(path, "rb") as fp:
            data = fp.read()
        if len(data) + 4096 > self._max_body:
            raise PermanentError(
                f"dropped file {file_name!r} ({len(data)} bytes) is over CRITs' {self._max_body}-byte request limit"
            )
        md5 = hashlib.md5(data).hexdigest()
        response = await self._http.request(
            "POST",
            f"{self._url}/api/v1/samples/",
            headers=self._headers,
            data=[
                ("upload_type", "file"),
                ("file_format", "raw"),
                ("source", source),
                ("method", "cuckoodist"),
                ("md5", md5),
            ],
            files={"filedata": (file_name, "application/octet-stream", data)},
            verify=self._verify,
            max_body=1024 * 1024,
            what=f"CRITs {self._url}",
        )
        doc = _check(response, self._url, "samples")
        sample_id = doc.get("id")
        if not isinstance(sample_id, str) or not sample_id:
            raise TransientError(f"CRITs {self._url} stored the sample but returned no id")
        return sample_id, md5

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
        )
        _check_status(response, self._url, "samples download")

    async def relate(self, sample_id: str, rel_type: str = "Related To") -> None:
        """
        Forge a relationship from a dropped sample to the analysed object.
        "Relationship already exists" is success: a redelivery asks again.
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
    if doc.get("return_code", 0) != 0:
        message = str(doc.get("message", "")).strip(", ")[:300]
        raise PermanentError(f"CRITs {what} API refused the request: {message or 'no reason given'}")
    return doc


def _error_text(response: Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("error") or doc.get("error_message") or "")[:300]
    except Exception:
        return ""
