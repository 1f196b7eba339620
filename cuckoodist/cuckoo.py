# -*- test-case-name: tests.test_stage_feed_cuckoo,tests.test_stage_check_results,tests.test_sim_cuckoo,tests.test_cuckoo_limit,tests.test_task_board -*-
"""
The Cuckoo REST API, as used by the pipeline (Cuckoo 1.2 and 2.0.x).

Each method maps status codes to our failure vocabulary, because only the
API knows what they mean: a 404 on a report means "not written yet" and is
worth waiting for, a 404 on a delete means "already gone" and is success,
a 401 means the token is wrong and no retry will fix it.  The bearer token
is sent only to the instance it was configured for and never logged.

The API facts relied on here are in C{docs/peers.md}, from
C{#cuckoo-common} on.
"""

import os
import re
from typing import Any, BinaryIO, Mapping

from twisted.internet.defer import DeferredSemaphore

from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.http import HTTPClient, Peer, Response

__all__ = ["CuckooClient", "SUBMIT_FIELDS", "FINISHED", "FAILED", "OutputMissing", "TaskNotFound"]

#: Form fields /tasks/create/file understands; other payload keys are ignored.
SUBMIT_FIELDS = frozenset(
    {
        "package", "timeout", "priority", "options", "machine", "platform", "tags",
        "custom", "owner", "memory", "enforce_timeout", "clock", "unique",
    }
)

#: Task states after which there is a report to fetch.
FINISHED = frozenset({"reported"})

#: Task states that will never produce a report.
FAILED = frozenset({"failed_analysis", "failed_processing", "failed_reporting", "recovered"})


class TaskNotFound(PermanentError):
    """
    Cuckoo has no such task: it was never there, or it was deleted.
    """


class OutputMissing(TransientError):
    """
    Cuckoo has no report or dropped archive for the task: not written yet,
    or the task is gone, which Cuckoo answers alike (a 404 for a report, a
    500 for the archive of a task without an analysis folder).  Only a task
    view tells them apart.
    """


