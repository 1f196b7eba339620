"""
HTTP calls are bounded in time (body included) and in memory, against a
real server on loopback.
"""

import io
import json

from hyperlink import EncodedURL
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import URI, FileBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.util import Redirect

from cuckoodist.errors import PermanentError, TransientError
from cuckoodist.http import BodyTooLarge, HTTPClient, NotSent, _body, _Endpoints, _url


class Trickle(Resource):
    """
    Sends headers and a first chunk, then never finishes the body.
    """

    isLeaf = True

    def render_GET(self, request):
        request.write(b"x" * 10)
        return NOT_DONE_YET


class Big(Resource):
    isLeaf = True

    def render_GET(self, request):
        if request.args.get(b"chunked"):
            request.write(b"y" * 5000)
            request.write(b"y" * 5000)
            request.finish()
            return NOT_DONE_YET
        return b"z" * 10000


class Echo(Resource):
    """
    Answers what it was sent: method, target, headers, body (as latin-1).
    """

    isLeaf = True

    def render(self, request):
        body = request.content.read()
        request.setHeader(b"Content-Type", b"application/json")
        headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()}
        return json.dumps(
            {"method": request.method.decode(), "uri": request.uri.decode(), "headers": headers, "body": body.decode("latin-1")}
        ).encode()


class HTTPBoundsTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        root = Resource()
        root.putChild(b"trickle", Trickle())
        root.putChild(b"big", Big())
        root.putChild(b"echo", Echo())
        root.putChild(b"moved", Redirect(b"/echo"))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.http = HTTPClient(reactor, timeout=0.5, persistent=False)
        self.addCleanup(self.http.close)

    async def test_body_timeout(self) -> None:
        """
        A body that never ends fails the call at the deadline, as a
        transient error naming the peer.
        """
        with self.assertRaises(TransientError) as caught:
            await self.http.request("GET", self.base + "/trickle", what="Cuckoo test")
        self.assertIn("within 0.5 s", caught.exception.reason)
        self.assertIn("Cuckoo test", caught.exception.reason)

    async def test_announced_too_large(self) -> None:
        """
        A Content-Length over the limit is refused before reading.
        """
        with self.assertRaises(BodyTooLarge) as caught:
            await self.http.request("GET", self.base + "/big", max_body=1000)
        self.assertIn("announced 10000 bytes", caught.exception.reason)

    async def test_counted_too_large(self) -> None:
        """
        A chunked body is counted while it streams into a file and refused
        past the limit.
        """
        sink = io.BytesIO()
        with self.assertRaises(BodyTooLarge):
            await self.http.request("GET", self.base + "/big?chunked=1", max_body=6000, sink=sink)
        self.assertLessEqual(len(sink.getvalue()), 6000)

    async def test_streams_to_sink(self) -> None:
        """
        Within the limit, the body goes to the sink, not memory.
        """
        sink = io.BytesIO()
        response = await self.http.request("GET", self.base + "/big?chunked=1", sink=sink)
        self.assertEqual((response.code, response.body, len(sink.getvalue())), (200, b"", 10000))

    async def test_refused(self) -> None:
        """
        A closed port is L{NotSent}: a transient error, safe to repeat.
        """
        await self.port.stopListening()
        with self.assertRaises(NotSent) as caught:
            await self.http.request("GET", self.base + "/big?token=secret", what="Cuckoo test")
        self.assertIn("Cuckoo test unreachable for GET " + self.base + "/big:", caught.exception.reason)
        self.assertNotIn("secret", caught.exception.reason)

    async def echo(self, method: str = "GET", path: str = "/echo", **kwargs) -> dict:
        response = await self.http.request(method, self.base + path, **kwargs)
        self.assertEqual(response.code, 200)
        return response.json()

    async def test_params(self) -> None:
        """
        Query parameters, a mapping or pairs, are URL-encoded and appended
        to the URL's own query.
        """
        got = await self.echo(params={"status": "reported", "completed_after": "17"})
        self.assertEqual(got["uri"], "/echo?status=reported&completed_after=17")
        got = await self.echo(path="/echo?a=1", params=[("c-md5", "ab cd"), ("file", "1"), ("x", "é&")])
        self.assertEqual(got["uri"], "/echo?a=1&c-md5=ab+cd&file=1&x=%C3%A9%26")

    async def test_headers(self) -> None:
        """
        The caller's headers are sent; no cookie, no Accept-Encoding.
        """
        got = await self.echo(headers={"Authorization": "Bearer t0ken", "X-Many": ["a", "b"], "X-Raw": b"r"})
        self.assertEqual(got["headers"]["authorization"], ["Bearer t0ken"])
        self.assertEqual(got["headers"]["x-many"], ["a", "b"])
        self.assertEqual(got["headers"]["x-raw"], ["r"])
        self.assertNotIn("cookie", got["headers"])
        self.assertNotIn("accept-encoding", got["headers"])

    async def test_form_pairs_and_dict(self) -> None:
        """
        Form data, pairs or a mapping, is URL-encoded with its Content-Type
        (overriding the caller's) and Content-Length.
        """
        got = await self.echo("POST", data=[("b", "1"), ("a", "x y"), ("b", "2")], headers={"Content-Type": "text/plain"})
        self.assertEqual(got["body"], "b=1&a=x+y&b=2")
        self.assertEqual(got["headers"]["content-type"], ["application/x-www-form-urlencoded"])
        self.assertEqual(got["headers"]["content-length"], ["13"])
        got = await self.echo("POST", data={"k": "v", "é": "ü"})
        self.assertEqual(got["body"], "k=v&%C3%A9=%C3%BC")
        self.assertEqual(got["headers"]["content-type"], ["application/x-www-form-urlencoded"])

    async def test_bytes_data(self) -> None:
        """
        C{bytes} data is the body as it is, with the caller's Content-Type
        and a Content-Length; PATCH and a 40 kB body as CRITs gets them.
        """
        body = b"a=" + b"x" * 40000
        got = await self.echo("PATCH", data=body, headers={"Content-Type": "application/json"})
        self.assertEqual((got["method"], got["body"].encode("latin-1")), ("PATCH", body))
        self.assertEqual(got["headers"]["content-type"], ["application/json"])
        self.assertEqual(got["headers"]["content-length"], [str(len(body))])
        got = await self.echo("POST", data=b"")
        self.assertEqual(got["body"], "")
        self.assertNotIn("content-type", got["headers"])

    async def test_multipart(self) -> None:
        """
        Files make a multipart body, the fields first (a mapping's sorted);
        a file object is streamed, bytes go as they are.
        """
        content = bytes(range(256)) * 1200
        fp = io.BytesIO(content)
        got = await self.echo(
            "POST",
            data={"timeout": "120", "priority": "2"},
            files={"file": ("s.exe", "application/octet-stream", fp)},
            headers={"Authorization": "Bearer t"},
        )
        (content_type,) = got["headers"]["content-type"]
        self.assertTrue(content_type.startswith("multipart/form-data; boundary="))
        body = got["body"].encode("latin-1")
        self.assertEqual(got["headers"]["content-length"], [str(len(body))])
        self.assertIn(content, body)
        self.assertLess(body.index(b'name="priority"'), body.index(b'name="timeout"'))
        self.assertLess(body.index(b'name="timeout"'), body.index(b'filename="s.exe"'))
        self.assertEqual(got["headers"]["authorization"], ["Bearer t"])
        got = await self.echo("POST", data=[("md5", "d41d")], files={"filedata": ("d.bin", "application/x-d", b"payload")})
        self.assertIn(b"Content-Type: application/x-d\r\nContent-Length: 7\r\n\r\npayload\r\n", got["body"].encode("latin-1"))

    def test_file_streamed(self) -> None:
        """
        A file object in C{files} (or as C{data}) is read by a streaming
        producer, not into memory beforehand.
        """
        fp = io.BytesIO(b"x" * 200000)
        producer, _ = _body(None, {"file": ("s", "application/octet-stream", fp)})
        (field,) = [f for f in producer._fields if f[0] == "file"]
        self.assertIsInstance(field[1][2], FileBodyProducer)
        self.assertEqual(fp.tell(), 0)
        producer, content_type = _body(io.BytesIO(b"raw"), None)
        self.assertIsInstance(producer, FileBodyProducer)
        self.assertIsNone(content_type)

    async def test_redirect_refused(self) -> None:
        """
        A redirect is a permanent error; it is not followed.
        """
        with self.assertRaises(PermanentError) as caught:
            await self.http.request("POST", self.base + "/moved", data=b"x", what="CRITs test")
        self.assertIn("CRITs test answered 302 (a redirect) to POST", caught.exception.reason)

    async def test_unsupported_scheme(self) -> None:
        """
        A URL whose scheme is not HTTP(S) is an error naming the peer.
        """
        with self.assertRaises(TransientError) as caught:
            await self.http.request("GET", "ftp://127.0.0.1/x", what="Cuckoo test")
        self.assertIn("Cuckoo test unreachable for GET ftp://127.0.0.1/x", caught.exception.reason)


