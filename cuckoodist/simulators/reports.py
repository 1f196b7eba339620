# -*- test-case-name: tests.test_report_generator -*-
"""
Write synthetic Cuckoo C{report.json} files of any size.

The simulators and the report benchmark need reports that look like what
Cuckoo 1.2, Cuckoo 2.0.x and CAPEv2 really write (see
C{docs/peers.md#cuckoo-report-format} and the report sections after it), in
sizes from a few kB to gigabytes.  L{write_report} therefore never holds the
report in memory: it encodes one small piece (a call, a process header, a
summary value) at a time and pushes the bytes out through a bounded buffer.
Everything random comes from one L{random.Random} seeded by the caller, so a
given set of arguments always produces the same bytes.

The reports deliberately carry the awkward strings real reports carry: quotes,
backslashes, non-ASCII text, the latin-1 mojibake produced by Cuckoo 2.0's
C{json.dump(encoding="latin-1")}, control characters, and a few missing,
empty or C{null} keys.  Like the real writers, the output is plain ASCII JSON
(non-ASCII characters are C{\\uXXXX} escapes).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any, BinaryIO, Sequence

__all__ = ["write_report", "FORMATS", "AWKWARD_STRINGS"]

#: The report layouts L{write_report} can produce.
FORMATS = ("2.0", "1.2", "cape")

#: Strings that have broken report parsers before; sprinkled into values.
AWKWARD_STRINGS = (
    'say "hello" to \'everyone\'',
    "C:\\Users\\guest\\AppData\\Local\\Temp\\a b\\c.exe",
    "na\u00efve caf\u00e9 \u2603 \u4e2d\u6587",
    "\u00e2\u0080\u009dICMP test\u00e2\u0080\u009d",
    "bell\x07 tab\t newline\n cr\r nul\x00 esc\x1b",
    "",
    "emoji \U0001f600 outside the BMP",
    "</script><script>alert(1)</script>",
    "\\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy1",
    "trailing backslash \\",
)

_BUFFER_SIZE = 1 << 20

_PATHS = (
    "C:\\Windows\\System32\\kernel32.dll",
    "C:\\Windows\\System32\\ntdll.dll",
    "C:\\Users\\guest\\AppData\\Roaming\\svchost.exe",
    "C:\\Users\\guest\\Documents\\invoice.docx",
    "C:\\ProgramData\\Microsoft\\Crypto\\RSA\\MachineKeys",
    "C:\\Windows\\Temp\\~DF12AB.tmp",
)
_KEYS = (
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
    "HKEY_CURRENT_USER\\Software\\Microsoft\\Internet Explorer\\Main",
    "HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\Nls\\CustomLocale",
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\"
    "GRE_Initialize\\DisableMetaFiles",
)
_MUTEXES = ("Global\\MsWinZonesCacheCounterMutexA", "Local\\ZonesLockedCacheCounterMutex",
            "DBWinMutex", "_!MSFTHISTORY!_")
_DOMAINS = ("update.example.com", "evil.example.net", "time.windows.com", "dns.msftncsi.com")
_USER_AGENTS = ("Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)",
                "Microsoft-CryptoAPI/6.1", 'curl/7.1 "quoted"')

#: (category, api, argument names) used to build calls.
_APIS = (
    ("file", "NtCreateFile", ("file_handle", "desired_access", "file_attributes",
                              "create_disposition", "share_access", "filepath", "filepath_r")),
    ("file", "NtReadFile", ("file_handle", "length", "offset", "buffer")),
    ("registry", "RegOpenKeyExW", ("base_handle", "key_handle", "regkey", "regkey_r", "access")),
    ("registry", "RegQueryValueExW", ("key_handle", "regkey", "value", "reg_type")),
    ("synchronisation", "NtCreateMutant", ("mutant_handle", "desired_access",
                                           "initial_owner", "mutant_name")),
    ("synchronisation", "GetSystemTimeAsFileTime", ()),
    ("process", "NtAllocateVirtualMemory", ("process_handle", "base_address", "region_size",
                                            "allocation_type", "protection",
                                            "process_identifier")),
    ("system", "LdrGetProcedureAddress", ("ordinal", "function_name", "module",
                                          "module_address", "function_address")),
    ("network", "InternetOpenUrlA", ("url", "headers", "flags", "internet_handle")),
    ("exception", "SetUnhandledExceptionFilter", ()),
)
_SIGNATURES = (
    ("has_pdb", "This executable has a PDB path", 1),
    ("pe_unknown_resource_name",
     "The file contains an unknown PE resource name possibly indicative of a packer", 1),
    ("network_http", "Performs some HTTP requests", 2),
    ("persistence_autorun", "Installs itself for autorun at Windows startup", 3),
    ("injection_runpe", "Executed a process and injected code into it, probably while "
                        "unpacking", 5),
    ("network_icmp", "Generates some ICMP traffic", 4),
    ("antivm_generic_disk", "Queries information on disks, possibly for anti-virtualization", 3),
)


class _Out:
    """
    A bounded write buffer: collects small strings and hands C{fp} one
    encoded block per L{_BUFFER_SIZE} characters.

    @ivar _fp: the binary file written to.
    @ivar _parts: pending strings.
    @ivar _pending: total length of C{_parts}.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._parts: list[str] = []
        self._pending = 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._pending += len(text)
        if self._pending >= _BUFFER_SIZE:
            self.flush()

    def value(self, obj: Any) -> None:
        """
        Write one JSON value, ASCII-only like Cuckoo's own writers.
        """
        self.write(json.dumps(obj))

    def flush(self) -> None:
        if self._parts:
            # ensure_ascii=True output is pure ASCII, so this never fails.
            self._fp.write("".join(self._parts).encode("ascii"))
            self._parts = []
            self._pending = 0