class CuckooClient:
    """
    One Cuckoo instance.

    @param url: base URL without a trailing slash.
    @param token: Cuckoo 2.0.7's C{api_token}; empty for no auth.
    @param limiter: shared by every client of the same node in a daemon
        (see L{cuckoodist.stages.base.StageContext.cuckoo_limiter}), it caps
        the requests in flight to the node, whichever stage makes them;
        C{None} for no cap.  A request holds it from before it is sent
        until its body is read (or streamed to its sink), so a slow report
        download counts for as long as it takes.
    @param peer: counts and times every request (L{Peer}); its C{node} is
        the Cuckoo's configured name.  C{None} for neither.
    @ivar name: the configured name of this Cuckoo, for metric labels;
        the URL when no L{Peer} names it.
    """

    def __init__(
        self,
        http: HTTPClient,
        url: str,
        token: str = "",
        verify_ssl: bool = True,
        limiter: DeferredSemaphore | None = None,
        peer: Peer | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = peer.node if peer is not None else self.url
        self._peer = peer
        self._http = http
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify_ssl
        self._limiter = limiter

    def __repr__(self) -> str:
        return f"<CuckooClient {self.url}>"

    async def _call(self, method: str, path: str, passthrough: frozenset[int] = frozenset(), **kwargs: Any) -> Response:
        if self._limiter is None:
            response = await self._send(method, path, kwargs)
        else:
            # A caller cancelled while it waits leaves here, before the
            # try, with CancelledError: the semaphore's canceller withdrew
            # the wait, and nothing it did not take is released.
            await self._limiter.acquire()
            try:
                response = await self._send(method, path, kwargs)
            finally:
                self._limiter.release()
        if response.code == 401:
            raise PermanentError(f"Cuckoo {self.url} refused our API token (401)")
        if response.code >= 500 and response.code not in passthrough:
            raise TransientError(f"Cuckoo {self.url} answered {response.code} on {path}{_message(response)}")
        return response

    async def _send(self, method: str, path: str, kwargs: Mapping[str, Any]) -> Response:
        return await self._http.request(
            method,
            self.url + path,
            headers=self._headers,
            verify=self._verify,
            what=f"Cuckoo {self.url}",
            peer=self._peer,
            **kwargs,
        )

    async def status(self) -> Mapping[str, Any]:
        """
        GET /cuckoo/status: version, task counts and (2.0, or a patched
        1.2) free disk space.
        """
        response = await self._call("GET", "/cuckoo/status", max_body=1024 * 1024)
        return response.json_object(f"Cuckoo {self.url}", "for /cuckoo/status")

    async def submit(
        self,
        file_name: str,
        sample: "bytes | str | os.PathLike[str] | BinaryIO",
        options: Mapping[str, str],
        priority: int | None = None,
    ) -> int:
        """
        POST /tasks/create/file with the sample and its options.

        @param sample: the sample's bytes, the path of a file holding it,
            or a binary file object (read from its start).  A file is
            streamed, never read whole into memory; each call reads it
            afresh, so a caller may repeat the call.
        @param priority: Cuckoo's C{priority} field, overriding any in
            C{options}; C{None} leaves it to C{options} or Cuckoo's default.
        @return: the new task id.
        @raise PermanentError: Cuckoo refused the submission (4xx) or did
            not create a task.
        """
        chosen = dict(options)
        if priority is not None:
            chosen["priority"] = str(priority)
        fields = [(key, value) for key, value in sorted(chosen.items()) if key in SUBMIT_FIELDS]
        if isinstance(sample, (bytes, bytearray)):
            return await self._create(file_name, bytes(sample), fields)
        if isinstance(sample, (str, os.PathLike)):
            with open(sample, "rb") as fp:
                return await self._create(file_name, fp, fields)
        sample.seek(0)
        return await self._create(file_name, sample, fields)

    @staticmethod
    def timeout_of(options: Mapping[str, str]) -> int | None:
        """
        The analysis timeout, in seconds, that the submit options ask
        Cuckoo for, or C{None} when they leave it to Cuckoo's configured
        default (no C{timeout}, empty or 0, as
        C{docs/peers.md#cuckoo-task-create} says) or name none it would
        take (Cuckoo's database refuses a non-number).  At most nine digits
        are read, so a hostile value never becomes a huge number.
        """
        text = options.get("timeout")
        if not isinstance(text, str) or not re.fullmatch(r"\s*\+?[0-9]{1,9}\s*", text):
            return None
        seconds = int(text)
        return seconds if seconds > 0 else None

    async def _create(self, file_name: str, content: "bytes | BinaryIO", fields: list[tuple[str, str]]) -> int:
        response = await self._call(
            "POST",
            "/tasks/create/file",
            data=fields,
            files={"file": (file_name, "application/octet-stream", content)},
            max_body=1024 * 1024,
        )
        if response.code != 200:
            raise PermanentError(f"Cuckoo {self.url} refused the sample ({response.code}){_message(response)}")
        doc = response.json_object(f"Cuckoo {self.url}", "for /tasks/create/file")
        task_id = doc.get("task_id")
        if isinstance(task_id, list) and task_id:
            task_id = task_id[0]
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id <= 0:
            # Cuckoo answers 200 {"task_id": null} when its database failed.
            raise TransientError(f"Cuckoo {self.url} created no task (task_id={task_id!r})")
        return task_id

    async def view(self, task_id: int) -> Mapping[str, Any]:
        """
        GET /tasks/view/<id>: the task, with its C{status} and C{errors}.

        @raise TaskNotFound: the task does not exist (404).
        """
        response = await self._call("GET", f"/tasks/view/{task_id}", max_body=4 * 1024 * 1024)
        if response.code == 404:
            raise TaskNotFound(f"Cuckoo {self.url} has no task {task_id}")
        if response.code != 200:
            raise TransientError(f"Cuckoo {self.url} answered {response.code} for task {task_id}")
        task = response.json_object(f"Cuckoo {self.url}", "for /tasks/view").get("task")
        if not isinstance(task, dict):
            raise TransientError(f"Cuckoo {self.url} sent a task view without a task")
        return task

    async def reported_since(self, completed_after: int) -> frozenset[int]:
        """
        GET /tasks/list?status=reported&completed_after=T: the ids of the
        reported tasks whose analysis completed after T
        (C{docs/peers.md#cuckoo-task-list}).  One such request answers for
        every task of the node that L{cuckoodist.task_board.TaskBoard}
        tracks, where a view per task would cost one request each.

        Cuckoo turns T into a local time (C{datetime.fromtimestamp}) and
        compares it with C{completed_on}, also local, so unix seconds from
        our clock work up to the clock skew between the two hosts; the
        caller leaves a margin for it.

        @param completed_after: unix seconds (Cuckoo's route wants an
            integer; anything else is a 500).
        @raise TransientError: a non-200 answer or a body that is not the
            documented C{{"tasks": [...]}}.
        """
        response = await self._call(
            "GET",
            "/tasks/list",
            params={"status": "reported", "completed_after": str(int(completed_after))},
            max_body=64 * 1024 * 1024,
        )
        if response.code != 200:
            raise TransientError(f"Cuckoo {self.url} answered {response.code} for /tasks/list")
        tasks = response.json_object(f"Cuckoo {self.url}", "for /tasks/list").get("tasks")
        if not isinstance(tasks, list):
            raise TransientError(f"Cuckoo {self.url} sent a task list without a list of tasks")
        ids = set()
        for entry in tasks:
            # The filter is Cuckoo's; checking the status again costs
            # nothing and keeps a server that ignored it from passing
            # unfinished tasks on.
            if isinstance(entry, dict) and entry.get("status") in FINISHED:
                task_id = entry.get("id")
                if isinstance(task_id, int) and not isinstance(task_id, bool) and task_id > 0:
                    ids.add(task_id)
        return frozenset(ids)

    async def download_report(self, task_id: int, sink: BinaryIO, max_size: int) -> None:
        """
        Stream report.json into C{sink}, refusing more than C{max_size}
        bytes.

        @raise OutputMissing: 404, the report is not written yet, or the
            task is gone.
        """
        await self._download(f"/tasks/report/{task_id}/json", sink, max_size, "report", frozenset({404}))

    async def download_dropped(self, task_id: int, sink: BinaryIO, max_size: int) -> None:
        """
        Stream the dropped-files archive (tar.bz2 by default) into C{sink}.

        @raise OutputMissing: 404, or the 500 of a task without an analysis
            folder (or of any other server failure).
        """
        await self._download(f"/tasks/report/{task_id}/dropped", sink, max_size, "dropped files", frozenset({404, 500}))

    async def _download(self, path: str, sink: BinaryIO, max_size: int, what: str, missing: frozenset[int]) -> None:
        response = await self._call("GET", path, passthrough=missing, sink=sink, max_body=max_size)
        if response.code in missing:
            raise OutputMissing(f"Cuckoo {self.url} has no {what} for {path} yet ({response.code})")
        if response.code != 200:
            raise PermanentError(f"Cuckoo {self.url} answered {response.code} for {path}")

    async def delete(self, task_id: int) -> None:
        """
        GET /tasks/delete/<id>.  A task that is already gone counts as
        deleted.
        """
        response = await self._call("GET", f"/tasks/delete/{task_id}", max_body=1024 * 1024)
        if response.code not in (200, 404):
            raise PermanentError(f"Cuckoo {self.url} refused to delete task {task_id} ({response.code})")


def _message(response: Response) -> str:
    """
    Cuckoo 2.0's C{{"message": ...}} error text, if any, as a suffix.
    """
    try:
        message = response.json().get("message")
    except Exception:
        return ""
    return f": {str(message)[:200]}" if message else ""
