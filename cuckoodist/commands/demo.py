# -*- test-case-name: tests.test_demo -*-
"""
C{cuckoodist demo}: publish synthetic samples as the CRITs-side service
would, then watch them arrive in the simulated CRITs.

This is what the README's demo runs.  It plays the part of the CRITs
service: it publishes Go-format analysis requests to the feed queue and
polls the CRITs simulator's C{/_sim/state} until every analysis finished.
"""

import base64
import hashlib
import json
import os
import sys
import uuid

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.python import usage

from cuckoodist.amqp.connection import AMQPConnectionService
from cuckoodist.config import load_config
from cuckoodist.errors import ConfigError
from cuckoodist.publish import publish_confirmed

__all__ = ["DemoOptions", "run"]


class DemoOptions(usage.Options):
    synopsis = "-c CONFIG [--count N] [--crits-url URL]"
    optParameters = [
        ["config", "c", None, "The daemon's configuration (for the AMQP URL, the feed queue and CRITs)."],
        ["count", "n", 10, "How many samples to publish.", int],
        ["timeout", None, 300, "Seconds to wait for every analysis to finish.", int],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("-c/--config is required")
        if self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")
        try:
            self["parsed"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        feeds = [s for s in self["parsed"].stages if s.type == "feed_cuckoo"]
        if not feeds or self["parsed"].crits is None:
            raise usage.UsageError("the configuration needs a feed_cuckoo stage and a crits section")
        self["feed_queue"] = feeds[0].consumer_queue


def _request(i: int, source: str) -> tuple[str, bytes]:
    data = b"MZ\x90\x00cuckoodist demo sample %d " % i + os.urandom(32)
    md5 = hashlib.md5(data).hexdigest()
    analysis_id = str(uuid.uuid4())
    body = {
        "payload": {"package": "exe", "options": "procmemdump=yes"},
        "file": {"name": f"demo-{i}.exe", "data": base64.b64encode(data).decode()},
        "crits_data": {
            "analysis_id": analysis_id, "object_type": "Sample", "object_id": md5[:24],
            "md5": md5, "source": source,
        },
    }
    return analysis_id, json.dumps(body).encode()


async def demo(reactor, options: DemoOptions, out=sys.stdout) -> int:
    config = options["parsed"]
    requests = [_request(i, "demo") for i in range(options["count"])]
    connection = AMQPConnectionService(reactor, config.amqp)
    connection.startService()
    try:
        await publish_confirmed(connection, [(options["feed_queue"], body) for _, body in requests])
    finally:
        await connection.stopService()
    print(f"published {len(requests)} analysis requests to {options['feed_queue']}", file=out)
    wanted = {analysis_id for analysis_id, _ in requests}
    state_url = config.crits.url + "/_sim/state"
    last = None
    for _ in range(options["timeout"] * 2):
        response = await treq.get(state_url)
        state = await response.json()
        analyses = {k: v for k, v in state.get("analyses", {}).items() if k in wanted}
        completed = sum(1 for a in analyses.values() if a.get("status") == "completed")
        failed = sum(1 for a in analyses.values() if a.get("status") == "error")
        results = sum(len(a.get("results", [])) for a in analyses.values())
        line = f"CRITs: {completed} completed, {failed} failed, {len(wanted) - completed - failed} in progress, {results} results"
        if line != last:
            print(line, file=out)
            last = line
        if completed + failed == len(wanted):
            return 0 if failed == 0 else 1
        await deferLater(reactor, 0.5, lambda: None)
    print("timed out waiting for the analyses", file=out)
    return 1


def run(options: DemoOptions) -> int:
    code = []

    async def main(reactor) -> None:
        code.append(await demo(reactor, options))

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit:
        pass
    return code[0] if code else 1