def _log_time(epoch: float) -> str:
    """
    Format C{epoch} like Cuckoo 1.x C{logtime()}: C{"%Y-%m-%d %H:%M:%S,mmm"}.
    """
    whole = int(epoch)
    millis = int(round((epoch - whole) * 1000)) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + ",%03d" % (millis,)


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(epoch)))


class _Generator:
    """
    The state of one report being written: format, randomness, and the
    parameters given to L{write_report}.
    """

    def __init__(self, out: _Out, fmt: str, rng: random.Random, params: dict) -> None:
        self.out = out
        self.fmt = fmt
        self.rng = rng
        self.p = params
        self.legacy = fmt != "2.0"

    # -- small random helpers -------------------------------------------

    def text(self, pool: Sequence[str], awkward: float = 0.15) -> str:
        if self.rng.random() < awkward:
            return self.rng.choice(AWKWARD_STRINGS)
        return self.rng.choice(pool)

    def arg_value(self, name: str) -> Any:
        rng = self.rng
        if name.endswith("handle") or name.endswith("address"):
            return "0x%08x" % rng.getrandbits(32)
        if name in ("filepath", "filepath_r", "module"):
            return self.text(_PATHS)
        if name in ("regkey", "regkey_r"):
            return self.text(_KEYS)
        if name == "mutant_name":
            return self.text(_MUTEXES)
        if name in ("url", "headers", "function_name", "value", "buffer"):
            return self.text(_DOMAINS + _USER_AGENTS, 0.4)
        return rng.randrange(0, 1 << 16)

    # -- sections ---------------------------------------------------------

    def info(self) -> dict:
        p, seed = self.p, self.p["seed"]
        started: float = p["started"]
        ended = started + p["duration"] + 0.437
        machine: Any = {"status": "stopped", "name": "windows7_%d" % (seed % 3 + 1),
                        "label": "win7", "manager": "VirtualBox",
                        "started_on": _date(started), "shutdown_on": _date(ended)}
        if self.fmt == "2.0":
            if seed % 4 == 3:
                machine = {}  # no guest row
            return {"added": started - 3600.25, "started": started,
                    "duration": p["duration"],
                    "ended": None if seed % 5 == 4 else ended,
                    "owner": None, "score": 2.4, "id": p["task_id"], "category": "file",
                    "git": {"head": "13cbe0d9e457be3673304533043e992ead1ea9b2",
                            "fetch_head": "13cbe0d9e457be3673304533043e992ead1ea9b2"},
                    "monitor": "apihooksadded", "package": "exe", "route": "none",
                    "custom": None, "machine": machine, "platform": "windows",
                    "version": "2.0.7", "options": "procmemdump=yes,route=none"}
        del machine["status"]
        machine["id"] = seed % 3 + 1  # 1.x guest dict: no status, an id
        if seed % 4 == 3:
            machine = "" if seed % 8 == 3 else "win7-requested"  # task's machine string
        info = {"version": "1.2" if self.fmt == "1.2" else "2.4",
                "started": _date(started), "ended": _date(ended),
                "duration": p["duration"], "id": p["task_id"], "category": "file",
                "custom": None, "machine": machine, "package": "exe"}
        if seed % 5 == 4:
            info["ended"] = "none"  # 1.x default when the end is unknown
        if self.fmt == "cape":
            info.update({"timeout": False, "tlp": None, "options": {"procdump": "1"},
                         "source_url": None, "route": "internet", "user_id": 0})
        return info

    def signatures(self) -> list:
        rng = self.rng
        chosen = [rng.choice(_SIGNATURES) for _ in range(self.p["signatures"])]
        chosen.sort(key=lambda s: s[2])
        result = []
        for index, (name, description, severity) in enumerate(chosen):
            if index == 1:
                description = AWKWARD_STRINGS[(self.p["seed"] + index) % len(AWKWARD_STRINGS)]
            if self.fmt == "2.0":
                marks: list = [{"category": "pdb_path", "ioc": self.text(_PATHS),
                                "type": "ioc", "description": None}]
                if index % 3 == 2:
                    marks = []
                elif index % 3 == 1:
                    marks.append({"type": "call", "pid": 1000 + index, "cid": index,
                                  "call": self.call_20(rng.choice(_APIS), 0.0)})
                result.append({"families": [], "description": description,
                               "severity": severity, "ttp": {}, "markcount": len(marks),
                               "references": [], "marks": marks, "name": name})
            else:
                sig = {"name": name, "description": description, "severity": severity,
                       "references": [], "data": [{"file": self.text(_PATHS)}],
                       "alert": False, "families": []}
                if self.fmt == "cape":
                    sig.update({"confidence": 50, "weight": 1, "categories": ["generic"]})
                result.append(sig)
        return result

    def target(self) -> dict:
        p = self.p
        return {"category": "file",
                "file": {"name": p["target_name"], "md5": p["target_md5"],
                         "size": p["target_size"], "type": "PE32 executable (GUI) Intel 80386",
                         "path": "/tmp/cuckoo-tmp/upload_x/" + p["target_name"],
                         "urls": [], "yara": []}}

    def network(self) -> dict:
        rng = self.rng
        ips = ["10.0.%d.%d" % (rng.randrange(256), rng.randrange(1, 255)) for _ in range(4)]
        hosts: list = list(ips)
        if self.fmt == "cape":
            hosts = [{"ip": ip, "country_name": "", "hostname": "", "inaddrarpa": "",
                      "ports": []} for ip in ips]
        domains = [{"domain": d, "ip": ips[i % len(ips)]} for i, d in enumerate(_DOMAINS)]
        domains[-1]["ip"] = ""
        http = []
        for i in range(3):
            host = _DOMAINS[i]
            path = "/gate.php?id=%d&q=%s" % (i, "a%20b" if i else "x\"y")
            entry = {"count": 1, "host": host, "port": 80 + i, "data": "GET " + path,
                     "uri": "http://%s%s" % (host, path), "body": "", "path": path,
                     "user-agent": _USER_AGENTS[i % 2], "version": "1.1", "method": "GET"}
            if self.legacy:
                del entry["count"]
            http.append(entry)
        if self.p["seed"] % 3 == 2:
            del http[1]["user-agent"]  # a request without the header
        dns = [{"type": "A", "request": d, "answers": [{"data": ips[0], "type": "A"}]}
               for d in _DOMAINS[:2]]
        udp = [{"src": "192.168.56.11", "dst": "8.8.8.8", "offset": 1358 + i,
                "time": 7.085 + i, "dport": 53, "sport": 50000 + i} for i in range(3)]
        net = {"tls": [], "udp": udp, "dns_servers": ["8.8.8.8"], "http": http,
               "icmp": [], "smtp": [], "tcp": [], "hosts": hosts, "dns": dns,
               "domains": domains, "dead_hosts": [], "irc": []}
        if self.legacy:
            for key in ("tls", "dns_servers", "dead_hosts"):
                del net[key]
        return net

    def dropped(self) -> list:
        result = []
        for index, (name, content) in enumerate(self.p["dropped"]):
            digest = hashlib.sha256(content).hexdigest()
            entry = {"name": name,
                     "path": "/cuckoo/storage/analyses/%d/files/%s/%s"
                             % (self.p["task_id"], digest[:10], name),
                     "size": len(content), "crc32": "%08X" % (index,),
                     "md5": hashlib.md5(content).hexdigest(),
                     "sha1": hashlib.sha1(content).hexdigest(), "sha256": digest,
                     "sha512": hashlib.sha512(content).hexdigest(), "ssdeep": None,
                     "type": "data", "yara": []}
            if self.fmt == "2.0":
                entry.update({"urls": [], "pids": [1000 + index],
                              "filepath": "C:\\Users\\guest\\AppData\\Local\\Temp\\" + name})
            result.append(entry)
        return result

    # -- behavior ---------------------------------------------------------

    def call_20(self, api: tuple, when: float) -> dict:
        rng = self.rng
        category, name, arg_names = api
        call: dict = {"category": category, "status": 1 if rng.random() < 0.8 else 0,
                      "stacktrace": [], "api": name,
                      "return_value": rng.choice((0, 0, 1, 0xC0000034, rng.getrandbits(32))),
                      "arguments": {a: self.arg_value(a) for a in arg_names},
                      "time": round(when, 6), "tid": 872 + rng.randrange(4), "flags": {}}
        if rng.random() < 0.1:
            call["last_error"] = 2
            call["nt_status"] = -1073741772
        return call

    def call_legacy(self, api: tuple, when: float, index: int) -> dict:
        rng = self.rng
        category, name, arg_names = api
        call: dict = {"timestamp": _log_time(when),
                      "thread_id": str(872 + rng.randrange(4)),
                      "category": "filesystem" if category == "file" else category,
                      "api": name, "status": rng.random() < 0.8,
                      "return": "0x%08x" % rng.choice((0, 1, 0xC0000034)),
                      "arguments": [{"name": a, "value": str(self.arg_value(a))}
                                    for a in arg_names],
                      "repeated": rng.choice((0, 0, 0, 1, 5)), "id": index}
        if self.fmt == "cape":
            call = {"timestamp": call.pop("timestamp"), "thread_id": call.pop("thread_id"),
                    "caller": "0x%08x" % rng.getrandbits(32),
                    "parentcaller": "0x%08x" % rng.getrandbits(32), **call,
                    "pretty_return": ""}
        return call

    def process_header(self, index: int) -> dict:
        started = self.p["started"]
        pid, ppid = 1000 + 4 * index, (1000 + 4 * (index - 1)) if index else 876
        name = "sample.exe" if index == 0 else "child_%d.exe" % index
        if index == 1:
            name = AWKWARD_STRINGS[self.p["seed"] % len(AWKWARD_STRINGS)] or "svchost.exe"
        path = "C:\\Users\\guest\\AppData\\Local\\Temp\\" + name
        if self.fmt == "2.0":
            return {"process_path": path, "track": True, "pid": pid, "process_name": name,
                    "command_line": '"%s" ' % (path,), "time": 0, "tid": 872,
                    "first_seen": started + index + 0.75625, "ppid": ppid,
                    "type": "process",
                    "modules": [{"basename": name, "imgsize": 36864,
                                 "baseaddr": "0x00400000", "filepath": path}]}
        header: dict = {"process_id": pid, "process_name": name, "parent_id": ppid,
                        "first_seen": _log_time(started + index + 0.756)}
        if self.fmt == "cape":
            header.update({"module_path": path, "threads": ["872"], "environ": {},
                           "file_activities": {"read_files": [], "write_files": [],
                                               "delete_files": []}})
        return header

    def processes(self) -> None:
        out, rng = self.out, self.rng
        out.write('"processes": [')
        for index in range(self.p["processes"]):
            if index:
                out.write(",")
            header = json.dumps(self.process_header(index))
            out.write("\n        " + header[:-1] + ', "calls": [')
            when = self.p["started"] + index
            for call_index in range(self.p["calls_per_process"]):
                api = rng.choice(_APIS)
                when += rng.random() / 50
                if self.fmt == "2.0":
                    call = self.call_20(api, when)
                else:
                    call = self.call_legacy(api, when, call_index)
                if rng.random() < 0.02:
                    del call["arguments"]  # seen in the wild for odd hooks
                out.write(("\n            " if call_index == 0 else ",\n            ")
                          + json.dumps(call))
            out.write("\n        ]}")
        out.write("\n    ]")

    def summary(self) -> dict:
        n = max(2, self.p["processes"])
        files = lambda: [self.text(_PATHS) for _ in range(n)]  # noqa: E731
        keys = lambda: [self.text(_KEYS) for _ in range(n)]  # noqa: E731
        mutexes = [self.text(_MUTEXES) for _ in range(n)]
        if self.fmt == "1.2":
            return {"files": files(), "keys": keys(), "mutexes": mutexes}
        if self.fmt == "cape":
            return {"files": files(), "read_files": files(), "write_files": files(),
                    "delete_files": [], "keys": keys(), "read_keys": keys(),
                    "write_keys": keys(), "delete_keys": keys()[:1],
                    "executed_commands": ["cmd.exe /c del sample.exe"],
                    "resolved_apis": ["kernel32.dll.GetProcAddress"],
                    "mutexes": mutexes, "created_services": [], "started_services": []}
        return {"file_opened": files(), "file_created": files(), "file_written": files(),
                "file_read": files(), "file_deleted": [], "file_exists": files(),
                "file_failed": files()[:1],
                "file_moved": [[self.text(_PATHS), self.text(_PATHS)] for _ in range(2)],
                "file_copied": [[self.text(_PATHS), AWKWARD_STRINGS[1]]],
                "directory_created": ["C:\\Users\\guest\\AppData\\Roaming\\x"],
                "directory_enumerated": files(), "dll_loaded": ["kernel32", "ntdll.dll"],
                "regkey_opened": keys(), "regkey_read": keys(), "regkey_written": keys(),
                "mutex": mutexes, "command_line": ['"C:\\sample.exe" /install'],
                "guid": ["{3F2504E0-4F89-11D3-9A0C-0305E82C3301}"],
                "resolves_host": list(_DOMAINS[:2]), "connects_ip": ["8.8.8.8"],
                "fetches_url": ["http://update.example.com/gate.php"],
                "tls_master": [["a" * 8, "b" * 8, "c" * 8]]}

    def behavior(self) -> None:
        out = self.out
        out.write('"behavior": {')
        if self.fmt == "2.0":
            generic = [{"pid": 1000 + 4 * i, "ppid": 876, "process_name": "p%d.exe" % i,
                        "process_path": "C:\\p%d.exe" % i,
                        "first_seen": self.p["started"] + i,
                        "summary": {"file_opened": [self.text(_PATHS)]}}
                       for i in range(min(self.p["processes"], 4))]
            out.write('\n    "generic": ' + json.dumps(generic) + ",\n    ")
            out.write('"apistats": ' + json.dumps(
                {str(1000 + 4 * i): {"NtCreateFile": 3} for i in range(2)}) + ",\n    ")
            self.processes()
            tree = [{"pid": 1000, "ppid": 876, "process_name": "sample.exe",
                     "command_line": "sample.exe", "first_seen": self.p["started"],
                     "children": [], "track": True}]
        else:
            self.processes()
            tree = [{"name": "sample.exe", "pid": 1000, "parent_id": 876, "children": []}]
        out.write(',\n    "processtree": ' + json.dumps(tree))
        out.write(',\n    "summary": ' + json.dumps(self.summary(), indent=8))
        if self.fmt == "1.2":
            out.write(',\n    "enhanced": [], "anomaly": []')
        out.write("\n}")

    # -- whole report -----------------------------------------------------

    def write(self) -> None:
        out = self.out
        out.write('{\n"info": ' + json.dumps(self.info(), indent=4))
        out.write(',\n"signatures": ' + json.dumps(self.signatures(), indent=4))
        out.write(',\n"target": ' + json.dumps(self.target(), indent=4))
        out.write(',\n"network": ' + json.dumps(self.network(), indent=4))
        out.write(',\n"static": {"pe_imports": [], "pdb_path": "cmdkey.pdb"}')
        out.write(",\n")
        self.behavior()
        out.write(',\n"dropped": ' + json.dumps(self.dropped(), indent=4))
        if self.fmt == "cape":
            out.write(',\n"CAPE": {"payloads": [], "configs": []}')
        out.write(',\n"debug": {"errors": [], "log": "2019-11-27 11:26:22,001 [root] '
                  'DEBUG: Starting analyzer\\r\\n"}')
        out.write(',\n"screenshots": [],\n"strings": ["This program cannot be run"]\n}\n')
        out.flush()


