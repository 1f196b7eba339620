# -*- test-case-name: tests.test_report_bounds -*-
"""
Benchmark report extraction on hostile reports: time and peak RSS.

Usage::

    .venv/bin/python benchmarks/report_hostile.py [--string-mb 600] [--depth 200000] [--huge-mb 300]

Inputs, each written to a temporary file and parsed by C{extract_results}
(all parsers) in a fresh child process:

  - deep: a report whose signature marks, C{info} and C{static} each hold
    C{--depth} nested arrays (the 400 KB report that once grew to 23.8 GB);
  - deep objects: the same with C{{"k":...}} objects;
  - string: a report whose signature description is one C{--string-mb} MB
    string (once 1.37 GB and over 4 minutes);
  - fallback: the deep report with trailing garbage, so the text walk
    declines it and the event walk's guard has to refuse it;
  - many marks, many paths, many processes, many hosts: a signature's marks,
    a summary list, the process list or the network hosts made of
    C{--huge-mb} MB of small values (the row budget's cases).

Peak RSS is the child's C{VmHWM} from C{/proc/self/status}: C{ru_maxrss}
survives C{exec} on Linux, so it would show the parent's peak instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cuckoodist.errors import PermanentError  # noqa: E402
from cuckoodist.report import PARSERS, ExtractOptions, extract_results  # noqa: E402

HOLE = "@HOLE@"
_MB = 1024 * 1024


def _skeleton(holes: tuple[str, ...]) -> tuple[bytes, ...]:
    """
    A small 2.0 report, split at each of C{holes}.
    """
    doc = {
        "info": {"id": 1, "version": "2.0.7", "options": HOLE if "info" in holes else ""},
        "static": HOLE if "static" in holes else {},
        "signatures": [{"name": "s", "severity": 1,
                        "description": HOLE if "description" in holes else "d",
                        "marks": HOLE if "marks" in holes else []}],
        "behavior": {"processes": HOLE if "processes" in holes else [
            {"pid": 1, "process_name": "p.exe", "calls": [
                {"api": "A", "arguments": {}, "time": 1574853982.5}]}],
            "summary": {"file_opened": HOLE if "summary" in holes else ["f"]}},
        "network": {"hosts": HOLE if "hosts" in holes else ["1.2.3.4"]},
    }
    return tuple(json.dumps(doc).encode().split(json.dumps(HOLE).encode()))


def _deep(depth: int, kind: str) -> Iterator[bytes]:
    if kind == "arrays":
        yield b"[" * depth + b"]" * depth
    else:
        yield b'{"k":' * depth + b"1" + b"}" * depth


def _long_string(megabytes: int) -> Iterator[bytes]:
    yield b'"'
    for _ in range(megabytes):
        yield b"A" * _MB
    yield b'"'


#: One small value of each huge list (C{%d}: its index), by hole.
_ITEMS = {
    "marks": b'{"type":"call","pid":1,"cid":2,"call":{"api":"NtClose"}}',
    "summary": b'"C:\\\\Windows\\\\System32\\\\x%d.dll"',
    "processes": b'{"pid":%d,"ppid":1,"process_name":"p.exe","first_seen":1574853981.5,'
                 b'"calls":[]}',
    "hosts": b'"10.%d.0.1"',
}
_HUGE = {"many marks": "marks", "many paths": "summary", "many processes": "processes",
         "many hosts": "hosts"}


def _huge_list(hole: str, megabytes: int) -> Iterator[bytes]:
    """
    A JSON list of small values, about C{megabytes} MB long.
    """
    item = _ITEMS[hole]
    count = megabytes * _MB // (len(item) + 1)
    yield b"["
    for start in range(0, count, 100_000):
        chunk = b",".join(item % index if b"%d" in item else item
                          for index in range(start, min(count, start + 100_000)))
        yield b"," + chunk if start else chunk
    yield b"]"


def _write(fp: BinaryIO, pieces: tuple[bytes, ...], fill: "callable", tail: bytes = b"") -> None:
    for index, piece in enumerate(pieces):
        fp.write(piece)
        if index < len(pieces) - 1:
            for chunk in fill():
                fp.write(chunk)
    fp.write(tail)


def write_input(name: str, path: Path, depth: int, string_mb: int, huge_mb: int) -> None:
    with path.open("wb") as fp:
        if name in _HUGE:
            hole = _HUGE[name]
            _write(fp, _skeleton((hole,)), lambda: _huge_list(hole, huge_mb))
        elif name in ("deep arrays", "deep objects"):
            kind = name.split()[1]
            _write(fp, _skeleton(("marks", "info", "static")), lambda: _deep(depth, kind))
        elif name == "string":
            _write(fp, _skeleton(("description",)), lambda: _long_string(string_mb))
        else:  # fallback
            _write(fp, _skeleton(("marks", "info", "static")), lambda: _deep(depth, "arrays"),
                   tail=b" x")


def child(path: str) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    try:
        with open(path, "rb") as fp:
            extraction = extract_results(fp, ExtractOptions(PARSERS))
        outcome = "rows %d, truncated %d, skipped %d, dropped %d" % (
            len(extraction.rows), extraction.values_truncated, extraction.values_skipped,
            extraction.rows_dropped)
    except PermanentError as e:
        outcome = "refused: " + e.reason[:60]
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu,
            "rss": int(hwm.split()[1]) / 1024, "outcome": outcome}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=200_000)
    parser.add_argument("--string-mb", type=int, default=600)
    parser.add_argument("--huge-mb", type=int, default=300)
    parser.add_argument("--only", help="comma-separated input names")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    print("| input | MB | s (cpu) | MB/s | peak RSS MB | outcome |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="report-hostile-") as directory:
        names = ("deep arrays", "deep objects", "fallback", "string", *_HUGE)
        for name in args.only.split(",") if args.only else names:
            path = Path(directory) / "report.json"
            write_input(name, path, args.depth, args.string_mb, args.huge_mb)
            size = path.stat().st_size / 1e6
            output = subprocess.run([sys.executable, __file__, "--child", str(path)],
                                    check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            print("| %s | %.1f | %.2f (%.2f) | %.0f | %.0f | %s |"
                  % (name, size, result["seconds"], result["cpu"], size / result["seconds"],
                     result["rss"], result["outcome"]), flush=True)
            path.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
