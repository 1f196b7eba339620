# -*- test-case-name: tests.test_cli,tests.test_check_config,tests.test_submit -*-
"""
What the commands share: options after the positional arguments, as GNU
tools take them, a number of seconds, and running a command's coroutine
on the reactor for its exit status.

L{usage.Options} stops at the first argument that is not an option, but
the README and the examples put the file or directory first
(C{resubmit DUMP_DIR -c CONFIG}, C{check-config FILE --connect}).
"""

from __future__ import annotations

import getopt
import sys
from typing import Any, Awaitable, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python import usage

__all__ = ["OptionsAnywhere", "interspersed", "positive_seconds", "exit_status"]


def interspersed(options: usage.Options, argv: Sequence[str]) -> list[str]:
    """
    C{argv} with the options that follow positional arguments moved in
    front of them, then C{--} and the positional arguments.

    @raise usage.UsageError: an unknown option or a missing value.
    """
    try:
        opts, args = getopt.gnu_getopt(list(argv), options.shortOpt, options.longOpt)
    except getopt.error as e:
        raise usage.UsageError(str(e)) from None
    ordered: list[str] = []
    for opt, value in opts:
        if opt.startswith("--"):
            ordered.append(f"{opt}={value}" if opt[2:] + "=" in options.longOpt else opt)
        else:
            ordered.extend([opt, value] if opt[1] + ":" in options.shortOpt else [opt])
    return ordered + ["--"] + args


class OptionsAnywhere(usage.Options):
    """
    Options that may also follow the positional arguments (L{interspersed}).
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        super().parseOptions(interspersed(self, sys.argv[1:] if options is None else options))


def positive_seconds(option: str) -> Callable[[str], float]:
    """
    The coercion of an option that takes seconds: a finite number above 0.

    @param option: the option's name, for the error: L{usage.Options}
        does not say which option a coercion refused.
    """

    def coerce(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not 0 < number < float("inf"):
            raise ValueError(f"{option} takes a positive number of seconds, not {value!r}")
        return number

    return coerce


def exit_status(main: Callable[[Any], Awaitable[int]]) -> int:
    """
    Run C{main(reactor)} on the global reactor until it ends, and return
    the exit status it gave, or 1 when it gave none (it raised).
    """
    code: list[int] = []

    async def run(reactor: Any) -> None:
        code.append(await main(reactor))

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit:
        pass
    return code[0] if code else 1
