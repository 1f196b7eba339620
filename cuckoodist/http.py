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

Why not C{treq.HTTPClient.request}: CPU.  The daemon makes ~8.5 requests
per sample, and treq's per-request work was most of the client's share:
it parses every URL with hyperlink and runs C{to_uri()} (an idna check of
the host), builds and merges a cookie jar, and wraps the agent in a
C{CookieAgent} (a C{urllib.request.Request} and the cookie policy on the
request and the response) and a C{ContentDecoderAgent}; its bytes bodies
go through C{FileBodyProducer} and the cooperator.  Twisted's own L{Agent}
adds, per request, a new L{HostnameEndpoint} (idna again) and, for HTTPS,
a new TLS context with the trust roots loaded (~0.5 ms).  We need none of
it: no cookies, no redirects (refused), no gzip (we do not send
C{Accept-Encoding}, so peers answer plain bodies and C{max_body} counts
what is on the wire).  So L{HTTPClient.request} calls the L{IAgent}
itself with the URL bytes (scheme and host normalized by hyperlink once
per peer, plain ASCII paths and queries as they are, query parameters by
C{urllib.parse.urlencode}; anything else normalized by hyperlink as treq
did: L{_url}), sends C{bytes} bodies in one write, and makes each peer's endpoint
and TLS connection creator once (L{_Endpoints}).  treq stays where it
pays: C{treq.collect} reads bodies, C{treq.multipart.MultiPartProducer}
builds uploads (file objects streamed), treq.testing drives the tests.

C{benchmarks/http_request.py} measures it (client CPU per request,
loopback, one at a time / 8 in flight, medians of 4 runs on a shared 2-CPU
machine): a GET with a bearer token 0.62/0.72 -> 0.41/0.37 ms over HTTP,
0.89/1.02 -> 0.49/0.46 ms over HTTPS; a 40 kB form POST 1.04/1.07 ->
0.60/0.56 ms (HTTPS 1.82/1.29 -> 0.84/0.72); a 100 kB multipart upload,
mostly the kernel's copy, 2.13/1.52 -> 1.53/1.13 ms.  With a stub agent,
this module's own work per call went from ~290 to ~50 us; what remains per
request is Twisted's HTTP/1.1 client, the reactor and the system calls.
"""

import json
import mimetypes
import re
import uuid
from typing import Any, BinaryIO, Iterable, Mapping
from urllib.parse import urlencode, urlsplit

import attrs
import treq
from hyperlink import EncodedURL
from treq.multipart import MultiPartProducer
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults, succeed
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.metrics import Metrics, status_class

__all__ = ["HTTPClient", "Peer", "Response", "BodyTooLarge", "NotSent"]


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

        @raise ValueError: it is not JSON, or nests deeper than the
            decoder's recursion allows (a hostile peer's C{[[[[...}: a
            C{RecursionError} would otherwise escape every caller that
            handles bad JSON, and end the sample as an internal error).
        """
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


class Peer:
    """
    Whom a request goes to, as its metrics and its debug line name it.

    Every call to a peer is counted (C{cuckoodist_http_requests_total}, by
    status class) and timed in a debug line in one place,
    L{HTTPClient.request}, so that no client can forget to.  The labels are
    the configuration's, never the URL's: a message names a URL, and a
    label taken from it would let traffic create time series.

    @ivar kind: C{cuckoo} or C{crits}.
    @ivar node: the configured name of the Cuckoo, or C{crits}.
    @ivar metrics: counts the calls; C{None} counts nothing.
    @ivar log: takes the debug line of each call (C{event="http"}).
    @param log_observer: where that line goes: the daemon's stage log
        observer, which drops it below C{log_level}; C{None} for the
        global log publisher.
    """

    def __init__(self, kind: str, node: str, metrics: Metrics | None = None, log_observer: Any = None) -> None:
        self.kind = kind
        self.node = node
        self.metrics = metrics
        self.log = Logger(namespace="cuckoodist.http", observer=log_observer)

    def __repr__(self) -> str:
        return f"<Peer {self.kind} {self.node}>"

    def called(self, method: str, url: str, code: int | None, seconds: float, error: str = "") -> None:
        """
        Count one call and log its time at debug level: the path without
        the query string (which may carry credentials), never a header.

        @param code: the answer's status code, C{None} when none came.
        @param error: why no answer came (or why it was refused).
        """
        if self.metrics is not None:
            self.metrics.http_requests.labels(self.kind, self.node, status_class(code)).inc()
        fields: dict[str, Any] = {
            "event": "http",
            "peer": self.kind,
            "node": self.node,
            "method": method,
            "path": _path_only(url),
            "status": code if code is not None else "error",
            "duration_ms": round(seconds * 1000, 1),
        }
        if error:
            self.log.debug("{peer} {node}: {method} {path} -> {status} in {duration_ms} ms: {error}", error=error, **fields)
        else:
            self.log.debug("{peer} {node}: {method} {path} -> {status} in {duration_ms} ms", **fields)


