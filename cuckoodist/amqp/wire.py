# -*- test-case-name: tests.test_amqp_wire -*-
"""
Frame decoding that survives what RabbitMQ really sends.

txAMQP 0.8.2 decodes field tables with only four of the value types
(C{S I F t}) and turns every long string, message bodies included, into
C{str} whenever the bytes happen to be valid UTF-8.  RabbitMQ puts arrays,
timestamps and 64-bit integers in the C{x-death} header of every
dead-lettered message, and our delay queues dead-letter on purpose, so the
stock decoder would drop the connection on the first retried message.  A
binary sample split across frames could also mix C{str} and C{bytes} and
crash the reader.

This module decodes frames with a codec that knows the whole RabbitMQ field
table grammar and keeps long strings as bytes.  It is used only for
I{incoming} frames; outgoing frames keep txAMQP's encoder, and cuckoodist
never publishes headers, so the encoder's narrow table support is enough.
"""

from decimal import Decimal
from io import BytesIO
from typing import Any, Callable

from txamqp.codec import Codec
from txamqp.connection import Frame, Header
from txamqp.spec import Spec, pythonize

__all__ = ["WireCodec", "unpack_frame"]


class WireCodec(Codec):
    """
    A txAMQP codec that decodes every field-table value type RabbitMQ uses
    and returns long strings as C{bytes}.
    """

    def decode_longstr(self) -> bytes:
        """
        Long strings carry message bodies and opaque binary values: keep
        them as bytes rather than guessing at an encoding.
        """
        return self.dec_bytes("!L")

    def decode_table(self) -> dict[str, Any]:
        """
        Decode a field table with RabbitMQ's type codes (its errata to
        AMQP 0-9-1), including arrays, timestamps and nested tables.
        """
        size = self.decode_long()
        start = self.nread
        table = {}
        while self.nread - start < size:
            key = self.decode_shortstr()
            table[key] = self._decode_value()
        return table

    def _decode_array(self) -> list[Any]:
        size = self.decode_long()
        start = self.nread
        values = []
        while self.nread - start < size:
            values.append(self._decode_value())
        return values

    def _decode_decimal(self) -> Decimal:
        scale = self.unpack("!B")
        value = self.unpack("!i")
        return Decimal(value).scaleb(-scale)

    def _decode_value(self) -> Any:
        code = self.read(1)
        try:
            decoder = _VALUE_DECODERS[code]
        except KeyError:
            raise ValueError(f"unknown AMQP field type {code!r}") from None
        return decoder(self)


_VALUE_DECODERS: dict[bytes, Callable[[WireCodec], Any]] = {
    b"t": lambda c: c.unpack("!B") != 0,
    b"b": lambda c: c.unpack("!b"),
    b"B": lambda c: c.unpack("!B"),
    b"s": lambda c: c.unpack("!h"),
    b"u": lambda c: c.unpack("!H"),
    b"I": lambda c: c.unpack("!i"),
    b"i": lambda c: c.unpack("!I"),
    b"l": lambda c: c.unpack("!q"),
    b"L": lambda c: c.unpack("!Q"),
    b"f": lambda c: c.unpack("!f"),
    b"d": lambda c: c.unpack("!d"),
    b"D": WireCodec._decode_decimal,
    b"S": lambda c: c.dec_str("!L"),
    b"x": lambda c: c.dec_bytes("!L"),
    b"A": WireCodec._decode_array,
    b"T": lambda c: c.unpack("!Q"),
    b"F": WireCodec.decode_table,
    b"V": lambda c: None,
}


def _decode_header(spec: Spec, codec: WireCodec) -> Header:
    """
    Decode a content header frame's payload, reading the properties (the
    C{headers} table among them) with L{WireCodec}.
    """
    inner = WireCodec(BytesIO(codec.dec_bytes("!L")))
    klass = spec.classes.byid[inner.decode_short()]
    weight = inner.decode_short()
    size = inner.decode_longlong()
    present = []
    while True:
        flags = inner.decode_short()
        present.extend(bool(flags >> bit & 1) for bit in range(15, 0, -1))
        if not flags & 1:
            break
    properties = {}
    for is_present, field in zip(present, klass.fields):
        if is_present:
            properties[str(field.name)] = inner.decode(field.type)
    return Header(klass, weight, size, **properties)


def unpack_frame(spec: Spec, data: bytes, frame_end: int) -> Frame:
    """
    Decode one complete frame.

    @param spec: the loaded protocol spec.
    @param data: the frame's bytes, end octet included.
    @param frame_end: the spec's frame-end octet.
    @raise ValueError: for a malformed frame; the connection is then
        unusable and is dropped by the caller.
    """
    codec = WireCodec(BytesIO(data))
    frame_type = pythonize(spec.constants.byid[codec.decode_octet()].name)
    channel = codec.decode_short()
    if frame_type == Frame.HEADER:
        payload = _decode_header(spec, codec)
    else:
        payload = Frame.DECODERS[frame_type].decode(spec, codec)
    end = codec.decode_octet()
    if end != frame_end:
        raise ValueError(f"frame error: expected end octet {frame_end}, got {end}")
    return Frame(channel, payload)
