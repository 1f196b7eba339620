# -*- test-case-name: tests.test_sim_cuckoo -*-
"""
C{cuckoodist simulate}: run the Cuckoo and CRITs simulators until stopped.

This is a composition root, so it is the one place in the simulators that
may use the global reactor, and only inside L{run}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from twisted.internet.error import CannotListenError
from twisted.python import usage

from cuckoodist.simulators.crits import DEFAULT_API_KEY, CritsSimulator
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.simulators.reports import FORMATS
from cuckoodist.simulators.server import SimulatorServer

__all__ = ["FileReportCuckoo", "SimulateOptions", "SimulatorStartError", "start_simulators", "run"]

#: Read when C{--crits-api-key} is not given, so the key need not appear in
#: the process list.
CRITS_KEY_ENVIRONMENT = "CUCKOODIST_SIM_CRITS_API_KEY"


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("not a TCP port")
    return number



class SimulateOptions(usage.Options):
    """
    Options of C{cuckoodist simulate}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve a simulated Cuckoo REST API and a simulated CRITs API for demos "
        "and tests. Both answer like the real servers, including their error "
        "bodies and authentication. Test-only endpoints /_sim/state and "
        "/_sim/control need no credentials: bind to loopback only. Without "
        f"--crits-api-key the key is read from ${CRITS_KEY_ENVIRONMENT}, else "
        f"the public demo key {DEFAULT_API_KEY} is used, which is the key "
        "etc/cuckoodist.yaml carries, so that example runs against these simulators as is. "
        "Runs until SIGINT or SIGTERM.")
    examples = (
        "cuckoodist simulate",
        "cuckoodist simulate --cuckoo-port 18090 --crits-port 18443 --analysis-seconds 2",
    )

    optParameters = [
        ["cuckoo-port", None, 8090, "Port of the Cuckoo API (0: any).", _port],
        ["crits-port", None, 8443, "Port of the CRITs API (0: any), plain HTTP.", _port],
        ["bind", None, "127.0.0.1", "Address to listen on."],
        ["report-format", None, "2.0", f"Cuckoo flavour: {', '.join(FORMATS)}."],
        ["analysis-seconds", None, 5.0, "Seconds from running to reported.", float],
        ["machines", None, 4, "Analyses that may run at once.", int],
        ["cuckoo-token", None, "", "Cuckoo 2.0.7 API token; empty disables auth."],
        ["crits-user", None, "analyst", "CRITs user name."],
        ["crits-api-key", None, None, "CRITs API key of that user."],
        ["fail-rate", None, 0.0, "Share (0..1) of API requests answered 500.", float],
        ["report-file", None, None,
         "Serve this report.json (a real Cuckoo report) for every task instead of a generated "
         "one; --report-format must be its flavour."],
        ["seed", None, 0, "Seed of failure injection and report contents.", int],
    ]

    def postOptions(self) -> None:
        """
        @raise usage.UsageError: a value out of range.
        """
        if self["report-format"] not in FORMATS:
            raise usage.UsageError(
                f"--report-format must be one of {', '.join(FORMATS)}, "
                f"not {self['report-format']!r}")
        if not 0 <= self["fail-rate"] <= 1:
            raise usage.UsageError("--fail-rate must be between 0 and 1")
        if self["analysis-seconds"] < 0:
            raise usage.UsageError("--analysis-seconds must not be negative")
        if self["machines"] < 1:
            raise usage.UsageError("--machines must be at least 1")
        if not self["crits-user"]:
            raise usage.UsageError("--crits-user must not be empty")
        if self["report-file"] is not None and not os.path.isfile(self["report-file"]):
            raise usage.UsageError(f"--report-file: no such file: {self['report-file']}")
        if self["crits-api-key"] is None:
            self["crits-api-key"] = os.environ.get(CRITS_KEY_ENVIRONMENT) or DEFAULT_API_KEY
        if not self["crits-api-key"]:
            raise usage.UsageError("--crits-api-key must not be empty")

    def __repr__(self) -> str:
        # Options is a dict holding the token and key: never show them.
        return "<SimulateOptions>"


class FileReportCuckoo(CuckooSimulator):
    """
    A Cuckoo simulator that serves one recorded C{report.json} for every
    task, so a real report (such as C{tests/data/report-2.0.7-benign.json})
    can go through the whole pipeline; the generator only writes synthetic
    ones.  Its C{info.id} and target are the recorded ones, which the
    daemon does not check against the task.
    """

    def __init__(self, clock: Any, report_path: str, **options: Any) -> None:
        super().__init__(clock, **options)
        with open(report_path, "rb") as fp:
            self._report = fp.read()

    def report_bytes(self, task: Any) -> bytes:
        return self._report


class SimulatorStartError(Exception):
    """
    A simulator could not listen; the message names the address.
    """


def start_simulators(reactor: Any, options: SimulateOptions,
                     out: TextIO) -> list[SimulatorServer]:
    """
    Build both simulators on C{reactor}'s clock, listen, and print one line
    per simulator with its URL (never a credential).

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @return: the listening servers, Cuckoo first.
    @raise SimulatorStartError: a port could not be bound; nothing is left
        listening.
    """
    settings = dict(
        report_format=options["report-format"], token=options["cuckoo-token"],
        analysis_seconds=options["analysis-seconds"], fail_rate=options["fail-rate"],
        seed=options["seed"], machines=options["machines"])
    if options["report-file"] is not None:
        cuckoo: CuckooSimulator = FileReportCuckoo(reactor, options["report-file"], **settings)
    else:
        cuckoo = CuckooSimulator(reactor, **settings)
    crits = CritsSimulator(
        reactor, users={options["crits-user"]: options["crits-api-key"]},
        fail_rate=options["fail-rate"], seed=options["seed"])
    servers = [
        ("Cuckoo", SimulatorServer(reactor, cuckoo.resource, port=options["cuckoo-port"],
                                   interface=options["bind"])),
        ("CRITs", SimulatorServer(reactor, crits.resource, port=options["crits-port"],
                                  interface=options["bind"])),
    ]
    started: list[SimulatorServer] = []
    for name, server in servers:
        try:
            server.start_listening()
        except CannotListenError as e:
            for running in started:
                running.close()
            raise SimulatorStartError(
                f"cannot listen on {e.interface or '*'}:{e.port} for the {name} simulator: "
                f"{e.socketError}") from None
        started.append(server)
    cuckoo_server, crits_server = started
    auth = "bearer token required" if options["cuckoo-token"] else "no auth"
    print(f"Cuckoo {options['report-format']} simulator: {cuckoo_server.url}/ ({auth})",
          file=out)
    print(f"CRITs simulator: {crits_server.url}/api/v1/ (user {options['crits-user']})",
          file=out)
    out.flush()
    return started


def run(options: SimulateOptions) -> int:
    """
    Run both simulators on the global reactor until SIGINT or SIGTERM.

    @return: the process exit code.
    """
    from twisted.internet import reactor

    try:
        servers = start_simulators(reactor, options, sys.stdout)
    except SimulatorStartError as e:
        print(f"cuckoodist simulate: {e}", file=sys.stderr)
        return 1

    def shut_down() -> Any:
        from twisted.internet.defer import DeferredList

        return DeferredList([server.close() for server in servers])

    reactor.addSystemEventTrigger("before", "shutdown", shut_down)
    reactor.run()  # installs SIGINT/SIGTERM handlers that stop it
    return 0

