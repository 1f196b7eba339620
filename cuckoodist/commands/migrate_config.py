# -*- test-case-name: tests.test_migrate_config -*-
"""
C{cuckoodist migrate-config GO_JSON...}: one cuckoodist.yaml from the Go
workers' JSON configurations.

The Go fleet has one JSON file per worker process (C{feed_cuckoo.conf.json}
and so on), each repeating the broker URL and logging keys.  A cuckoodist
daemon runs any mix of stages from one YAML file, whose keys are the Go
keys in snake_case.  So the files merge into one shared C{amqp}, logging
and C{cuckoo} section and one C{stages} entry per worker, in the order
given (which keeps chains readable).

Not everything carries over, and what does not must not vanish silently:
the output says so in a comment where it matters, e.g. two workers with
different brokers or log files (one daemon has one of each), a Go key with
no cuckoodist equivalent, a key the Go file left out whose cuckoodist
default differs from Go's zero value, a chain of parse_and_submit workers
that loops, and the C{crits} section the Go workers never needed (they
took CRITs' URL and key from each message; cuckoodist only talks to a
CRITs its configuration names).  The result is checked with the daemon's
own L{parse_config}; what it would refuse is said at the top of the file
and on stderr.

The YAML holds the broker's password and any Cuckoo token, as the JSON
files did: that is its job.  Messages on stderr never quote a value, and
C{-o} writes the file with mode 0600.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import IO, Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import attrs
import yaml
from twisted.python import usage

from cuckoodist.commands.arguments import OptionsAnywhere
from cuckoodist.config import parse_amqp_url, parse_config
from cuckoodist.errors import ConfigError
from cuckoodist.settings import keys_of

__all__ = ["MigrateConfigOptions", "GoWorker", "MigrationError", "read_worker", "migrate", "run"]

#: A Go configuration is a dozen keys; refuse to read anything huge.
MAX_FILE_SIZE = 1024 * 1024

#: Go keys every worker may have that go to the shared sections, not to
#: the stage.
_SHARED_KEYS = ("Amqp", "LogFile", "LogLevel", "VerifySSL", "CuckooURL")

#: Keys only one Go worker type has: how a file that does not say what it
#: is tells us.
_TELLING_KEYS = {
    "CuckooURL": "feed_cuckoo",
    "MaxPending": "feed_cuckoo",
    "CheckFreeSpace": "feed_cuckoo",
    "WaitBetweenRequests": "check_results",
    "PushApiCallsMax": "parse_and_submit",
    "CuckooCleanup": "parse_and_submit",
    "EnabledParsers": "parse_and_submit",
    "DumpDir": "overseer",
}

#: What a Go worker did when its file left a key out (Go's zero value),
#: where cuckoodist's default does something else.
_GO_ZERO = {
    "parse_and_submit": {"CuckooCleanup": False, "ProducerQueue": "", "PushApiCallsMax": 0, "EnabledParsers": []},
    "feed_cuckoo": {"CheckFreeSpace": False, "ProducerQueue": ""},
    "check_results": {"ProducerQueue": ""},
}


class MigrationError(Exception):
    """
    A Go file cannot be read or understood; one line that names the file
    and never quotes a value from it.
    """


def _snake(key: str) -> str:
    """
    C{PushApiCallsMax} -> C{push_api_calls_max}, C{VerifySSL} ->
    C{verify_ssl}, C{CuckooURL} -> C{cuckoo_url}.
    """
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", key)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    return spaced.lower()


def _stage_types() -> dict[str, type]:
    from cuckoodist.registry import STAGES

    return dict(STAGES)


def _shown(text: str) -> str:
    return text if text.isprintable() else ascii(text)


@attrs.frozen
class GoWorker:
    """
    One Go worker's configuration.

    @ivar path: the file it came from, for comments and messages.
    @ivar kind: its stage type.
    @ivar doc: the JSON object, as read.
    """

    path: str
    kind: str
    doc: dict[str, Any]


def read_worker(argument: str) -> GoWorker:
    """
    Read one command-line argument: C{PATH}, or C{TYPE=PATH} for a file
    that does not show its type (by its keys, its name or its queue).

    @raise MigrationError: unreadable, not a JSON object, or of unknown type.
    """
    types = _stage_types()
    kind, _, path = argument.partition("=")
    if not path or kind not in types:
        kind, path = "", argument
    shown = _shown(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise MigrationError(f"{shown}: cannot read it: {e.strerror or type(e).__name__}") from None
    if len(data) > MAX_FILE_SIZE:
        raise MigrationError(f"{shown}: larger than {MAX_FILE_SIZE} bytes, not a Go worker configuration")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise MigrationError(f"{shown}: not JSON{where}") from None
    if not isinstance(doc, dict):
        raise MigrationError(f"{shown}: not a JSON object, so not a Go worker configuration")
    return GoWorker(path, kind or _guess_kind(path, doc, types), doc)


def _guess_kind(path: str, doc: dict[str, Any], types: dict[str, type]) -> str:
    told = {_TELLING_KEYS[key] for key in doc if key in _TELLING_KEYS}
    if len(told) == 1:
        return told.pop()
    if not told:
        name = os.path.basename(path)
        named = [kind for kind in types if kind in name]
        if len(named) == 1:
            return named[0]
        queue = doc.get("ConsumerQueue")
        if isinstance(queue, str) and queue.startswith("worker/") and queue[7:] in types:
            return queue[7:]
        if queue == "worker/failed":
            return "overseer"
    raise MigrationError(
        f"{_shown(path)}: cannot tell which worker this configures; "
        f"name it as TYPE={_shown(path)}, TYPE one of {', '.join(types)}"
    )


def _scalar(value: Any) -> str:
    """
    C{value} as one line of YAML flow style, quoted where YAML needs it.
    """
    text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return text[1:-1]


def _masked(url: str) -> str:
    """
    A broker URL for a comment that sits away from the key holding it:
    without its password.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(a URL that cannot be parsed)"


