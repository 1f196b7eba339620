"""
HTTP calls are bounded in time (body included) and in memory, against a
real server on loopback.
"""

import io

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from cuckoodist.errors import TransientError
from cuckoodist.http import BodyTooLarge, HTTPClient


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


class HTTPBoundsTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        root = Resource()
        root.putChild(b"trickle", Trickle())
        root.putChild(b"big", Big())
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
        A closed port is a transient error.
        """
        await self.port.stopListening()
        with self.assertRaises(TransientError) as caught:
            await self.http.request("GET", self.base + "/big")
        self.assertIn("unreachable", caught.exception.reason)


class JSONObjectTests(TestCase):
    def test_json_object(self) -> None:
        """
        A body must be a JSON object; anything else is a transient error
        naming the peer and the call.
        """
        from cuckoodist.http import Response

        self.assertEqual(Response(200, {}, b'{"a": 1}').json_object("Cuckoo x", "for /y"), {"a": 1})
        for body, words in ((b"<html>", "sent non-JSON for /y"), (b"[1]", "sent unexpected JSON for /y")):
            with self.assertRaises(TransientError) as caught:
                Response(502, {}, body).json_object("Cuckoo x", "for /y")
            self.assertEqual(caught.exception.reason, f"Cuckoo x {words}")
