"""
Fetching a sample by reference: download CRITs' zip from the simulator over
loopback, decrypt it, verify its md5 and sha256.

    .venv/bin/python benchmarks/sample_download.py [--mb 64] [--runs 3]

The simulated CRITs runs in a child process (it builds the zip once with
C{zip -P}, as CRITs does, and serves it from disk), so the peak RSS printed
is the fetching process's alone: the daemon's share of the work.  Figures
are in C{docs/performance.md}.
"""

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_SERVER = r"""
import sys
from twisted.internet import reactor
from cuckoodist.simulators.crits import CritsSimulator
from cuckoodist.simulators.server import SimulatorServer
sim = CritsSimulator(reactor)
md5 = sim.add_sample(path=sys.argv[1])
sim.download_path([md5])  # build the zip before timing starts
server = SimulatorServer(reactor, sim.resource)
server.start_listening()
print(server.url, md5, flush=True)
reactor.run()
"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    work = tempfile.mkdtemp(prefix="cuckoodist-bench-")
    sample = os.path.join(work, "sample.bin")
    sha256 = hashlib.sha256()
    with open(sample, "wb") as fp:
        # Half random, half text: zip stores the one and deflates the other.
        for i in range(size // (1 << 20)):
            block = os.urandom(1 << 20) if i % 2 else (b"cuckoodist benchmark line %08d\n" % i) * 32768
            block = block[: 1 << 20]
            fp.write(block)
            sha256.update(block)
    server = subprocess.Popen([sys.executable, "-c", _SERVER, sample], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        url, md5 = server.stdout.readline().split()
        os.unlink(sample)
        run(url, md5, sha256.hexdigest(), size, work, args.runs)
    finally:
        server.terminate()
        server.wait()


def run(url: str, md5: str, sha256: str, size: int, work: str, runs: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from cuckoodist.crits import CritsClient
    from cuckoodist.http import HTTPClient
    from cuckoodist.messages import CritsData
    from cuckoodist.sample_zip import extract_sample
    from cuckoodist.simulators.crits import DEFAULT_API_KEY

    http = HTTPClient(reactor, timeout=600)
    crits = CritsClient(http, CritsData("bench", "Sample", "x", url, "analyst", DEFAULT_API_KEY))
    print(f"sample {size / 2**20:.0f} MiB, md5 {md5}; baseline RSS {rss_mb():.0f} MB")
    print("| run | download s | decrypt+verify s | total s | MB/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")

    async def bench() -> None:
        for n in range(1, runs + 1):
            archive = os.path.join(work, "sample.zip")
            out = os.path.join(work, md5)
            started = time.perf_counter()
            with open(archive, "wb") as spool:
                await crits.download_sample(md5, spool, size + (1 << 20))
            fetched = time.perf_counter()
            with open(out, "wb") as sink:
                got = extract_sample(archive, sink, md5, "infected", size, sha256)
            done = time.perf_counter()
            assert got.size == size
            os.unlink(archive)
            os.unlink(out)
            total = done - started
            print(f"| {n} | {fetched - started:.2f} | {done - fetched:.2f} | {total:.2f} | "
                  f"{size / 1e6 / total:.0f} | {rss_mb():.0f} |")
        await http.close()

    def finish(result: object) -> object:
        reactor.stop()
        return result

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(bench()).addBoth(finish))
    reactor.run()


if __name__ == "__main__":
    main()