def _comment(text: str) -> list[str]:
    """
    Comment lines, each line of C{text} made printable.
    """
    return [f"# {_shown(line)}".rstrip() for line in text.splitlines() or [""]]


@attrs.define
class _Stage:
    """
    One C{stages} entry being built: keys in order, comments after them.
    """

    worker: GoWorker
    keys: dict[str, Any] = attrs.Factory(dict)
    notes: list[str] = attrs.Factory(list)


def _cuckoo_name(url: str, taken: Iterable[str]) -> str:
    """
    A name for a Cuckoo from its URL's host: its first label, made of
    letters, digits, C{_} and C{-} (C{cuckoo-} and the address for an IP
    address); numbered when taken.
    """
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if re.fullmatch(r"[0-9.]+|.*:.*", host):  # an IP address: its first label says nothing
        base = "cuckoo-" + re.sub(r"[^A-Za-z0-9]+", "-", host).strip("-")
    else:
        base = re.sub(r"[^A-Za-z0-9_-]", "", host.split(".")[0]) or "cuckoo"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name


def migrate(workers: Sequence[GoWorker]) -> tuple[str, list[str]]:
    """
    Merge the Go workers' configurations into one cuckoodist YAML.

    @return: the YAML text, and warnings for stderr (one line each, naming
        files and keys, never values).
    """
    types = _stage_types()
    warnings: list[str] = []
    stages: list[_Stage] = []

    amqp: dict[str, list[str]] = {}
    log_files: dict[str, list[str]] = {}
    log_levels: dict[str, list[str]] = {}
    cuckoos: dict[str, dict[str, Any]] = {}  # URL -> {"name", "verify_ssl", "from"}
    crits_verify: dict[bool, list[str]] = {}

    for worker in workers:
        stage = _Stage(worker)
        stages.append(stage)
        name = os.path.basename(worker.path)
        cls = types[worker.kind].config_class
        stage_keys = keys_of(cls)
        stage.keys["type"] = worker.kind
        doc = worker.doc
        if "Amqp" in doc:
            amqp.setdefault(doc["Amqp"] if isinstance(doc["Amqp"], str) else json.dumps(doc["Amqp"]), []).append(name)
        if isinstance(doc.get("LogFile"), str) and doc["LogFile"]:
            log_files.setdefault(doc["LogFile"], []).append(name)
        if "LogLevel" in doc:
            log_levels.setdefault(str(doc["LogLevel"]), []).append(name)
        verify = doc.get("VerifySSL")
        if worker.kind == "feed_cuckoo":
            url = doc.get("CuckooURL")
            if isinstance(url, str) and url:
                entry = cuckoos.get(url)
                if entry is None:
                    entry = cuckoos[url] = {
                        "name": _cuckoo_name(url, [c["name"] for c in cuckoos.values()]),
                        "verify_ssl": verify if isinstance(verify, bool) else True,
                        "from": name,
                    }
                elif isinstance(verify, bool) and verify != entry["verify_ssl"]:
                    stage.notes.append(
                        f"VerifySSL: {_scalar(verify)} here, but {entry['from']} has {_scalar(entry['verify_ssl'])} "
                        f"for the same Cuckoo; cuckoo.{entry['name']}.verify_ssl keeps the first")
                stage.keys["cuckoo"] = entry["name"]
            else:
                stage.notes.append("no CuckooURL: set cuckoo to the name of an entry of the cuckoo section")
                warnings.append(f"{_shown(name)}: a feed_cuckoo worker without CuckooURL; its stage needs a cuckoo")
        elif isinstance(verify, bool):
            if worker.kind == "parse_and_submit":
                crits_verify.setdefault(verify, []).append(name)
            if not verify:
                stage.notes.append(
                    "VerifySSL: false: cuckoodist sets TLS verification per peer, as cuckoo.NAME.verify_ssl "
                    "(and crits.verify_ssl); set it there for the Cuckoos (and the CRITs) this worker talks to")
        for key, value in doc.items():
            if key in _SHARED_KEYS:
                if key == "CuckooURL" and worker.kind != "feed_cuckoo":
                    stage.notes.append(f"{key} is only read by feed_cuckoo workers; not carried over")
                continue
            snake = _snake(key)
            if snake in ("type", "cuckoo"):
                stage.notes.append(f"{key}: not a key of a Go worker; not carried over: {key}: {_scalar(value)}")
            elif snake in stage_keys:
                stage.keys[snake] = list(value) if isinstance(value, (list, tuple)) else value
            else:
                owners = [t for t, s in types.items() if snake in keys_of(s.config_class)]
                where = f" (a setting of {' and '.join(owners)} stages)" if owners else ""
                stage.notes.append(
                    f"{key}: no {worker.kind} setting in cuckoodist{where}; not carried over: {key}: {_scalar(value)}")
        for key, zero in _GO_ZERO.get(worker.kind, {}).items():
            snake = _snake(key)
            default = attrs.fields_dict(cls)[snake].default
            if key not in doc and snake in stage_keys and default != zero and not (default == () and zero == []):
                stage.notes.append(
                    f"{key} is not in the Go file, so the Go worker used {_scalar(zero)}; "
                    f"cuckoodist's default {snake} is {_scalar(list(default) if isinstance(default, tuple) else default)}")
        if worker.kind == "overseer" and "dump_dir" not in stage.keys:
            stage.notes.append("no DumpDir: set dump_dir, the directory for the messages given up on")
            warnings.append(f"{_shown(name)}: an overseer worker without DumpDir; its stage needs a dump_dir")

    _chains(stages)
    lines = _header(workers)
    lines += _amqp_section(amqp, warnings)
    lines += _single("log_file", log_files, "LogFile", "one log file per daemon")
    lines += _single("log_level", log_levels, "LogLevel", "one log level per daemon")
    lines += [""] + _crits_section(crits_verify)
    lines += [""] + _cuckoo_section(cuckoos, workers)
    lines += ["", "stages:"]
    for stage in stages:
        lines.append(f"  # from {_shown(stage.worker.path)}")
        first = True
        for key, value in stage.keys.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {_scalar(value)}")
            first = False
        lines += [f"    {line}" for note in stage.notes for line in _comment(note)]
    text = "\n".join(lines) + "\n"
    problem = _check(text)
    if problem is not None:
        text = "\n".join(_comment(f"cuckoodist check-config will refuse this file as it is: {problem}")) + "\n" + text
        warnings.append(f"the result needs editing before the daemon takes it: {problem}")
    return text, warnings