def write_report(fp: BinaryIO, fmt: str = "2.0", *, task_id: int, target_name: str,
                 target_md5: str, target_size: int, processes: int = 2,
                 calls_per_process: int = 20, signatures: int = 3,
                 dropped: Sequence[tuple[str, bytes]] = (), seed: int = 0,
                 started: float = 1574853981.99, duration: int = 179) -> None:
    """
    Write a complete C{report.json} to C{fp}, incrementally.

    Memory use is bounded by the write buffer plus one process header or
    summary, so C{processes * calls_per_process} decides the size on disk
    (roughly 300 to 450 bytes per call) and nothing else.

    @param fp: a binary file open for writing; it is not closed.
    @param fmt: C{"2.0"} (Cuckoo 2.0.7), C{"1.2"} (Cuckoo 1.2) or C{"cape"}
        (CAPEv2, a 1.x-like layout).
    @param task_id: the Cuckoo task id, written as C{info.id}.
    @param target_name: the submitted file's name (C{target.file.name}).
    @param target_md5: its MD5 (C{target.file.md5}).
    @param target_size: its size in bytes (C{target.file.size}).
    @param processes: how many monitored processes to write.
    @param calls_per_process: how many API calls each process gets.
    @param signatures: how many matched signatures to write.
    @param dropped: C{(name, content)} pairs described in C{dropped[]}.
    @param seed: seeds every random choice; equal arguments give equal bytes.
    @param started: analysis start, Unix epoch seconds.
    @param duration: analysis duration in seconds.
    @raise ValueError: for an unknown C{fmt}.
    """
    if fmt not in FORMATS:
        raise ValueError("unknown report format %r, expected one of %r" % (fmt, FORMATS))
    params = dict(task_id=task_id, target_name=target_name, target_md5=target_md5,
                  target_size=target_size, processes=processes,
                  calls_per_process=calls_per_process, signatures=signatures,
                  dropped=tuple(dropped), seed=seed, started=started, duration=duration)
    _Generator(_Out(fp), fmt, random.Random(seed), params).write()
