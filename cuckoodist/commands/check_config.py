# -*- test-case-name: tests.test_check_config -*-
"""
C{cuckoodist check-config FILE...}: the daemon's start-up checks, without
starting it.

The checks are exactly those of C{twistd cuckoodist} (its
C{Options.postOptions}): L{load_config} reads and checks every key, and
L{preflight} checks that C{log_file} and each C{dump_dir} can be written,
creating them as the daemon would.  So "OK" here means the daemon will
start with this file, and an error is the very line the daemon would have
stopped with.  Both stop at their first problem, so a file shows one
error at a time.

With C{--connect} it also logs in to the broker, so a wrong host, port or
password is found before the daemon retries it for ever in its log.
Whatever the file holds (a directory, binary garbage, invalid YAML, an
unknown key), the answer is one line per file and an exit status, never a
traceback.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python import usage

from cuckoodist.commands.arguments import OptionsAnywhere, positive_seconds
from cuckoodist.config import Config, load_config
from cuckoodist.errors import ConfigError
from cuckoodist.preflight import preflight

__all__ = ["CheckConfigOptions", "check_file", "report", "run"]


class CheckConfigOptions(OptionsAnywhere):
    """
    Command line of C{cuckoodist check-config}.
    """

    synopsis = "FILE... [--connect [--timeout SECONDS]]"
    longdesc = (
        "Check each configuration FILE as 'twistd cuckoodist -c FILE' does at start-up: every key, "
        "and that log_file and each dump_dir can be written (they are created if missing, as the "
        "daemon would). Prints 'FILE: OK' on stdout, or the error the daemon would stop with, one "
        "line per file, on stderr. With --connect it also logs in to FILE's broker. Exit status: 0 "
        "when every file is fine, 1 otherwise, 2 for bad usage.")
    examples = (
        "cuckoodist check-config etc/cuckoodist.yaml",
        "cuckoodist check-config /etc/cuckoodist/cuckoodist.yaml --connect",
    )
    optFlags = [
        ["connect", None, "Also log in to the broker the file names."],
    ]
    optParameters = [
        ["timeout", None, 10.0, "With --connect: seconds to wait for the broker.", positive_seconds("--timeout")],
    ]

    def parseArgs(self, *files: str) -> None:
        if not files:
            raise usage.UsageError("give at least one configuration FILE")
        self["files"] = files


def _shown(text: str) -> str:
    """
    A file name fit for one terminal line.
    """
    return text if text.isprintable() else ascii(text)


def check_file(path: str) -> tuple[Config | None, str | None]:
    """
    Run the daemon's start-up checks on one file.

    @return: the configuration and C{None}, or C{None} and the one line
        saying what is wrong.  An unexpected exception is reported the same
        way: a checker must answer about any file.
    """
    try:
        config = load_config(path)
        preflight(config)
    except ConfigError as e:
        return None, " ".join(str(e).split())
    except Exception as e:  # a bug of ours; still one line, not a traceback
        return None, f"the check itself failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
    return config, None


async def _connect_problem(reactor: Any, config: Config, timeout: float) -> str | None:
    """
    Log in to C{config}'s broker and out again.

    @return: C{None}, or why that did not work, in one line.
    """
    from cuckoodist.commands.status import BrokerUnreachable, close_broker, connect_broker

    try:
        connection, _client = await connect_broker(reactor, config, timeout)
    except BrokerUnreachable as e:
        return str(e)
    except Exception as e:  # a bug of ours: still one line, not a traceback
        return f"the broker check itself failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
    await close_broker(reactor, connection)
    return None


def report(results: Sequence[tuple[str, str | None]], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """
    Print one line per file: C{FILE: OK} on C{out}, C{FILE: problem} on
    C{err}.

    @param results: C{(path, problem or None)} per file, in order.
    @return: the exit status.
    """
    for path, problem in results:
        if problem is None:
            print(f"{_shown(path)}: OK", file=out)
        else:
            print(f"{_shown(path)}: {problem}", file=err)
    return 1 if any(problem is not None for _, problem in results) else 0


def run(options: CheckConfigOptions) -> int:
    """
    Run C{cuckoodist check-config}; the reactor runs only for C{--connect}.
    """
    checked = [(path, *check_file(path)) for path in options["files"]]
    results: list[tuple[str, str | None]] = [(path, problem) for path, _config, problem in checked]
    if options["connect"] and any(config is not None for _path, config, _problem in checked):

        async def main(reactor: Any) -> None:
            for index, (path, config, _problem) in enumerate(checked):
                if config is not None:
                    results[index] = (path, await _connect_problem(reactor, config, options["timeout"]))

        try:
            react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
        except SystemExit:
            pass
    return report(results)
