# -*- test-case-name: tests.test_dashboard -*-
"""
The dump directories as the dashboard shows them, read as little as
possible.

Listing a dump with L{cuckoodist.dump.DumpStore} reads every file, and a
file holds a whole message (a sample travels inline, base64): far too
much for a page polled every few seconds.  A dump file never changes once
renamed into place, though.  So a L{DumpListing} lists the directory on
each poll (names only) and reads a file only the first time it is shown,
keeping the few fields the page shows, in the reactor's thread pool
(L{DumpListing.read_new}); the rest of each poll is served from that.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from twisted.internet.threads import deferToThreadPool

from cuckoodist.dump import DumpRecord

__all__ = ["DumpListing", "read_dump", "SHOWN"]

#: Dump entries the page lists (the oldest); the count covers them all.
SHOWN = 200
#: The longest dump file the dashboard reads, as the resubmit command.
_MAX_FILE = 64 * 1024 * 1024


def read_dump(path: str) -> tuple[DumpRecord | None, str]:
    """
    Read one dump file, as L{DumpStore} does for each.

    @return: C{(record, "")}, or C{(None, why)} when it cannot be read.
    """
    try:
        with open(path, "rb") as fp:
            return DumpRecord.from_json(json.loads(fp.read(_MAX_FILE + 1))), ""
    except RecursionError:
        return None, "nested too deeply to read"
    except (OSError, ValueError) as e:
        return None, str(e)


class DumpListing:
    """
    The dump files of some directories (those of this daemon's overseers).

    @param directories: the C{dump_dir} of each overseer stage.
    @param shown: how many entries L{entries} gives.
    """

    def __init__(self, directories: Sequence[str], shown: int = SHOWN) -> None:
        self.directories = tuple(dict.fromkeys(directories))
        self._shown = shown
        self._files: dict[str, str] = {}
        self._order: list[str] = []
        self._summaries: dict[str, dict[str, Any]] = {}

    def _refresh(self) -> None:
        """
        List the directories again: cheap next to reading files, and
        always current (a modification time may not change between two
        renames close together).
        """
        files: dict[str, str] = {}
        for directory in self.directories:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                if name.endswith(".json") and not name.startswith("."):
                    files.setdefault(name, os.path.join(directory, name))
        self._files = files
        self._order = sorted(files)
        if len(self._summaries) > len(files):
            self._summaries = {name: summary for name, summary in self._summaries.items() if name in files}

    async def read_new(self, reactor: Any) -> None:
        """
        List the directories and read, in the reactor's thread pool, the
        files about to be shown for the first time: a dump file holds a
        whole message, a sample inline included, and reading two hundred
        of them on the reactor's thread would stall the pipeline.
        """
        self._refresh()
        new = {name: self._files[name] for name in self._order[: self._shown] if name not in self._summaries}
        if new:
            read = await deferToThreadPool(reactor, reactor.getThreadPool(), _summaries, new)
            self._summaries.update(read)

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """
        How many dump files there are, and the oldest L{SHOWN} of them:
        C{file} (the name, which is all a resubmit request may name),
        C{analysis_id}, C{stage}, C{reason} and C{dumped_at}, as
        L{read_new} last found them; it reads no file itself.
        """
        shown = []
        for name in self._order[: self._shown]:
            summary = self._summaries.get(name)
            if summary is not None:
                shown.append(summary)
        return len(self._order), shown

    def paths(self, names: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """
        The paths of the named files, looked up in the listing, never
        joined from the request: a name that is not a dump file here
        (C{../x}, an absolute path, a file gone meanwhile) is unknown.

        @param names: file names, or C{None} for every file.
        @return: C{(paths, unknown names)}.
        """
        self._refresh()
        if names is None:
            return [self._files[name] for name in self._order], []
        paths, unknown = [], []
        for name in dict.fromkeys(names):
            path = self._files.get(name) if isinstance(name, str) else None
            if path is None:
                unknown.append(name)
            else:
                paths.append(path)
        return paths, unknown


def _summaries(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """
    What the page shows of each dump file, by name.  Runs in a worker
    thread.
    """
    return {name: _summary(name, path) for name, path in files.items()}


def _summary(name: str, path: str) -> dict[str, Any]:
    record, problem = read_dump(path)
    if record is None:
        return {"file": name, "analysis_id": "", "stage": "", "reason": f"unreadable: {problem}", "dumped_at": None}
    return {
        "file": name,
        "analysis_id": record.analysis_id,
        "stage": record.stage,
        "reason": record.reason,
        "dumped_at": record.dumped_at,
    }
