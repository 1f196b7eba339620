# -*- test-case-name: tests.test_resubmit -*-
"""
C{cuckoodist resubmit DUMP_DIR}: put dumped messages back on their queues.

Each file is removed only after the broker confirmed its message, so an
interrupted resubmit can simply be run again (at worst a message goes
twice).  The C{Retry} count is cleared: a resubmitted message gets the
full number of retries again.
"""

import json
import os
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python import usage

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import load_config, parse_config
from cuckoodist.dump import DumpStore
from cuckoodist.errors import ConfigError
from cuckoodist.publish import publish_confirmed

__all__ = ["ResubmitOptions", "run", "resubmit"]


class ResubmitOptions(usage.Options):
    synopsis = "DUMP_DIR [--only-stage STAGE] [-c CONFIG | --amqp URL]"
    optParameters = [
        ["config", "c", None, "Take the AMQP URL from this configuration file."],
        ["amqp", None, None, "AMQP URL (default: amqp://guest:guest@127.0.0.1:5672/)."],
        ["only-stage", None, None, "Resubmit only messages that failed in this stage (e.g. parse_and_submit)."],
    ]

    def parseArgs(self, dump_dir: str) -> None:
        self["dump_dir"] = dump_dir

    def postOptions(self) -> None:
        if self["config"] and self["amqp"]:
            raise usage.UsageError("give -c/--config or --amqp, not both")
        if not os.path.isdir(self["dump_dir"]):
            raise usage.UsageError(f"{self['dump_dir']} is not a directory")
        try:
            if self["config"]:
                self["amqp_config"] = load_config(self["config"]).amqp
            else:
                doc = {"stages": [{"type": "overseer", "dump_dir": self["dump_dir"]}]}
                if self["amqp"]:
                    doc["amqp"] = self["amqp"]
                self["amqp_config"] = parse_config(doc).amqp
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _fresh(message: str) -> bytes:
    """
    The message with its retry count cleared, when it is a JSON object.
    """
    try:
        doc = json.loads(message)
    except ValueError:
        return message.encode("utf-8")
    if isinstance(doc, dict):
        doc.pop("Retry", None)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return message.encode("utf-8")


async def resubmit(reactor, amqp, dump_dir: str, only_stage: str | None, out=sys.stdout) -> tuple[int, int]:
    """
    Resubmit the dump files in C{dump_dir}.

    @return: C{(resubmitted, skipped)}.
    """
    chosen, skipped = [], 0
    for path, record, problem in DumpStore(dump_dir):
        if record is None:
            print(f"skipped {path}: {problem}", file=out)
            skipped += 1
        elif only_stage and record.stage != only_stage:
            skipped += 1
        elif not record.queue:
            print(f"skipped {path}: it names no queue", file=out)
            skipped += 1
        else:
            chosen.append((path, record))
    total = len(chosen)
    done = 0

    def confirmed(index: int) -> None:
        nonlocal done
        os.unlink(chosen[index][0])
        done += 1
        if done == total or done % 50 == 0:
            print(f"resubmitted {done}/{total}", file=out)

    if chosen:
        connection = AMQPConnectionService(reactor, amqp)
        connection.startService()
        try:
            await publish_confirmed(connection, [(r.queue, _fresh(r.message)) for _, r in chosen], confirmed)
        finally:
            await connection.stopService()
    print(f"done: {done} resubmitted, {skipped} skipped", file=out)
    return done, skipped


def run(options: ResubmitOptions) -> int:
    def main(reactor) -> Deferred:
        return Deferred.fromCoroutine(
            resubmit(reactor, options["amqp_config"], options["dump_dir"], options["only-stage"])
        )

    try:
        react(main)
    except SystemExit as e:
        return e.code or 0
    return 0