def _path_only(url: str) -> str:
    """
    The path of C{url}: no scheme, host, user info, query or fragment.
    """
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return "?"


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
        self._agents: dict[bool, IAgent] = {}
        if agent is not None:
            self._agents = {True: agent, False: agent}
            return
        for verify, policy in ((True, BrowserLikePolicyForHTTPS()), (False, _NoVerification())):
            pool = HTTPConnectionPool(reactor, persistent=persistent)
            # As many idle connections per peer as requests in flight to it
            # (the per-node cap is 8), so that each is reused.
            pool.maxPersistentPerHost = 8
            # Servers close idle keep-alive connections (twisted.web after
            # 60 s, werkzeug and uwsgi sooner), and a request can be sent
            # on one just as it closes.  Twisted then retries once on a new
            # connection, but only an idempotent request without a body
            # (a GET: a view, a list, a download, a delete): an upload or a
            # CRITs POST fails as before and is never sent twice.
            pool.retryAutomatically = True
            self._pools.append(pool)
            endpoints = _Endpoints(reactor, policy, connect_timeout=15)
            self._agents[verify] = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)

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
        peer: Peer | None = None,
    ) -> Response:
        """
        Make one HTTP call and read its whole body.

        @param headers: header names and values (C{str} or C{bytes}, or a
            list of values).
        @param params: query parameters (a mapping or a sequence of pairs),
            appended to any query C{url} has.
        @param data: a form (a mapping or a sequence of pairs: URL-encoded,
            or the plain fields of a multipart body with C{files}), or the
            body itself (C{bytes}, or a file object, streamed).
        @param files: multipart file fields, as treq takes them: a mapping
            or pairs of field name and C{(file name, content type,
            bytes or file object)}; a file object is streamed.
        @param max_body: refuse bodies larger than this many bytes.
        @param sink: write the body here instead of keeping it in memory.
        @param what: names the peer in error messages, e.g. C{"Cuckoo"}.
        @param peer: counts the call by status class and logs its time at
            debug level (L{Peer}); C{None} for neither.
        @raise TransientError: the peer could not be reached or the call
            timed out.
        @raise BodyTooLarge: the body went past C{max_body}.
        """
        if peer is None:
            return await self._request(method, url, headers, params, data, files, verify, max_body, sink, timeout, what, [])
        started = self._reactor.seconds()
        # The status code, once an answer came: a redirect or a body over
        # max_body still counts under its code, not as "error".
        answered: list[int] = []
        try:
            response = await self._request(method, url, headers, params, data, files, verify, max_body, sink, timeout, what, answered)
        except Exception as e:
            reason = e.reason if isinstance(e, (PermanentError, TransientError)) else type(e).__name__
            peer.called(method, url, answered[0] if answered else None, self._reactor.seconds() - started, reason)
            raise
        peer.called(method, url, response.code, self._reactor.seconds() - started)
        return response

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Any,
        data: Any,
        files: Any,
        verify: bool,
        max_body: int,
        sink: BinaryIO | None,
        timeout: float | None,
        what: str,
        answered: list[int],
    ) -> Response:
        """
        L{request}'s work, adding the status code to C{answered} as soon
        as the response headers came.
        """
        seconds = self._timeout if timeout is None else timeout
        agent = self._agents[bool(verify)]
        peer = what or "peer"
        try:
            producer, content_type = _body(data, files)
            wire_headers = _headers(headers)
            if content_type is not None:
                wire_headers.setRawHeaders(b"Content-Type", [content_type])
            d = agent.request(method.encode("ascii").upper(), _url(url, params), wire_headers, producer)
            d.addCallback(_read, method, url, max_body, sink, peer, answered)
            d.addTimeout(seconds, self._reactor)
            return await d
        except (PermanentError, TransientError):
            raise
        except (TimeoutError, CancelledError):
            raise TransientError(f"{peer} did not answer {method} {_path(url)} within {seconds:g} s") from None
        except (ConnectError, DNSLookupError) as e:
            raise NotSent(f"{peer} unreachable for {method} {_path(url)}: {_describe(e)}") from None
        except Exception as e:
            raise TransientError(f"{peer} unreachable for {method} {_path(url)}: {_describe(e)}") from None

    def close(self) -> Deferred:
        """
        Drop every cached connection; fires when they are closed (at
        once for a client given its agent: the agent's owner closes it).
        """
        return gatherResults([pool.closeCachedConnections() for pool in self._pools])


