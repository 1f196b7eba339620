# -*- test-case-name: tests.test_http,tests.test_stage_base -*-
"""
HTTP for talking to Cuckoo and CRITs: bounded in time and in memory.

treq's C{timeout=} only covers the wait for response headers; a peer that
trickles its body would hold a call forever.  L{HTTPClient.request} puts one
deadline on the whole call, body included, and reads bodies either into
memory up to a cap or straight into a file up to a cap.  Transport failures
(refused, reset, DNS, timeout) become L{TransientError}; a redirect is a
L{PermanentError}, since an API call never follows one; deciding what any
other status code means is left to the caller, who knows the API.
"""

import json
from typing import Any, BinaryIO, Mapping

import attrs
import treq
from treq.client import HTTPClient as TreqClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from twisted.internet.ssl import CertificateOptions
from zope.interface import implementer

from cuckoodist.errors import PermanentError, TransientError

__all__ = ["HTTPClient", "Response", "BodyTooLarge", "NotSent"]


class BodyTooLarge(PermanentError):
    """
    A response body exceeded the limit the caller set.
    """


class NotSent(TransientError):
    """
    The request provably never reached the peer: no connection could be
    made (refused, unknown host, connect timeout).  Unlike a timeout or a
    5xx, it is safe to repeat a request that must not be made twice, such
    as an upload.
    """


@attrs.frozen
class Response:
    """
    A finished HTTP exchange.  C{body} is empty when the body was streamed
    to a file.
    """

    code: int
    headers: Mapping[bytes, list[bytes]]
    body: bytes

    def json_object(self, peer: str, context: str) -> dict[str, Any]:
        """
        Decode the body as a JSON object, as every API we call answers.

        @param peer: names the peer in the error, e.g. C{"Cuckoo http://c"}.
        @param context: says which call, e.g. C{"for /cuckoo/status"}.
        @raise TransientError: the body is not a JSON object (a proxy's
            error page, a half-written answer), which may pass.
        """
        try:
            doc = self.json()
        except ValueError:
            raise TransientError(f"{peer} sent non-JSON {context}") from None
        if not isinstance(doc, dict):
            raise TransientError(f"{peer} sent unexpected JSON {context}")
        return doc

    def json(self) -> Any:
        """
        Decode the body as JSON.

        @raise ValueError: it is not JSON.
        """
        return json.loads(self.body)


@implementer(IPolicyForHTTPS)
class _NoVerification:
    """
    TLS without certificate checks, for peers configured with
    C{verify_ssl: false} (self-signed lab sandboxes).  Never the default.
    """

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return CertificateOptions(verify=False)


class _Sink:
    """
    Collects a body into memory or a file, refusing more than C{limit}
    bytes.
    """

    def __init__(self, limit: int, fp: BinaryIO | None) -> None:
        self.limit = limit
        self.fp = fp
        self.size = 0
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge(f"response body exceeds {self.limit} bytes")
        if self.fp is None:
            self.parts.append(data)
        else:
            self.fp.write(data)


