"""
Frame decoding copes with what RabbitMQ puts on dead-lettered messages.
"""

import struct

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.connection import load_amqp_spec
from cuckoodist.amqp.wire import unpack_frame


def shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


def table(items: bytes) -> bytes:
    return struct.pack("!I", len(items)) + items


class HeaderFrameTests(SynchronousTestCase):
    def test_x_death_header(self) -> None:
        """
        A content header whose headers table holds an x-death array of
        tables with longs, timestamps and strings decodes instead of
        killing the connection (txAMQP's own codec raises here).
        """
        spec = load_amqp_spec()
        death = table(
            shortstr(b"count") + b"l" + struct.pack("!q", 3)
            + shortstr(b"reason") + b"S" + struct.pack("!I", 7) + b"expired"
            + shortstr(b"time") + b"T" + struct.pack("!Q", 1700000000)
        )
        array = b"F" + death
        headers = table(shortstr(b"x-death") + b"A" + struct.pack("!I", len(array)) + array
                        + shortstr(b"flag") + b"t\x01")
        # property flags: content-type (bit 15), headers (bit 13), delivery-mode (bit 12)
        flags = (1 << 15) | (1 << 13) | (1 << 12)
        props = shortstr(b"application/json") + headers + b"\x02"
        payload = struct.pack("!HHQH", 60, 0, 5, flags) + props
        frame = b"\x02" + struct.pack("!H", 1) + struct.pack("!I", len(payload)) + payload + b"\xce"
        decoded = unpack_frame(spec, frame, 206)
        self.assertEqual(decoded.payload.properties["delivery-mode"], 2)
        death_entry = decoded.payload.properties["headers"]["x-death"][0]
        self.assertEqual(death_entry, {"count": 3, "reason": "expired", "time": 1700000000})
        self.assertIs(decoded.payload.properties["headers"]["flag"], True)

    def test_body_stays_bytes(self) -> None:
        """
        Body frames are bytes even when they happen to be valid UTF-8.
        """
        spec = load_amqp_spec()
        body = b'{"a": 1}'
        frame = b"\x03" + struct.pack("!H", 1) + struct.pack("!I", len(body)) + body + b"\xce"
        self.assertEqual(unpack_frame(spec, frame, 206).payload.content, body)

    def test_bad_end_octet(self) -> None:
        """
        A frame with a wrong end octet is rejected.
        """
        spec = load_amqp_spec()
        frame = b"\x03" + struct.pack("!H", 1) + struct.pack("!I", 1) + b"x" + b"\x00"
        self.assertRaises(ValueError, unpack_frame, spec, frame, 206)


class DescribeCloseTests(SynchronousTestCase):
    def test_broker_close(self) -> None:
        """
        A broker's close method, bare, wrapped in txAMQP's exception or in a
        Failure, reads as its reply code and text.
        """
        from twisted.python.failure import Failure
        from txamqp.client import ChannelClosed
        from txamqp.message import Message

        from cuckoodist.amqp.protocol import describe_close

        close = load_amqp_spec().classes.byname["channel"].methods.byname["close"]
        message = Message(close, [406, "PRECONDITION_FAILED - delivery acknowledgement timed out", 0, 0])
        expected = "406 PRECONDITION_FAILED - delivery acknowledgement timed out"
        for reason in (message, ChannelClosed(message), Failure(ChannelClosed(message))):
            self.assertEqual(describe_close(reason), expected)
        self.assertEqual(describe_close(ValueError()), "ValueError")
