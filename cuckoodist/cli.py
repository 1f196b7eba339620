# -*- test-case-name: tests.test_sim_cuckoo -*-
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
        return getattr(importlib.import_module(self.module), self.options_class)()

    def runner(self) -> Callable[[usage.Options], int]:
        return importlib.import_module(self.module).run


_COMMANDS = (
    _Command("simulate", "cuckoodist.simulators.command", "SimulateOptions",
             "Run the Cuckoo and CRITs API simulators."),
    _Command("demo", "cuckoodist.commands.demo", "DemoOptions",
             "Publish demo samples and watch them reach the simulated CRITs."),
    _Command("resubmit", "cuckoodist.commands.resubmit", "ResubmitOptions",
             "Put dumped messages back on their queues."),
)


class Options(usage.Options):
    """
    Top-level options: a sub-command is required.
    """

    synopsis = "Usage: cuckoodist [options]"
    longdesc = ("Tools around the cuckoodist pipeline; the daemon itself runs under "
                "'twistd cuckoodist'. 'cuckoodist <command> --help' describes a command.")
    subCommands = [(c.name, None, c.options, c.description) for c in _COMMANDS]

    def opt_version(self) -> None:
        """
        Display the cuckoodist version and exit.
        """
        from cuckoodist import __version__

        print(f"cuckoodist {__version__}")
        sys.exit(0)

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
