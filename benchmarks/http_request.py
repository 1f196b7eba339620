"""
Client-side CPU per HTTP request through L{cuckoodist.http.HTTPClient}.

    .venv/bin/python benchmarks/http_request.py [-n 300] [--rounds 3] [--client FILE.py]

A twisted.web server in a child process answers small JSON over HTTP and,
when C{openssl} is at hand to make a self-signed certificate, over HTTPS
(called with C{verify=False}).  This process makes C{n} calls of each kind
one after the other, then C{n} with 8 in flight, and prints the CPU time
(user + system, this process only) per call, the daemon's share of the
work: the best of C{rounds} rounds, since other processes share the CPU.
The calls are the daemon's: a GET with a bearer token, a form POST
of ~40 kB (CRITs results), a multipart upload of a 100 kB file (a sample
for Cuckoo).  C{--client} measures the C{HTTPClient} of another copy of
C{cuckoodist/http.py} instead, e.g. the one before a change.
"""

import argparse
import importlib.util
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_SERVER = r"""
import sys
from twisted.internet import reactor, ssl
from twisted.web.resource import Resource
from twisted.web.server import Site

class Answer(Resource):
    isLeaf = True
    def render(self, request):
        request.content.read()
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"return_code": 0, "id": "5f0c", "task_id": 17, "message": "ok"}'

site = Site(Answer())
site.displayTracebacks = False
tcp = reactor.listenTCP(0, site, interface="127.0.0.1")
urls = ["http://127.0.0.1:%d" % tcp.getHost().port]
if len(sys.argv) > 1:
    ctx = ssl.DefaultOpenSSLContextFactory(sys.argv[1], sys.argv[2])
    tls = reactor.listenSSL(0, site, ctx, interface="127.0.0.1")
    urls.append("https://127.0.0.1:%d" % tls.getHost().port)
print(" ".join(urls), flush=True)
reactor.run()
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_client(path: str | None):
    if path is None:
        from cuckoodist.http import HTTPClient

        return HTTPClient
    spec = importlib.util.spec_from_file_location("http_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HTTPClient


def kinds(base: str, verify: bool):
    from urllib.parse import urlencode

    # As cuckoodist.crits posts results: the form encoded beforehand.
    form = [("object_type", "Sample"), ("object_id", "5f0c" * 6), ("analysis_id", "a1" * 12)]
    form = urlencode(form + [(f"result_{i}", "x" * 180) for i in range(200)]).encode("ascii")
    upload = b"\x90" * 100_000
    yield "GET, bearer header", dict(
        method="GET", url=base + "/tasks/view/17", headers={"Authorization": "Bearer 0123456789abcdef"}, verify=verify
    )
    yield "form POST ~40 kB", dict(
        method="POST",
        url=base + "/api/v1/services/",
        headers={"Authorization": "ApiKey u:k", "Content-Type": "application/x-www-form-urlencoded"},
        data=form,
        verify=verify,
    )
    yield "multipart 100 kB file", dict(
        method="POST",
        url=base + "/tasks/create/file",
        headers={"Authorization": "Bearer 0123456789abcdef"},
        data=[("priority", "2"), ("timeout", "120")],
        files=lambda: {"file": ("sample.exe", "application/octet-stream", io.BytesIO(upload))},
        verify=verify,
    )


async def measure(http, call: dict, n: int, parallel: int) -> float:
    from twisted.internet.defer import DeferredSemaphore, gatherResults, ensureDeferred

    def one():
        kwargs = dict(call)
        if callable(kwargs.get("files")):
            kwargs["files"] = kwargs["files"]()
        return ensureDeferred(http.request(what="bench", **kwargs))

    for _ in range(max(parallel, 8)):  # warm: connections opened, code paths hot
        await one()
    await gatherResults([one() for _ in range(parallel)])
    start = cpu()
    if parallel == 1:
        for _ in range(n):
            response = await one()
            assert response.code == 200, response.code
    else:
        sem = DeferredSemaphore(parallel)
        responses = await gatherResults([sem.run(one) for _ in range(n)])
        assert all(r.code == 200 for r in responses)
    return (cpu() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="keep each cell's best round (the machine is shared)")
    parser.add_argument("--client", help="a copy of cuckoodist/http.py to measure instead")
    args = parser.parse_args()
    HTTPClient = load_client(args.client)

    work = tempfile.mkdtemp(prefix="cuckoodist-bench-")
    tls_args: list[str] = []
    if shutil.which("openssl"):
        key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert]
            + ["-days", "2", "-subj", "/CN=localhost"],
            check=True,
            capture_output=True,
        )
        tls_args = [key, cert]
    server = subprocess.Popen([sys.executable, "-c", _SERVER, *tls_args], stdout=subprocess.PIPE, text=True)
    try:
        urls = server.stdout.readline().split()
        from twisted.internet import reactor
        from twisted.internet.defer import ensureDeferred

        rows = []

        async def run() -> None:
            http = HTTPClient(reactor, timeout=30)
            try:
                for base in urls:
                    verify = not base.startswith("https")
                    for name, call in kinds(base, verify):
                        seq = min([await measure(http, call, args.n, 1) for _ in range(args.rounds)])
                        par = min([await measure(http, call, args.n, 8) for _ in range(args.rounds)])
                        rows.append((base.split(":")[0], name, seq, par))
            finally:
                await http.close()

        failure = []
        d = ensureDeferred(run())
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.stop())
        started = time.monotonic()
        reactor.run()
        if failure:
            failure[0].raiseException()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"client CPU ms per request, best of {args.rounds} rounds of {args.n} ({time.monotonic() - started:.1f} s wall)")
    print(f"{'scheme':<7} {'request':<24} {'sequential':>11} {'8 in flight':>12}")
    for scheme, name, seq, par in rows:
        print(f"{scheme:<7} {name:<24} {seq:>11.3f} {par:>12.3f}")


if __name__ == "__main__":
    main()
