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


class EncodingTests(SynchronousTestCase):
    """
    Outgoing frames count string lengths in UTF-8 bytes and refuse what
    cannot be framed, naming the field but not quoting the value.
    """

    def setUp(self) -> None:
        self.spec = load_amqp_spec()
        self.declare = self.spec.classes.byname["queue"].methods.byname["declare"]

    def frame(self, *args: object) -> bytes:
        from txamqp.connection import Frame, Method

        from cuckoodist.amqp.wire import pack_frame

        return pack_frame(self.spec, Frame(1, Method(self.declare, *args)), 206)

    def test_ascii_frames_match_txamqp(self) -> None:
        """
        For what txAMQP encodes correctly, the bytes are the same.
        """
        from io import BytesIO

        from txamqp.codec import Codec
        from txamqp.connection import Method

        args = (0, "work/queue", False, True, False, False, False, {"x-dead-letter-exchange": "dlx"})
        out = BytesIO()
        codec = Codec(out)
        codec.encode_octet(1)
        codec.encode_short(1)
        Method(self.declare, *args).encode(codec)
        codec.encode_octet(206)
        self.assertEqual(self.frame(*args), out.getvalue())

    def test_utf8_length(self) -> None:
        """
        A non-ASCII queue name is framed with its length in bytes.
        """
        name = "queue-\u00e9\u4e2d"
        data = self.frame(0, name, False, True, False, False, False, {})
        encoded = name.encode("utf-8")
        self.assertIn(bytes([len(encoded)]) + encoded, data)

    def test_too_long_refused(self) -> None:
        """
        A 256-byte shortstr (here 128 two-byte characters) is refused with
        a reason naming the method and field, without the value.
        """
        from cuckoodist.amqp.wire import UnframeableValue

        name = "\u00e9" * 128
        e = self.assertRaises(UnframeableValue, self.frame, 0, name, False, True, False, False, False, {})
        self.assertIn("queue.declare field 'queue'", str(e))
        self.assertIn("this one is 256", str(e))
        self.assertNotIn("\u00e9", str(e))
        self.frame(0, "\u00e9" * 127, False, True, False, False, False, {})

    def test_surrogate_and_table_values_refused(self) -> None:
        """
        A lone surrogate and a table value of an unsupported type are
        refused as L{UnframeableValue}, not as a codec crash.
        """
        from cuckoodist.amqp.wire import UnframeableValue

        self.assertRaises(UnframeableValue, self.frame, 0, "q\udc80", False, True, False, False, False, {})
        self.assertRaises(UnframeableValue, self.frame, 0, "q", False, True, False, False, False, {"x": object()})
        self.assertRaises(UnframeableValue, self.frame, 0, "q", False, True, False, False, False, {"x": 2**70})

    def test_table_types(self) -> None:
        """
        Tables carry booleans, 64-bit integers, nested tables and arrays,
        and decode back to the same values.
        """
        from io import BytesIO

        from cuckoodist.amqp.wire import WireCodec

        table = {"b": True, "big": 2**40, "neg": -5, "s": "\u00e9", "t": {"k": 1}, "a": [1, "x"], "n": None}
        out = WireCodec(BytesIO())
        out.encode_table(table)
        decoded = WireCodec(BytesIO(out.stream.getvalue())).decode_table()
        self.assertEqual(decoded, table)