def _header(workers: Sequence[GoWorker]) -> list[str]:
    lines = _comment(
        "cuckoodist configuration made by 'cuckoodist migrate-config' from the Go workers' configurations:")
    lines += _comment("\n".join(f"  {w.path} ({w.kind})" for w in workers))
    lines += _comment(
        "Read the comments, then check it with 'cuckoodist check-config FILE'.\n"
        "It holds the broker's password (and any Cuckoo token): keep it private (mode 0600).\n"
        "Every key, with its default, is described in etc/cuckoodist.yaml of cuckoodist.")
    return lines + [""]


def _amqp_section(amqp: dict[str, list[str]], warnings: list[str]) -> list[str]:
    if not amqp:
        return _comment("No Go file has Amqp: the default broker applies (amqp://guest:guest@127.0.0.1:5672/).")
    urls = list(amqp)
    lines = []
    try:
        parse_amqp_url(urls[0])
    except ConfigError as e:
        lines += _comment(f"Amqp of {', '.join(amqp[urls[0]])}: {e.reason}")
    for other in urls[1:]:
        lines += _comment(
            f"{', '.join(amqp[other])} used another broker, {_masked(other)}: one daemon has one broker "
            "(or one cluster, as a list of its nodes' URLs); run a second daemon with its own file for it")
        warnings.append(f"{', '.join(_shown(n) for n in amqp[other])}: another broker than the first file's; not carried over")
    return lines + [f"amqp: {_scalar(urls[0])}"]