def _read(response: Any, method: str, url: str, max_body: int, sink: BinaryIO | None, peer: str, answered: list[int]) -> Deferred:
    """
    Check a response's status and length, and read its body, into a
    L{Response}.  The returned L{Deferred} is the one the caller's deadline
    cancels: cancelling it drops the connection.

    @param answered: gets the status code appended, for the call's count.
    """
    answered.append(response.code)
    if 300 <= response.code < 400:
        _drop(response)
        raise PermanentError(
            f"{peer} answered {response.code} (a redirect) to {method} {_path(url)}; "
            "API calls do not follow redirects: configure the URL it points to"
        )
    length = response.length
    if isinstance(length, int) and length > max_body:
        # Refusing the first chunk makes treq drop the connection.
        refused = treq.collect(response, _Sink(-1, None).write)

        def too_large(_: object) -> None:
            raise BodyTooLarge(f"{peer} announced {length} bytes, over the {max_body}-byte limit")

        return refused.addBoth(too_large)
    collector = _Sink(max_body, sink)

    def cancel(collected: Deferred) -> None:
        collected.errback(CancelledError())
        _drop(response)

    def forward(result: object) -> None:
        # After a cancel, the end of the dropped body is no news.
        if collected.called:
            return
        if isinstance(result, Failure):
            collected.errback(result)
        else:
            collected.callback(result)

    collected: Deferred = Deferred(cancel)
    treq.collect(response, collector.write).addBoth(forward)
    return collected.addCallback(
        lambda _: Response(response.code, dict(response.headers.getAllRawHeaders()), b"".join(collector.parts))
    )


_FORM = b"application/x-www-form-urlencoded"


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A body already in memory, written in one go: treq's C{FileBodyProducer}
    over a C{BytesIO} would read it in 64 kB steps through the cooperator.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _body(data: Any, files: Any) -> tuple[Any, bytes | None]:
    """
    The body producer and the Content-Type (C{None}: the caller's) for
    C{data} and C{files}, as treq's C{HTTPClient.request} makes them.
    """
    if files:
        fields: list[tuple[str, Any]] = list(_pairs(data)) if data else []
        fields.extend(_file_fields(files))
        boundary = str(uuid.uuid4()).encode("ascii")
        return MultiPartProducer(fields, boundary=boundary), b"multipart/form-data; boundary=" + boundary
    if isinstance(data, (dict, list, tuple)):
        return _BytesProducer(urlencode(data, doseq=True).encode("ascii")), _FORM
    if data:
        if isinstance(data, (bytes, bytearray)):
            return _BytesProducer(bytes(data)), None
        return IBodyProducer(data), None
    return None, None


def _pairs(data: Any) -> Iterable[tuple[str, Any]]:
    items = getattr(data, "items", None)
    if items is not None:
        return sorted(items())
    if isinstance(data, (tuple, list)):
        return list(data)
    raise ValueError("Unsupported format")