class URLTests(TestCase):
    def test_like_treq(self) -> None:
        """
        The request target is what treq made of the URL and parameters
        (hyperlink's C{to_uri()}): plain URLs as they are, others encoded.
        """
        for url, params in [
            ("http://h:8090/tasks/view/17", None),
            ("https://h/api/v1/samples/5f0c/", None),
            ("http://h/tasks/list", {"status": "reported", "completed_after": "17"}),
            ("http://h/x?y=1", [("c-md5", "a b"), ("é", "/&=")]),
            ("http://h/x?", {"a": "b"}),
            ("http://h/p a/é", {"q": "é"}),
            ("http://bücher.example/x", None),
            ("http://h/a%2Fb;c,d@e!$*'()+~", None),
            ("http://HOST:80/A?b=C", {"d": "E"}),
            ("HTTPS://Crits.Example:443/api/v1/", None),
            ("http://u:p@h:8080/x", None),
            ("http://h", None),
            ("http://h?x=1", {"y": "2"}),
            ("http://h/a%zz/%", None),
        ]:
            expected = EncodedURL.from_text(url)
            if params:
                pairs = params.items() if isinstance(params, dict) else params
                from urllib.parse import quote_plus

                query = tuple((quote_plus(k), quote_plus(v)) for k, v in pairs)
                expected = expected.replace(query=expected.query + query)
            self.assertEqual(_url(url, params), expected.to_uri().to_text().encode("ascii"), url)
            # Again, from the per-peer cache.
            self.assertEqual(_url(url, params), expected.to_uri().to_text().encode("ascii"), url)

    async def test_bad_url(self) -> None:
        """
        A URL hyperlink cannot parse is an error naming the peer, as it
        was under treq.
        """
        http = HTTPClient(Clock(), timeout=5, agent=RequestTraversalAgent(Resource()))
        with self.assertRaises(TransientError) as caught:
            await http.request("GET", "http://h:/x", what="Cuckoo test")
        self.assertIn("Cuckoo test unreachable for GET http://h:/x: port must not be empty", caught.exception.reason)


class EndpointTests(TestCase):
    def test_cached(self) -> None:
        """
        One endpoint per scheme, host and port; for HTTPS the TLS policy is
        asked once.
        """
        asked = []

        class Policy:
            def creatorForNetloc(self, host, port):
                asked.append((host, port))
                from twisted.internet.ssl import CertificateOptions

                return CertificateOptions(verify=False)

        endpoints = _Endpoints(Clock(), Policy(), connect_timeout=15)
        one = endpoints.endpointForURI(URI.fromBytes(b"https://crits.test/api/v1/services/"))
        self.assertIs(endpoints.endpointForURI(URI.fromBytes(b"https://crits.test/other?x=1")), one)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"http://crits.test/")), one)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"https://crits.test:8443/")), one)
        self.assertEqual(asked, [(b"crits.test", 443), (b"crits.test", 8443)])


class AgentTests(TestCase):
    def test_request_traversal_agent(self) -> None:
        """
        Given treq.testing's C{RequestTraversalAgent}, calls go through it,
        form bodies included.
        """
        root = Resource()
        root.putChild(b"echo", Echo())
        http = HTTPClient(Clock(), timeout=5, agent=RequestTraversalAgent(root))
        d = ensureDeferred(http.request("POST", "http://sim.test/echo", params={"a": "1"}, data=b"body", verify=False))
        response = self.successResultOf(d)
        got = response.json()
        self.assertEqual((got["uri"], got["body"]), ("/echo?a=1", "body"))
        self.assertEqual(response.headers[b"Content-Type"], [b"application/json"])


class JSONObjectTests(TestCase):
    def test_json_object(self) -> None:
        """
        A body must be a JSON object; anything else is a transient error
        naming the peer and the call.
        """
        from cuckoodist.http import Response

        self.assertEqual(Response(200, {}, b'{"a": 1}').json_object("Cuckoo x", "for /y"), {"a": 1})
        deep = b"[" * 200_000 + b"]" * 200_000
        for body, words in ((b"<html>", "sent non-JSON for /y"), (b"[1]", "sent unexpected JSON for /y"), (deep, "sent non-JSON for /y")):
            with self.assertRaises(TransientError) as caught:
                Response(502, {}, body).json_object("Cuckoo x", "for /y")
            self.assertEqual(caught.exception.reason, f"Cuckoo x {words}")


class OneAnswerPerConnection(Protocol):
    """
    Answers the first request of a connection, then drops the connection
    when the next one arrives, unanswered: a server closing an idle
    keep-alive connection just as the client reuses it.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) < length:
            return
        self.buffer = body[length:]
        if self.answered:
            self.transport.abortConnection()
            return
        self.answered = True
        self.factory.answered += 1
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


class StaleConnectionTests(TestCase):
    """
    A pooled connection the server has given up on costs an idempotent
    request nothing, and is never a reason to send a POST twice.
    """

    timeout = 20

    def setUp(self) -> None:
        self.factory = Factory.forProtocol(OneAnswerPerConnection)
        self.factory.connections = self.factory.answered = 0
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.http = HTTPClient(reactor, timeout=5)
        self.addCleanup(self.http.close)

    async def test_get_retried_on_a_new_connection(self) -> None:
        await self.http.request("GET", self.base + "/tasks/view/1")
        response = await self.http.request("GET", self.base + "/tasks/view/1")
        self.assertEqual((response.code, self.factory.connections, self.factory.answered), (200, 2, 2))

    async def test_post_not_repeated(self) -> None:
        await self.http.request("GET", self.base + "/cuckoo/status")
        with self.assertRaises(TransientError):
            await self.http.request("POST", self.base + "/tasks/create/file", data=b"sample")
        self.assertEqual((self.factory.connections, self.factory.answered), (1, 1))
