# -*- test-case-name: tests.test_cli -*-
"""
The C{cuckoodist} console script: a table of sub-commands.

Each sub-command contributes a L{usage.Options} class and a C{run(options)
-> int} function, imported only when chosen, so a new command is one row
in L{_COMMANDS} and C{cuckoodist --help} stays fast.  The daemon itself is
not here: it runs under C{twistd cuckoodist}.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

import attrs
from twisted.python import usage

__all__ = ["main", "Options"]


@attrs.frozen
class _Command:
    """
    One sub-command.

    @ivar name: what the user types.
    @ivar module: the module holding C{options_class} and C{run}.
    @ivar options_class: the name of its L{usage.Options} subclass.
    @ivar description: one line for C{--help}.
    """

    name: str
    module: str
    options_class: str
    description: str

    def options(self) -> usage.Options:
        """
        A fresh instance of the command's options, whose C{--version}
        prints cuckoodist's version (L{usage.Options} prints Twisted's).
        """
        options_class = getattr(importlib.import_module(self.module), self.options_class)

        def get_usage(options: usage.Options, width: int | None = None) -> str:
            return options_class.getUsage(options, width) + _examples(options)

        return type(options_class.__name__, (options_class,),
                    {"opt_version": _print_version, "getUsage": get_usage})()

    def runner(self) -> Callable[[usage.Options], int]:
        return importlib.import_module(self.module).run


_COMMANDS = (
    _Command("simulate", "cuckoodist.simulators.command", "SimulateOptions",
             "Run the Cuckoo and CRITs API simulators."),
    _Command("demo", "cuckoodist.commands.demo", "DemoOptions",
             "Publish demo samples and watch them reach the simulated CRITs."),
    _Command("resubmit", "cuckoodist.commands.resubmit", "ResubmitOptions",
             "Put dumped messages back on their queues."),
    _Command("submit", "cuckoodist.commands.submit", "SubmitOptions",
             "Publish analysis requests for sample files, as the CRITs service does."),
    _Command("status", "cuckoodist.commands.status", "StatusOptions",
             "Show each stage's queue, the delay queues, the dump directory and the daemon's readiness."),
    _Command("trace", "cuckoodist.commands.trace", "TraceOptions",
             "Print every logged event of one analysis, across stages and processes, in time order."),
    _Command("check-config", "cuckoodist.commands.check_config", "CheckConfigOptions",
             "Validate a configuration file as the daemon's start-up does."),
    _Command("migrate-config", "cuckoodist.commands.migrate_config", "MigrateConfigOptions",
             "Turn the Go workers' JSON configurations into one cuckoodist.yaml."),
)


def _examples(options: usage.Options) -> str:
    """
    The C{examples} of an options class as a block for C{--help}, one
    command a line (C{longdesc} is re-wrapped as one paragraph).
    """
    examples = getattr(options, "examples", ())
    return "\nExamples:\n" + "".join(f"  {line}\n" for line in examples) if examples else ""


def _print_version(self: usage.Options) -> None:
    """
    Display the cuckoodist version and exit.
    """
    from cuckoodist import __version__

    print(f"cuckoodist {__version__}")
    sys.exit(0)


class Options(usage.Options):
    """
    Top-level options: a sub-command is required.
    """

    synopsis = "Usage: cuckoodist [--version] COMMAND [options]"
    longdesc = (
        "Tools around the cuckoodist pipeline; the daemon itself runs under "
        "'twistd cuckoodist -c CONFIG'. 'cuckoodist COMMAND --help' describes a command.")
    examples = (
        "cuckoodist simulate &",
        "cuckoodist demo -c etc/cuckoodist.yaml --count 3 --run-daemon",
        "cuckoodist resubmit dump -c etc/cuckoodist.yaml",
        "cuckoodist status -c etc/cuckoodist.yaml",
        "cuckoodist trace ANALYSIS_ID -c etc/cuckoodist.yaml",
        "cuckoodist submit sample.exe -c etc/cuckoodist.yaml --object-id OBJECT_ID --source SOURCE",
    )
    subCommands = [(c.name, None, c.options, c.description) for c in _COMMANDS]

    opt_version = _print_version

    def getUsage(self, width: int | None = None) -> str:
        if hasattr(self, "subOptions"):
            return super().getUsage(width)
        return super().getUsage(width) + _examples(self)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "a command is required: " + ", ".join(c.name for c in _COMMANDS))


def main(argv: Sequence[str] | None = None) -> int:
    """
    Parse C{argv} (default C{sys.argv[1:]}) and run the chosen command.

    Bad usage prints one line to stderr and returns 2; C{--help} prints the
    usage and exits 0.

    @return: the process exit code.
    """
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        print(f"cuckoodist: {e} (try --help)", file=sys.stderr)
        return 2
    command = next(c for c in _COMMANDS if c.name == options.subCommand)
    return command.runner()(options.subOptions)


if __name__ == "__main__":
    sys.exit(main())