def _file_fields(files: Any) -> Iterable[tuple[str, tuple[Any, str, Any]]]:
    """
    treq's forms of C{files}: a mapping or pairs of field name and
    C{(file name, content type, content)}, C{(file name, content)} or a
    bare file object; content is C{bytes} (sent in one go) or a file
    object (streamed).
    """
    for name, value in files.items() if hasattr(files, "items") else files:
        file_name = content_type = None
        if isinstance(value, tuple):
            if len(value) == 2:
                file_name, content = value
            elif len(value) == 3:
                file_name, content_type, content = value
            else:
                raise TypeError(f"`files` entry {name!r} must be (file_name, file_obj) or (file_name, content_type, file_obj)")
        else:
            content = value
            if hasattr(content, "name"):
                file_name = FilePath(content.name).basename()
        if not content_type:
            content_type = (mimetypes.guess_type(file_name)[0] if file_name else None) or "application/octet-stream"
        producer = _BytesProducer(bytes(content)) if isinstance(content, (bytes, bytearray)) else IBodyProducer(content)
        yield name, (file_name, content_type, producer)


def _headers(headers: Any) -> Headers:
    """
    The wire headers for the caller's, as treq converts them.
    """
    wire = Headers()
    if headers is None:
        return wire
    if isinstance(headers, Headers):
        for name, values in headers.getAllRawHeaders():
            wire.setRawHeaders(name, values)
        return wire
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict, twisted.web.http_headers.Headers, or None, but found {type(headers)}.")
    for name, value in headers.items():
        if isinstance(value, (bytes, str)):
            wire.addRawHeader(name, value)
        elif isinstance(value, list):
            wire.setRawHeaders(name, value)
        else:
            raise TypeError(f"The value of headers key {name!r} has non-string type {type(value)}.")
    return wire


#: Paths and queries made only of these characters are sent as they are:
#: hyperlink's C{to_uri()} would leave them unchanged (tests.test_http
#: checks it).
_PLAIN_TARGET = re.compile(r"/[A-Za-z0-9._~:/?&=%+,;@!$*'()-]*\Z")

#: C{scheme://authority} as the caller writes it -> as hyperlink's
#: C{to_uri()} makes it (lower-case host, idna, no default port): a few
#: peers, so a few entries.
_origins: dict[str, str] = {}


def _url(url: str, params: Any) -> bytes:
    """
    The request target as treq makes it: C{params} URL-encoded and
    appended to the query; the scheme and authority normalized by
    hyperlink once per peer; a path or query that is not plain ASCII (a
    space, a non-ASCII character) normalized by hyperlink as treq does.
    """
    query = urlencode(params, doseq=True) if params else ""
    slash = url.find("/", url.find("://") + 3) if "://" in url else -1
    if slash > 0 and not url.endswith("?") and _PLAIN_TARGET.match(url, slash):
        origin = url[:slash]
        normalized = _origins.get(origin)
        if normalized is None:
            normalized = EncodedURL.from_text(origin).to_uri().to_text()
            if len(_origins) >= 256:
                _origins.clear()
            _origins[origin] = normalized
        target = normalized + url[slash:]
        if query:
            target += ("&" if "?" in target else "?") + query
        return target.encode("ascii")
    parsed = EncodedURL.from_text(url)
    if query:
        parsed = parsed.replace(query=parsed.query + tuple(tuple(p.split("=", 1)) for p in query.split("&")))
    return parsed.to_uri().to_text().encode("ascii")


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    L{Agent}'s endpoints, one per scheme, host and port, made once: Agent's
    own factory makes a new L{HostnameEndpoint} (which checks the host name
    with idna) and, for HTTPS, a new TLS client context (the trust roots
    loaded again) for every request, even one that reuses a pooled
    connection.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: URI) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
            try:
                host = uri.host.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError(f"The host of the provided URI ({uri.host!r}) contains non-ASCII octets") from None
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
            if len(self._endpoints) >= 256:
                # Peers come from configuration and messages: a few.
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return endpoint


def _drop(response: Any) -> None:
    """
    Close the connection under a response whose body we stopped reading;
    cancelling treq's collection alone would leave a trickling peer's
    socket open.
    """
    transport = getattr(response, "_transport", None)
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
