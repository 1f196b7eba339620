"""
End-to-end pipeline benchmark: samples through real daemon processes, the
local RabbitMQ and the Cuckoo and CRITs simulators.

    .venv/bin/python benchmarks/pipeline.py --samples 100,500,1000 --daemons 1,2 --report 1.2,fixture
    .venv/bin/python benchmarks/pipeline.py --samples '' --latency 1000,3000 --report fixture \\
        --wait-between-requests 5 --feed-prefetch 8 --plot docs/pipeline-latency.png
    .venv/bin/python benchmarks/pipeline.py --samples 1000 --daemons 1 --report 1.2 --profile daemon.prof

Every run starts afresh: a simulator process (Cuckoo and CRITs, from
L{cuckoodist.simulators}), a generated configuration with a queue prefix of
its own, and C{--daemons} processes of C{twistd -n cuckoodist -c CONFIG}
with that same configuration, so RabbitMQ spreads the work between them.
Once every stage queue has its consumers, the daemons' CPU time
(C{/proc/PID/stat}) and the simulators' request counts are read, N
analysis requests are published to the feed queue as the CRITs service
publishes them (inline samples, confirmed, persistent), and the run waits
until the simulated CRITs has finished every analysis (throughput) and
Cuckoo has been asked to delete every task (CPU, requests, peak RSS).

  - P1, samples/s: N / (first publish .. last CRITs service POST).
  - P2, done-to-forwarded latency (C{--latency}): the daemons run no
    parse_and_submit; this script consumes the parse queue itself and
    notes when each task message arrives.  For each task, the time from
    the moment the simulated Cuckoo marks it C{reported} (its own record)
    to that arrival.  Also shown: to the first answer that told the daemon
    the task is reported (a C{/tasks/view} of it or a C{/tasks/list}
    listing it), timed in the simulator.
  - CPU per sample: utime+stime of the daemon processes (all threads),
    from ready to done, over N.  Peak RSS: the largest C{VmHWM}.
  - Requests per sample per route: the simulators' per-route counters
    (those of C{/_sim/state}) over the run, over N.

The simulators run in a process of their own (its CPU is shown apart, as
"sim CPU %", so a saturated simulator is visible).  Everything this script
starts is stopped, and its queues deleted, on success, failure or Ctrl-C;
the shared C{cuckoodist.delay.*} queues are left alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: The real Cuckoo 2.0.7 report in the test data, served by C{--report fixture}.
FIXTURE = REPO / "tests" / "data" / "report-2.0.7-benign.json"
#: A generated 1.2 report has this many processes and calls per process: 50 calls.
REPORT_12_SHAPE = (2, 25)
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: What a run started and has not cleaned up yet, for the shutdown trigger.
_LIVE: dict[str, Any] = {"procs": [], "queues": [], "amqp": None}


# -- the simulator process ------------------------------------------------------


def child_sim(settings: dict) -> None:
    """
    Serve a Cuckoo and a CRITs simulator, each wrapped by a L{_Watched}
    resource that times tasks and answers C{GET /_bench}; print both URLs.
    """
    from twisted.internet import reactor

    from cuckoodist.simulators.command import FileReportCuckoo
    from cuckoodist.simulators.crits import CritsSimulator
    from cuckoodist.simulators.cuckoo import CuckooSimulator
    from cuckoodist.simulators.server import SimulatorServer

    common = dict(analysis_seconds=settings["analysis_seconds"], machines=settings["machines"], seed=1)
    if settings["report"] == "fixture":
        cuckoo = FileReportCuckoo(reactor, str(FIXTURE), report_format="2.0", **common)
    else:
        processes, calls = REPORT_12_SHAPE
        cuckoo = CuckooSimulator(reactor, report_format=settings["report"], report_processes=processes,
                                 report_calls_per_process=calls, **common)
    crits = CritsSimulator(reactor)
    watch = _Watch(reactor, cuckoo, crits, settings["analysis_seconds"], settings["jitter"])
    servers = [SimulatorServer(reactor, watch.resource(cuckoo.resource, watch.after_cuckoo, watch.cuckoo_state)),
               SimulatorServer(reactor, watch.resource(crits.resource, watch.after_crits, watch.crits_state))]
    for server in servers:
        server.start_listening()
    print(json.dumps({"cuckoo": servers[0].url, "crits": servers[1].url}), flush=True)
    reactor.run()


class _Watch:
    """
    What the benchmark needs to know that the simulators do not keep: when
    each task was first seen C{reported}, and when CRITs last received a
    service POST.
    """

    _VIEW = re.compile(r"(?:/v1)?/tasks/view/(\d+)")

    def __init__(self, clock: Any, cuckoo: Any, crits: Any, analysis: float, jitter: float) -> None:
        self.clock, self.cuckoo, self.crits = clock, cuckoo, crits
        self.analysis, self.jitter = analysis, jitter
        self.random = random.Random(1)
        self.seen: dict[int, float] = {}  # task id -> first answer saying "reported"
        self.last_service_post = None

    def resource(self, inner: Any, after: Any, state: Any) -> Any:
        from twisted.web.resource import Resource

        from cuckoodist.simulators.server import request_path

        watch = self

        class Watched(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                path = request_path(request)
                if path == "/_bench":
                    request.setHeader(b"content-type", b"application/json")
                    return json.dumps(state(b"full" in request.uri)).encode()
                if path.endswith("/tasks/create/file") and watch.jitter:
                    # Each task its own analysis time, spread over one poll
                    # interval: with one fixed time, every task would report
                    # at the same phase of its polls and the latency would
                    # be that phase, not a distribution.
                    watch.cuckoo.analysis_seconds = watch.analysis + watch.random.uniform(0, watch.jitter)
                answer = inner.render(request)
                after(request, path, answer)
                return answer

        return Watched()

    def after_cuckoo(self, request: Any, path: str, answer: Any) -> None:
        if request.code != 200:
            return
        if path.endswith("/tasks/list") or "/tasks/list/" in path:
            # check_results may learn of many reported tasks from one list.
            for entry in json.loads(answer).get("tasks", []) if isinstance(answer, bytes) else []:
                if entry.get("status") == "reported":
                    self.detected(entry["id"])
            return
        match = self._VIEW.fullmatch(path)
        if match:
            self.detected(int(match[1]))

    def detected(self, task_id: int) -> None:
        """
        Note the first answer that told the daemon task C{task_id} is reported.
        """
        if task_id not in self.seen:
            task = self.cuckoo.get_task(task_id)
            if task is not None and task.status == "reported":
                self.seen[task_id] = self.clock.seconds()

    def after_crits(self, request: Any, path: str, answer: Any) -> None:
        if path.startswith("/api/v1/services") and request.method == b"POST":
            self.last_service_post = self.clock.seconds()

    def cuckoo_state(self, full: bool) -> dict:
        state: dict[str, Any] = {"requests": dict(self.cuckoo.requests.counts)}
        if full:
            # Ids are 1, 2, ...; a deleted task is gone, and so is its timing.
            tasks, task_id = {}, 1
            while (task := self.cuckoo.get_task(task_id)) is not None:
                tasks[task_id] = [task.added_on, task.report_at, self.seen.get(task_id)]
                task_id += 1
            state["tasks"] = tasks
        return state

    def crits_state(self, full: bool) -> dict:
        statuses = [a["status"] for a in self.crits.state()["analyses"].values()]
        return {"requests": dict(self.crits.requests.counts), "completed": statuses.count("completed"),
                "error": statuses.count("error"), "last_service_post": self.last_service_post}


# -- the profiled daemon -----------------------------------------------------------


def child_profile(out: str, twistd_args: list[str]) -> None:
    """
    Run twistd under cProfile in every thread (the report is parsed in the
    reactor's thread pool, which twistd's own C{--profile} does not see),
    timed by each thread's CPU clock.  SIGUSR1 restarts the main thread's
    profile, so start-up can be left out (twistd then leaves SIGUSR1 alone
    instead of rotating its log on it); the stats are written once the
    reactor has shut down and joined its threads.
    """
    import cProfile
    import pstats
    import threading

    from twisted.internet import reactor

    profiles: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main = cProfile.Profile(time.thread_time)

    def restart(_signal: int, _frame: Any) -> None:
        main.disable()
        main.clear()
        main.enable()

    def dump() -> None:
        main.disable()
        stats = pstats.Stats(main)
        for profile in profiles:
            profile.disable()
            stats.add(profile)
        stats.dump_stats(out)

    signal.signal(signal.SIGUSR1, restart)
    reactor.addSystemEventTrigger("after", "shutdown", dump)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *twistd_args]
    main.enable()
    run()


def print_profile(path: str, top: int = 25) -> None:
    import pstats

    stats = pstats.Stats(path)
    prefixes = sorted({str(REPO) + "/", *(p + "/" for p in sys.path if "site-packages" in p)}, key=len,
                      reverse=True)

    def name(func: tuple) -> str:
        filename, line, function = func
        for prefix in prefixes:
            if filename.startswith(prefix):
                filename = filename[len(prefix):]
                break
        return f"{function} ({filename}:{line})" if line else function

    total = sum(entry[2] for entry in stats.stats.values())
    for key, label in (("tottime", "own time"), ("cumtime", "cumulative time")):
        index = 2 if key == "tottime" else 3
        print(f"\nProfile, top {top} by {label} (thread CPU seconds; total own time {total:.1f} s)")
        print("| ncalls | tottime s | % | cumtime s | function |")
        print("|---|---|---|---|---|")
        ranked = sorted(stats.stats.items(), key=lambda kv: kv[1][index], reverse=True)[:top]
        for func, (_cc, nc, tt, ct, _callers) in ranked:
            print(f"| {nc} | {tt:.2f} | {100 * tt / total:.1f} | {ct:.2f} | `{name(func)}` |")


# -- process bookkeeping -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """
    utime+stime of the whole process (every thread), from C{/proc}.
    """
    with open(f"/proc/{pid}/stat") as fp:
        fields = fp.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(args: list[str], log: Path) -> subprocess.Popen:
    """
    Start a child in a session of its own, so that a Ctrl-C reaches only
    us and we stop it in order.
    """
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    _LIVE["procs"].append(proc)
    return proc


async def stop(reactor: Any, procs: list[subprocess.Popen], patience: float = 30.0) -> None:
    """
    SIGTERM (a daemon drains for its grace_period), then SIGKILL.
    """
    from twisted.internet.task import deferLater

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    waited = 0.0
    while any(p.poll() is None for p in procs) and waited < patience:
        await deferLater(reactor, 0.1, lambda: None)
        waited += 0.1
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc in _LIVE["procs"]:
            _LIVE["procs"].remove(proc)


async def delete_queues(reactor: Any, amqp: Any, names: list[str]) -> None:
    from cuckoodist.amqp.connection import AMQPConnectionService

    connection = AMQPConnectionService(reactor, amqp)
    connection.startService()
    try:
        client = await connection.whenConnected(failAfterFailures=3)
        channel = await client.open_channel()
        for name in names:
            await channel.queue_delete(queue=name)
            if name in _LIVE["queues"]:
                _LIVE["queues"].remove(name)
    finally:
        await connection.stopService()


async def consumers(connection: Any, name: str) -> int:
    """
    How many consumers queue C{name} has; 0 while it does not exist.
    """
    from cuckoodist.amqp.protocol import ChannelClosed, Closed

    client = await connection.whenConnected()
    channel = await client.open_channel()
    try:
        reply = await channel.queue_declare(queue=name, passive=True)
    except (ChannelClosed, Closed):
        return 0
    await channel.channel_close()
    return reply.consumer_count


# -- one run -------------------------------------------------------------------------


def config_doc(run: dict, urls: dict, prefix: str, work: Path) -> dict:
    """
    Every stage in one configuration (but parse_and_submit when the run
    taps the parse queue); the knobs the options name, the daemon's
    defaults otherwise.
    """
    q = {name: f"{prefix}/{name}" for name in ("feed_cuckoo", "check_results", "parse_and_submit", "failed")}
    doc = {
        "amqp": run["amqp"], "log_level": "info", "grace_period": 5, "http_timeout": 60,
        # The daemons of a run share this file: none may take the default
        # metrics port (9103), which a daemon on this host may hold.
        "metrics": {"listen": ""},
        "crits": {"url": urls["crits"], "username": "analyst",
                  "api_key": "0123456789abcdef0123456789abcdef01234567"},
        "cuckoo": {"sim": {"url": urls["cuckoo"]}},
        "stages": [
            {"type": "feed_cuckoo", "cuckoo": "sim", "consumer_queue": q["feed_cuckoo"],
             "producer_queue": q["check_results"], "failed_queue": q["failed"],
             "prefetch_count": run["feed_prefetch"], "max_pending": run["max_pending"]},
            {"type": "check_results", "consumer_queue": q["check_results"],
             "producer_queue": q["parse_and_submit"], "failed_queue": q["failed"],
             "prefetch_count": run["check_prefetch"], "wait_between_requests": run["wait"]},
            {"type": "parse_and_submit", "consumer_queue": q["parse_and_submit"], "failed_queue": q["failed"],
             "prefetch_count": run["parse_prefetch"], "cleanup_delay": 1},
            {"type": "overseer", "consumer_queue": q["failed"], "dump_dir": str(work / "dump"),
             "retry_delay": 1},
        ],
    }
    if run["tap"]:
        del doc["stages"][2]
    return doc


async def tap(connection: Any, queue: str, arrived: dict[int, float]) -> None:
    """
    Consume C{queue} in place of parse_and_submit, noting when each task
    message arrives: the moment check_results forwarded it.
    """
    from cuckoodist.amqp.protocol import ChannelClosed, Closed

    client = await connection.whenConnected()
    channel = await client.open_channel()
    await channel.queue_declare(queue=queue, durable=True)
    await channel.basic_qos(prefetch_count=1000)
    deliveries = await client.queue("bench.tap")
    await channel.basic_consume(queue=queue, consumer_tag="bench.tap")
    try:
        while True:
            message = await deliveries.get()
            arrived.setdefault(json.loads(message.content.body)["TaskId"], time.time())
            channel.basic_ack(delivery_tag=message.delivery_tag)
    except (ChannelClosed, Closed):
        pass


def analysis_request(i: int, timeout: int) -> bytes:
    """
    One request as the CRITs service publishes it: the sample inline, the
    configured CRITs (no credentials in the message), and Cuckoo's
    C{timeout} set to the simulated analysis time, as a service configured
    with a timeout sends it.
    """
    data = b"MZ\x90\x00cuckoodist pipeline benchmark sample %d " % i + os.urandom(32)
    md5 = hashlib.md5(data).hexdigest()
    return json.dumps({
        "payload": {"package": "exe", "options": "procmemdump=yes", "timeout": str(timeout)},
        "file": {"name": f"bench-{i}.exe", "data": base64.b64encode(data).decode()},
        "crits_data": {"analysis_id": str(uuid.uuid4()), "object_type": "Sample", "object_id": md5[:24],
                       "md5": md5, "source": "benchmark"},
    }).encode()


async def get_json(url: str, pool: Any) -> dict:
    import treq

    response = await treq.get(url, pool=pool, timeout=120)
    return json.loads(await response.content())


async def wait_for(reactor: Any, what: str, timeout: float, check: Any, procs: list, interval: float = 0.25) -> Any:
    from twisted.internet.task import deferLater

    deadline = time.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a child process exited (status {dead[0].returncode}) while waiting for {what}")
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)


async def run_once(reactor: Any, run: dict) -> dict:
    """
    One measurement: start, feed N, wait, read the counters, clean up.
    """
    from twisted.internet.defer import Deferred
    from twisted.web.client import HTTPConnectionPool

    from cuckoodist.amqp.connection import AMQPConnectionService
    from cuckoodist.config import parse_amqp_url
    from cuckoodist.publish import publish_confirmed

    n = run["samples"]
    work = Path(tempfile.mkdtemp(prefix="cuckoodist-pipeline-"))
    amqp = parse_amqp_url(run["amqp"])
    sim = start([sys.executable, __file__, "--child-sim", json.dumps(run)], work / "sim.log")
    procs = [sim]
    urls = json.loads(sim.stdout.readline() or "{}")
    if not urls:
        raise RuntimeError(f"the simulators did not start; see {work / 'sim.log'}")
    prefix = f"bench.{uuid.uuid4().hex[:10]}"
    doc = config_doc(run, urls, prefix, work)
    queues = [s["consumer_queue"] for s in doc["stages"]]
    extra = [f"{prefix}/parse_and_submit"] if run["tap"] else [f"{prefix}/parse_and_submit.cleanup"]
    _LIVE["queues"].extend(queues + extra)
    config = work / "cuckoodist.yaml"
    config.write_text(json.dumps(doc, indent=1))  # YAML is a superset of JSON
    daemons = []
    for i in range(run["daemons"]):
        twistd = ["-n", "--pidfile=", "-l", str(work / f"daemon{i}.log"), "cuckoodist", "-c", str(config)]
        if run.get("profile"):
            out = run["profile"] + (f".{i}" if i else "")
            command = [sys.executable, __file__, "--child-profile", out, "--", *twistd]
        else:
            command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *twistd]
        daemons.append(start(command, work / f"daemon{i}.stderr"))
    procs += daemons
    pool = HTTPConnectionPool(reactor)
    connection = AMQPConnectionService(reactor, amqp)
    connection.startService()
    bodies = [analysis_request(i, math.ceil(run["analysis_seconds"])) for i in range(n)]
    try:
        async def ready() -> bool:
            counts = [await consumers(connection, name) for name in queues]
            return all(count >= run["daemons"] for count in counts)

        await wait_for(reactor, "the daemons' consumers", 60, ready, procs)
        arrived: dict[int, float] = {}
        if run["tap"]:
            # The tap ends with the connection; only an early end is news.
            Deferred.fromCoroutine(tap(connection, extra[0], arrived)).addErrback(
                lambda f: None if len(arrived) >= n else print("tapping the parse queue failed:", f, file=sys.stderr))
        if run.get("profile"):
            for daemon in daemons:
                daemon.send_signal(signal.SIGUSR1)  # leave start-up out of the profile
        cuckoo0 = await get_json(urls["cuckoo"] + "/_bench", pool)
        crits0 = await get_json(urls["crits"] + "/_bench", pool)
        cpu0 = [cpu_seconds(d.pid) for d in daemons]
        sim_cpu0, wall0 = cpu_seconds(sim.pid), time.time()
        started = time.time()
        await publish_confirmed(connection, [(queues[0], body) for body in bodies])
        published = time.time()

        if run["tap"]:
            async def forwarded() -> bool:
                return len(arrived) >= n

            await wait_for(reactor, f"{n} forwarded tasks", run["timeout"], forwarded, procs)
            done = max(arrived.values())
        else:
            async def finished() -> dict | None:
                state = await get_json(urls["crits"] + "/_bench", pool)
                return state if state["completed"] + state["error"] >= n else None

            crits1 = await wait_for(reactor, f"{n} finished analyses", run["timeout"], finished, procs)
            done = crits1["last_service_post"]

            async def deleted() -> dict | None:
                state = await get_json(urls["cuckoo"] + "/_bench", pool)
                return state if state["requests"].get("tasks/delete", 0) >= n else None

            await wait_for(reactor, "the clean-up of every Cuckoo task", 120, deleted, procs)
        cpu1 = [cpu_seconds(d.pid) for d in daemons]
        sim_cpu1, wall1 = cpu_seconds(sim.pid), time.time()
        cuckoo1 = await get_json(urls["cuckoo"] + "/_bench?full", pool)
        crits1 = await get_json(urls["crits"] + "/_bench", pool)
        rss = max(peak_rss_mb(d.pid) for d in daemons)
    finally:
        await pool.closeCachedConnections()
        await stop(reactor, daemons)
        await stop(reactor, [sim])
        await connection.stopService()
        try:
            await delete_queues(reactor, amqp, queues + extra)
        except Exception as e:  # interrupted: the shutdown clean-up deletes what is left
            print(f"could not delete the queues yet: {e}", file=sys.stderr)
        if not run["keep"]:
            shutil.rmtree(work, ignore_errors=True)

    def per_sample(before: dict, after: dict) -> dict:
        routes = sorted(set(before["requests"]) | set(after["requests"]))
        return {r: (after["requests"].get(r, 0) - before["requests"].get(r, 0)) / n for r in routes}

    return {
        **{k: v for k, v in run.items() if k != "amqp"},
        "seconds": done - started, "publish_seconds": published - started,
        "per_second": n / (done - started),
        "cpu_ms_per_sample": 1000 * (sum(cpu1) - sum(cpu0)) / n,
        "daemon_cpu_percent": 100 * (sum(cpu1) - sum(cpu0)) / (wall1 - wall0),
        "sim_cpu_percent": 100 * (sim_cpu1 - sim_cpu0) / (wall1 - wall0),
        "peak_rss_mb": rss, "completed": crits1["completed"], "errors": crits1["error"],
        "cuckoo_requests": per_sample(cuckoo0, cuckoo1), "crits_requests": per_sample(crits0, crits1),
        "tasks": {int(k): v + [arrived.get(int(k))] for k, v in cuckoo1["tasks"].items()}, "load": os.getloadavg()[0], **({"work": str(work)} if run["keep"] else {}),
    }


# -- latency -----------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def latency(result: dict) -> dict:
    """
    Reported-to-forwarded and reported-to-seen times, and how many tasks
    were in flight (created in Cuckoo, not yet forwarded) at the most.
    Each task is C{[created, reported, seen, forwarded]}.
    """
    tasks = [t for t in result["tasks"].values() if t[3] is not None]
    forwarded = [t[3] - t[1] for t in tasks]
    seen = [t[2] - t[1] for t in tasks if t[2] is not None]
    events = sorted([(t[0], 1) for t in tasks] + [(t[3], -1) for t in tasks])
    flight = peak = 0
    for _, step in events:
        flight += step
        peak = max(peak, flight)
    first_report = min(t[1] for t in tasks)
    return {"tasks": len(tasks), "peak_in_flight": peak,
            "created_before_first_report": sum(1 for t in tasks if t[0] < first_report),
            "forward_median": statistics.median(forwarded), "forward_p95": percentile(forwarded, 0.95),
            "forward_max": max(forwarded), "seen_median": statistics.median(seen) if seen else float("nan"),
            "seen_p95": percentile(seen, 0.95)}


def plot(rows: list[dict], path: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["in_flight"])
    x = [r["in_flight"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, [r["forward_median"] for r in rows], "o-", color="C0", label="reported → forwarded, median")
    ax.plot(x, [r["forward_p95"] for r in rows], "o--", color="C0", label="reported → forwarded, p95")
    ax.plot(x, [r["seen_median"] for r in rows], "s:", color="C1", label="reported → seen by the daemon, median")
    ax.axhline(rows[0]["wait"], color="grey", linewidth=0.8, linestyle=":", label="wait_between_requests")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("tasks in flight (peak)")
    ax.set_ylabel("seconds")
    ax.set_title(f"{label + ': ' if label else ''}1 daemon, wait_between_requests {rows[0]['wait']:g} s",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# -- tables ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_row(r: dict) -> list[Any]:
    cuckoo, crits = sum(r["cuckoo_requests"].values()), sum(r["crits_requests"].values())
    return [r["report"], r["daemons"], r["samples"], f"{r['seconds']:.1f}", f"{r['per_second']:.1f}",
            f"{r['cpu_ms_per_sample']:.1f}", f"{r['daemon_cpu_percent']:.0f}", f"{r['sim_cpu_percent']:.0f}",
            f"{r['peak_rss_mb']:.0f}", f"{cuckoo:.2f}", f"{crits:.2f}", r["errors"], f"{r['load']:.1f}"]


THROUGHPUT = ["report", "daemons", "samples", "s", "samples/s", "daemon CPU ms/sample", "daemon CPU %",
              "sim CPU %", "peak RSS MB", "Cuckoo req/sample", "CRITs req/sample", "errors", "load"]


LATENCY = ["tasks", "peak in flight", "created before 1st report", "analysis s", "wait s", "forwarded median s",
           "p95 s", "max s", "seen median s", "p95 s", "daemon CPU %", "sim CPU %"]


def latency_row(r: dict) -> list[Any]:
    return [r["tasks"], r["peak_in_flight"], r["created_before_first_report"], f"{r['analysis']:g}",
            f"{r['wait']:g}", f"{r['forward_median']:.2f}", f"{r['forward_p95']:.2f}", f"{r['forward_max']:.2f}",
            f"{r['seen_median']:.2f}", f"{r['seen_p95']:.2f}", f"{r['cpu']:.0f}", f"{r['sim_cpu']:.0f}"]


def requests_table(results: list[dict], peer: str) -> str:
    key = f"{peer}_requests"
    routes = sorted({route for r in results for route in r[key]})
    header = ["route"] + [f"{r['report']} x{r['daemons']} N={r['samples']}" for r in results]
    rows = [[f"`{route}`"] + [f"{r[key].get(route, 0):.2f}" for r in results] for route in routes]
    rows.append(["**total**"] + [f"{sum(r[key].values()):.2f}" for r in results])
    return table(header, rows)


# -- main ---------------------------------------------------------------------------------


def source_state() -> str:
    """
    The commit and whether the tree differs from it, since figures only
    mean something for the code they were taken on.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def numbers(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


async def main_async(reactor: Any, args: argparse.Namespace) -> None:
    base = {"amqp": args.amqp, "analysis_seconds": args.analysis_seconds, "wait": args.wait_between_requests,
            "feed_prefetch": args.feed_prefetch, "check_prefetch": args.check_prefetch,
            "parse_prefetch": args.parse_prefetch, "max_pending": args.max_pending, "machines": args.machines,
            "timeout": args.timeout, "profile": None, "keep": args.keep, "tap": False, "jitter": 0.0}
    results, latencies = [], []
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, code in {REPO} ({source_state()}), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"P1 analysis {args.analysis_seconds:g} s, wait_between_requests {args.wait_between_requests:g} s, "
          f"prefetch feed/check/parse {args.feed_prefetch}/{args.check_prefetch}/{args.parse_prefetch}",
          flush=True)
    for report in args.report.split(","):
        for daemons in numbers(args.daemons):
            for n in numbers(args.samples):
                run = dict(base, report=report, daemons=daemons, samples=n, profile=args.profile)
                result = await run_once(reactor, run)
                results.append(result)
                print(table(THROUGHPUT, [throughput_row(result)]).split("\n")[-1], flush=True)
    for n in numbers(args.latency):
        seconds = args.latency_analysis_seconds or 20 + n / 20
        run = dict(base, report=args.report.split(",")[0], daemons=1, samples=n, analysis_seconds=seconds,
                   machines=max(n, args.machines), max_pending=max(n, args.max_pending),
                   timeout=max(args.timeout, 3 * seconds), tap=True, jitter=args.wait_between_requests)
        result = await run_once(reactor, run)
        results.append(result)
        latencies.append(dict(latency(result), in_flight=None, wait=result["wait"], analysis=seconds,
                              cpu=result["daemon_cpu_percent"], sim_cpu=result["sim_cpu_percent"]))
        latencies[-1]["in_flight"] = latencies[-1]["peak_in_flight"]
        print(table(LATENCY, [latency_row(latencies[-1])]).split("\n")[-1], flush=True)
    if results:
        print("\nThroughput (P1), CPU and memory\n")
        print(table(THROUGHPUT, [throughput_row(r) for r in results]))
        for peer in ("cuckoo", "crits"):
            print(f"\nRequests per sample to {'Cuckoo' if peer == 'cuckoo' else 'CRITs'}, by route\n")
            print(requests_table(results, peer))
    if latencies:
        print("\nDone-to-forwarded latency (P2), one daemon\n")
        print(table(LATENCY, [latency_row(r) for r in latencies]))
        if args.plot:
            plot(latencies, args.plot, args.label)
            print(f"\nplot written to {args.plot}")
    if args.json:
        for r in results:
            r.pop("tasks", None)
        Path(args.json).write_text(json.dumps({"runs": results, "latency": latencies}, indent=1))
    if args.profile:
        print_profile(args.profile)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child-sim"]:
        return child_sim(json.loads(argv[1]))
    if argv[:1] == ["--child-profile"]:
        return child_profile(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="100,500,2000", help="P1 sample counts, comma separated ('' for none)")
    parser.add_argument("--daemons", default="1,2", help="daemon processes per P1 run, comma separated")
    parser.add_argument("--report", default="1.2", help="1.2 (generated, 50 API calls), 2.0 (generated) or "
                        "fixture (tests/data's real 2.0.7 report); comma separated")
    parser.add_argument("--latency", default="", help="P2: tasks in flight, comma separated (e.g. 1000,10000)")
    parser.add_argument("--analysis-seconds", type=float, default=1.0, help="simulated analysis time (P1)")
    parser.add_argument("--latency-analysis-seconds", type=float, default=0.0,
                        help="P2 analysis time; default 20 + N/20, so all N are in Cuckoo before the first reports")
    parser.add_argument("--wait-between-requests", type=float, default=1.0, help="check_results' poll interval")
    parser.add_argument("--feed-prefetch", type=int, default=1, help="feed_cuckoo prefetch_count (daemon default 1)")
    parser.add_argument("--check-prefetch", type=int, default=100, help="check_results prefetch_count (default 100)")
    parser.add_argument("--parse-prefetch", type=int, default=10, help="parse_and_submit prefetch_count (default 10)")
    parser.add_argument("--max-pending", type=int, default=10000,
                        help="feed_cuckoo max_pending (daemon default 10), high so that admission does not limit")
    parser.add_argument("--machines", type=int, default=500, help="simulated Cuckoo machines")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    parser.add_argument("--amqp", default=os.environ.get("CUCKOODIST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/"),
                        help="the broker (default $CUCKOODIST_TEST_AMQP or the local guest account)")
    parser.add_argument("--profile", help="run the daemon under cProfile (every thread), write the stats here "
                        "and print the top 25 by own and cumulative time")
    parser.add_argument("--plot", help="write a PNG of P2 latency against tasks in flight (needs matplotlib)")
    parser.add_argument("--json", help="also write every result to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep each run's configuration and daemon logs")
    parser.add_argument("--label", default="", help="names the code measured in the plot's title")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    def clean_up() -> Any:
        """
        On any stop (done, failure, Ctrl-C): stop what is still running and
        delete the queues still listed.
        """
        async def work() -> None:
            await stop(reactor, list(_LIVE["procs"]), patience=10)
            if _LIVE["queues"]:
                from cuckoodist.config import parse_amqp_url

                await delete_queues(reactor, parse_amqp_url(args.amqp), list(_LIVE["queues"]))
        return Deferred.fromCoroutine(work()).addErrback(lambda f: print("clean-up:", f.getErrorMessage()))

    reactor.addSystemEventTrigger("before", "shutdown", clean_up)
    try:
        react(lambda r: Deferred.fromCoroutine(main_async(r, args)))
    finally:
        for proc in _LIVE["procs"]:
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    main(sys.argv[1:])