class HTTPClient:
    """
    One connection pool per TLS policy, shared by every stage of the daemon.

    By default it builds its own L{Agent}s: one verifying certificates, one
    for peers configured with C{verify_ssl: false}, each over its own pool.
    Like treq's C{HTTPClient}, it can instead be given the L{IAgent} to
    make every call through, e.g. treq.testing's C{RequestTraversalAgent}
    over a simulator's resource, so that a stage runs without sockets.
    Everything else (the deadline covering the body, bounded bodies,
    streaming to a sink, no redirects, L{NotSent}) is the same either way.

    @param reactor: provides time (for the deadline) and, for the built-in
        agents, TCP and TLS.
    @param timeout: default seconds for a whole call, body included.
    @param persistent: whether the built-in pools keep connections open.
    @param agent: the L{IAgent} for every call, whatever C{verify} says
        (TLS is then the agent's business); C{None} to build the pools.
    """

    def __init__(self, reactor: Any, timeout: float, persistent: bool = True, *, agent: IAgent | None = None) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._pools: list[HTTPConnectionPool] = []
        self._clients: dict[bool, TreqClient] = {}
        if agent is not None:
            client = TreqClient(agent)
            self._clients = {True: client, False: client}
            return
        for verify, policy in ((True, BrowserLikePolicyForHTTPS()), (False, _NoVerification())):
            pool = HTTPConnectionPool(reactor, persistent=persistent)
            pool.maxPersistentPerHost = 8
            pool.retryAutomatically = False
            self._pools.append(pool)
            self._clients[verify] = TreqClient(Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=15))

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        data: Any = None,
        files: Any = None,
        verify: bool = True,
        max_body: int = 16 * 1024 * 1024,
        sink: BinaryIO | None = None,
        timeout: float | None = None,
        what: str = "",
    ) -> Response:
        """
        Make one HTTP call and read its whole body.

        @param max_body: refuse bodies larger than this many bytes.
        @param sink: write the body here instead of keeping it in memory.
        @param what: names the peer in error messages, e.g. C{"Cuckoo"}.
        @raise TransientError: the peer could not be reached or the call
            timed out.
        @raise BodyTooLarge: the body went past C{max_body}.
        """
        seconds = self._timeout if timeout is None else timeout
        client = self._clients[bool(verify)]

        async def call() -> Response:
            response = await client.request(
                method,
                url,
                headers=headers,
                params=params,
                data=data,
                files=files,
                unbuffered=True,
                # API calls never follow redirects: a peer's 3xx could turn
                # an upload into a GET elsewhere, or point us at any host.
                allow_redirects=False,
            )
            if 300 <= response.code < 400:
                _drop(response)
                raise PermanentError(
                    f"{what or 'peer'} answered {response.code} (a redirect) to {method} {_path(url)}; "
                    "API calls do not follow redirects: configure the URL it points to"
                )
            length = response.length
            if isinstance(length, int) and length > max_body:
                # Refusing the first chunk makes treq drop the connection.
                await treq.collect(response, _Sink(-1, None).write).addErrback(lambda _: None)
                raise BodyTooLarge(f"{what or 'peer'} announced {length} bytes, over the {max_body}-byte limit")
            collector = _Sink(max_body, sink)
            try:
                await treq.collect(response, collector.write)
            except CancelledError:
                _drop(response)
                raise
            return Response(response.code, dict(response.headers.getAllRawHeaders()), b"".join(collector.parts))

        d = Deferred.fromCoroutine(call())
        d.addTimeout(seconds, self._reactor)
        try:
            return await d
        except (PermanentError, TransientError):
            raise
        except (TimeoutError, CancelledError):
            raise TransientError(f"{what or 'peer'} did not answer {method} {_path(url)} within {seconds:g} s") from None
        except (ConnectError, DNSLookupError) as e:
            raise NotSent(f"{what or 'peer'} unreachable for {method} {_path(url)}: {_describe(e)}") from None
        except Exception as e:
            raise TransientError(f"{what or 'peer'} unreachable for {method} {_path(url)}: {_describe(e)}") from None

    def close(self) -> Deferred:
        """
        Drop every cached connection; fires when they are closed (at
        once for a client given its agent: the agent's owner closes it).
        """
        return gatherResults([pool.closeCachedConnections() for pool in self._pools])


def _drop(response: Any) -> None:
    """
    Close the connection under a response whose body we stopped reading;
    cancelling treq's collection alone would leave a trickling peer's
    socket open.
    """
    transport = getattr(getattr(response, "original", None), "_transport", None)
    if transport is not None:
        transport.stopProducing()


def _path(url: str) -> str:
    """
    The URL without its query string (which could carry credentials).
    """
    return url.split("?", 1)[0]


def _describe(error: Exception) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) for r in reasons)
    return str(error) or type(error).__name__
