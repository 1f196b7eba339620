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
table grammar and keeps long strings as bytes.

It also encodes every outgoing frame (L{pack_frame}).  txAMQP frames a
string with its length in I{characters}: a non-ASCII queue name then makes
the broker answer C{501 FRAME_ERROR} and drop the connection, and a name
over 255 bytes raises C{struct.error} inside txAMQP's writer, which then
never writes again.  Here lengths are counted in UTF-8 bytes, and a value
that cannot be framed raises L{UnframeableValue} naming the method and
field (never quoting the value, which may be hostile), so that callers can
check a frame before anything reaches the wire.
"""

from decimal import Decimal
from io import BytesIO
from typing import Any, Callable

from struct import error as StructError

from txamqp.codec import Codec
from txamqp.connection import Body, Frame, Header, Heartbeat, Method
from txamqp.spec import Spec, pythonize

from cuckoodist.errors import PermanentError

__all__ = ["UnframeableValue", "WireCodec", "pack_frame", "unpack_frame"]

#: The largest C{shortstr}: its length is one octet.
MAX_SHORTSTR_BYTES = 255


class UnframeableValue(PermanentError, ValueError):
    """
    A value cannot be put in an AMQP frame: a string over 255 bytes where a
    C{shortstr} is required, a string that is not valid Unicode, a number
    out of range, a type field tables cannot carry.  Retrying cannot help,
    so this is a L{PermanentError}; it is raised before anything is
    written, so the connection stays usable.
    """


def _utf8(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise UnframeableValue(f"{what} must be a string, not {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnframeableValue(f"{what} is not valid Unicode (it holds a lone surrogate)") from None


class WireCodec(Codec):
    """
    A txAMQP codec that decodes every field-table value type RabbitMQ uses
    and returns long strings as C{bytes}.
    """

    def enc_str(self, fmt: str, s: object) -> None:
        """
        Frame a string with its length in UTF-8 bytes (txAMQP counts
        characters), refusing what the length field cannot hold.
        """
        data = _utf8(s, "a shortstr" if fmt == "!B" else "a longstr")
        limit = MAX_SHORTSTR_BYTES if fmt == "!B" else 0xFFFFFFFF
        if len(data) > limit:
            raise UnframeableValue(f"a shortstr is at most {limit} bytes of UTF-8, this one is {len(data)}")
        self.pack(fmt, len(data))
        self.write(data)

    def enc_bytes(self, fmt: str, s: object) -> None:
        self.enc_str(fmt, s)

    def encode_table(self, table: object) -> None:
        """
        Encode a field table with RabbitMQ's type codes: strings, bytes,
        booleans, integers (32 or 64 bits as needed), floats, nested
        tables and arrays, and C{None}.
        """
        if not isinstance(table, dict):
            raise UnframeableValue(f"a field table must be a dict, not {type(table).__name__}")
        inner = WireCodec(BytesIO())
        for key, value in table.items():
            inner.encode_shortstr(key)
            inner._encode_value(value)
        self.enc_bytes("!L", inner.stream.getvalue())

    def _encode_value(self, value: object) -> None:
        if isinstance(value, bool):
            self.write(b"t")
            self.pack("!B", int(value))
        elif isinstance(value, int):
            if -(2**31) <= value < 2**31:
                self.write(b"I")
                self.pack("!i", value)
            elif -(2**63) <= value < 2**63:
                self.write(b"l")
                self.pack("!q", value)
            else:
                raise UnframeableValue("a field table integer must fit in 64 bits")
        elif isinstance(value, float):
            self.write(b"d")
            self.pack("!d", value)
        elif isinstance(value, str):
            self.write(b"S")
            self.enc_str("!L", value)
        elif isinstance(value, bytes):
            self.write(b"x")
            self.enc_str("!L", value)
        elif isinstance(value, dict):
            self.write(b"F")
            self.encode_table(value)
        elif isinstance(value, (list, tuple)):
            inner = WireCodec(BytesIO())
            for item in value:
                inner._encode_value(item)
            self.write(b"A")
            self.enc_bytes("!L", inner.stream.getvalue())
        elif value is None:
            self.write(b"V")
        else:
            raise UnframeableValue(f"field tables cannot carry a {type(value).__name__}")

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


def _encode_fields(codec: WireCodec, what: str, fields: Any, values: Any) -> None:
    for field, value in zip(fields, values):
        try:
            codec.encode(field.type, value)
        except UnframeableValue as e:
            raise UnframeableValue(f"{what} field {field.name!r}: {e.reason}") from None
        except (StructError, TypeError, OverflowError) as e:
            raise UnframeableValue(f"{what} field {field.name!r} cannot be framed as {field.type}: {e}") from None
    codec.flush()


def _encode_method(payload: Method) -> bytes:
    codec = WireCodec(BytesIO())
    codec.encode_short(payload.method.klass.id)
    codec.encode_short(payload.method.id)
    what = f"{payload.method.klass.name}.{payload.method.name}"
    _encode_fields(codec, what, payload.method.fields, payload.args)
    return codec.stream.getvalue()


def _encode_header(payload: Header) -> bytes:
    codec = WireCodec(BytesIO())
    codec.encode_short(payload.klass.id)
    codec.encode_short(payload.weight)
    codec.encode_longlong(payload.size)
    fields = list(payload.klass.fields)
    unknown = set(payload.properties) - {f.name for f in fields}
    if unknown:
        raise UnframeableValue(f"unknown message properties: {', '.join(sorted(map(str, unknown)))}")
    present = [f for f in fields if payload.properties.get(f.name) is not None]
    # Property flags: 15 presence bits per short, the lowest bit says
    # another flags short follows.
    for start in range(0, max(len(fields), 1), 15):
        flags = 0
        for offset, f in enumerate(fields[start:start + 15]):
            if f in present:
                flags |= 1 << (15 - offset)
        if start + 15 < len(fields):
            flags |= 1
        codec.encode_short(flags)
    _encode_fields(codec, f"{payload.klass.name} properties", present, [payload.properties[f.name] for f in present])
    return codec.stream.getvalue()


def pack_frame(spec: Spec, frame: Frame, frame_end: int) -> bytes:
    """
    Encode one frame, end octet included.

    @raise UnframeableValue: a value in it cannot be framed; nothing was
        written anywhere.
    """
    payload = frame.payload
    if isinstance(payload, Method):
        body = _encode_method(payload)
    elif isinstance(payload, Header):
        body = _encode_header(payload)
    elif isinstance(payload, Body):
        body = _utf8(payload.content, "a message body")
    elif isinstance(payload, Heartbeat):
        body = b""
    else:
        raise UnframeableValue(f"unknown frame payload {type(payload).__name__}")
    codec = WireCodec(BytesIO())
    codec.encode_octet(spec.constants.bypyname[payload.type].id)
    codec.encode_short(frame.channel)
    codec.pack("!L", len(body))
    codec.write(body)
    codec.encode_octet(frame_end)
    return codec.stream.getvalue()