def _single(key: str, values: dict[str, list[str]], go_key: str, why: str) -> list[str]:
    if not values:
        return []
    chosen, *others = list(values)
    lines = [f"{key}: {_scalar(chosen)}"]
    for other in others:
        lines += _comment(f"{', '.join(values[other])} had {go_key} {other}; not carried over: {why}")
    return lines


def _crits_section(verify: dict[bool, list[str]]) -> list[str]:
    wanted = False not in verify
    return _comment(
        "crits: the Go workers took CRITs' URL and API key from each message. cuckoodist only sends\n"
        "results to a CRITs this file names: the crits section (whose key is used for messages\n"
        "without one), and crits.allowed_urls for any other CRITs messages name. Fill in and uncomment:\n"
        "crits:\n"
        "  url: https://crits.example.org\n"
        "  username: cuckoodist\n"
        "  api_key: CHANGE-ME\n"
        f"  verify_ssl: {_scalar(wanted)}\n"
        "  allowed_urls: []")


def _cuckoo_section(cuckoos: dict[str, dict[str, Any]], workers: Sequence[GoWorker]) -> list[str]:
    if not cuckoos:
        if any(w.kind in ("check_results", "parse_and_submit") for w in workers):
            return _comment(
                "cuckoo: list every Cuckoo the fleet's feed_cuckoo workers feed (name: {url: ...}):\n"
                "check_results and parse_and_submit only talk to a Cuckoo this file names.")
        return []
    lines = ["cuckoo:"]
    for url, entry in cuckoos.items():
        lines += [f"  {_scalar(entry['name'])}:", f"    url: {_scalar(url)}",
                  f"    verify_ssl: {_scalar(entry['verify_ssl'])}"]
    if any(w.kind in ("check_results", "parse_and_submit") for w in workers):
        lines += [f"  {line}" for line in _comment(
            "check_results and parse_and_submit only talk to a Cuckoo listed here: add the Cuckoos\n"
            "of feed_cuckoo workers that stay in Go, if any.")]
    return lines


