# -*- test-case-name: tests.test_dump -*-
"""
The dead-letter store: one file per message the pipeline gave up on.

A dump file must survive a crash at any instant and must not leak what it
holds (API keys, samples), so each is written to a private temporary file,
fsynced, made mode 0600, renamed into place and the directory fsynced.  A
reader never sees half a file.  C{cuckoodist resubmit} reads them back.

A dump must be writable whatever the message said, since it is the last
place a message can go.  So the file name is ours (a time, a label reduced
to a few safe characters, a random part), never a message's text, and the
JSON is written as ASCII, so even a string no codec accepts (a lone
surrogate) is stored, as its escape.
"""

import json
import os
import re
import tempfile
import uuid
from typing import Any, Iterator

import attrs

__all__ = ["DumpRecord", "DumpStore"]

FORMAT_VERSION = 1


@attrs.frozen
class DumpRecord:
    """
    A message the pipeline gave up on, and why.

    @ivar queue: where the message was consumed from, and where
        C{resubmit} puts it back.
    @ivar message: the message body as text.
    """

    stage: str
    queue: str
    reason: str
    message: str = attrs.field(repr=False)
    attempts: int = 0
    first_failure: float | None = None
    dumped_at: float = 0.0
    analysis_id: str = ""
    task_id: int | None = None
    crits_told: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **attrs.asdict(self)}

    @classmethod
    def from_json(cls, doc: Any) -> "DumpRecord":
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError("not a cuckoodist dump file")
        fields = {f.name: doc[f.name] for f in attrs.fields(cls) if f.name in doc}
        for required in ("stage", "queue", "reason", "message"):
            if not isinstance(fields.get(required), str):
                raise ValueError(f"dump file lacks {required!r}")
        return cls(**fields)


def _label(text: str, limit: int) -> str:
    """
    A piece of a file name made from message text: only letters, digits,
    C{_} and C{-}, never empty.
    """
    return re.sub(r"[^A-Za-z0-9_-]", "", text)[:limit] or "unknown"


class DumpStore:
    """
    A directory of dump files.

    @param directory: created (0700) if missing.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def write(self, record: DumpRecord) -> str:
        """
        Store C{record} durably and atomically.

        @return: the file's path.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        name = f"{int(record.dumped_at)}-{_label(record.stage, 32)}-{_label(record.analysis_id, 64)}-{uuid.uuid4().hex[:12]}.json"
        data = json.dumps(record.to_json(), indent=1).encode("ascii")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fp:
                fp.write(data)
                fp.flush()
                os.fsync(fp.fileno())
            final = os.path.join(self.directory, name)
            os.rename(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def __iter__(self) -> Iterator[tuple[str, DumpRecord | None, str]]:
        """
        Yield C{(path, record, problem)} for every dump file, oldest first;
        C{record} is C{None} and C{problem} says why when a file is
        unreadable.
        """
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as fp:
                    yield path, DumpRecord.from_json(json.loads(fp.read(64 * 1024 * 1024 + 1))), ""
            except (OSError, ValueError, RecursionError) as e:
                yield path, None, str(e) if not isinstance(e, RecursionError) else "nested too deeply to read"