def _chains(stages: Sequence[_Stage]) -> None:
    """
    Note parse_and_submit chains that loop, and the clean-up a stage that
    relays does not do.
    """
    consumers = {s.keys.get("consumer_queue"): s for s in stages if s.worker.kind == "parse_and_submit"}
    for stage in stages:
        if stage.worker.kind != "parse_and_submit" or not stage.keys.get("producer_queue"):
            continue
        if stage.keys.get("cuckoo_cleanup"):
            stage.notes.append(
                "CuckooCleanup: true with a ProducerQueue: in cuckoodist a stage that relays to the next one does not "
                "finish the analysis or clean up; only the last stage of a chain (producer_queue empty) does")
        seen, queue = [stage], stage.keys["producer_queue"]
        while queue in consumers:
            following = consumers[queue]
            if following is stage:
                stage.notes.append(
                    "messages would loop: the chain from here comes back to this stage's consumer_queue; "
                    "the last stage of a chain needs an empty producer_queue")
                break
            if following in seen:
                break
            seen.append(following)
            queue = following.keys.get("producer_queue")


def _check(text: str) -> str | None:
    """
    What the daemon's configuration check says of the result, if anything
    is wrong (file and directory checks are left to C{check-config}).
    """
    try:
        parse_config(yaml.safe_load(text))
    except ConfigError as e:
        return " ".join(str(e).split())
    return None


class MigrateConfigOptions(OptionsAnywhere):
    """
    Command line of C{cuckoodist migrate-config}.
    """

    synopsis = "GO_JSON... [-o OUTPUT]"
    longdesc = (
        "Read the Go cuckoo_distributed workers' JSON configurations (one per worker process) and "
        "print one cuckoodist.yaml running all of them as stages of one daemon: one shared amqp, log "
        "and cuckoo section, one stage per file, in the order given. Whatever cannot be carried "
        "over (a second broker or log file, a key cuckoodist has not, a loop in a chain, the crits "
        "section the Go workers did not need) is explained in a comment. A file whose type its keys, "
        "name and queue do not tell can be given as TYPE=FILE. The output holds the broker's "
        "password: -o writes it with mode 0600. Exit status: 0 when the output is a configuration "
        "the daemon takes, 1 when it needs editing or a file cannot be read, 2 for bad usage.")
    examples = (
        "cuckoodist migrate-config feed_cuckoo.conf.json check_results.conf.json "
        "parse_and_submit.conf.json overseer.conf.json > cuckoodist.yaml",
        "cuckoodist migrate-config overseer=failed.json -o /etc/cuckoodist/cuckoodist.yaml",
    )
    optParameters = [
        ["output", "o", None, "Write the YAML to this file (mode 0600) instead of stdout."],
    ]

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("give at least one Go worker configuration file")
        self["files"] = files


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def run(options: MigrateConfigOptions, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """
    Run C{cuckoodist migrate-config}.
    """
    out, err = out or sys.stdout, err or sys.stderr
    workers = []
    failed = False
    for argument in options["files"]:
        try:
            workers.append(read_worker(argument))
        except MigrationError as e:
            print(f"cuckoodist migrate-config: {e}", file=err)
            failed = True
    if failed:
        return 1
    text, warnings = migrate(workers)
    if options["output"]:
        try:
            _write_private(options["output"], text)
        except OSError as e:
            print(f"cuckoodist migrate-config: cannot write {_shown(options['output'])}: {e.strerror}", file=err)
            return 1
    else:
        out.write(text)
    for warning in warnings:
        print(f"cuckoodist migrate-config: {warning}", file=err)
    return 1 if any(w.startswith("the result needs editing") for w in warnings) else 0
