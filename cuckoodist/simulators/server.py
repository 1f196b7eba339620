# -*- test-case-name: tests.test_sim_cuckoo -*-
"""
Plumbing shared by the Cuckoo and CRITs simulators.

Two jobs live here and nowhere else:

  - L{SimulatorServer} puts a simulator's resource on a real TCP port of the
    loopback interface and can take it off and put it back on the same port,
    which is how end-to-end tests simulate "the sandbox is down for 20 s".
  - Small request/response helpers both simulators need: a bounded multipart
    parser that keeps file names (Twisted's own parser drops them), query
    string access that ignores the body, request counting, seeded failure
    injection, and response bodies that trickle out on an injected clock.

Nothing here touches the global reactor: the caller passes it in.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

import attrs
import multipart
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "SimulatorServer",
    "FaultInjector",
    "Form",
    "FormError",
    "RequestCounter",
    "parse_form",
    "query_args",
    "read_body",
    "send_body",
    "request_path",
    "header",
    "parse_control",
    "check_fraction",
    "check_non_negative",
]

#: Bodies of C{/_sim/control} requests are tiny JSON documents.
CONTROL_BODY_LIMIT = 64 * 1024


class FormError(Exception):
    """
    A request body that is not a well-formed form of the announced type.
    """


@attrs.frozen
class Form:
    """
    A decoded form body.

    @ivar fields: text fields, name -> values in order of appearance.
    @ivar files: file fields, name -> C{(filename, content)} in order.
    """

    fields: Mapping[str, list[str]] = attrs.field(factory=dict)
    files: Mapping[str, list[tuple[str, bytes]]] = attrs.field(factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """
        @return: the first value of text field C{name}, like Flask's and
            Django's C{form.get}, or C{default} when it is absent.
        """
        values = self.fields.get(name)
        return values[0] if values else default

    def __contains__(self, name: object) -> bool:
        return name in self.fields


def header(request: Request, name: bytes) -> str | None:
    """
    @return: the first value of request header C{name}, decoded as latin-1
        (what HTTP headers are on the wire), or L{None}.
    """
    value = request.requestHeaders.getRawHeaders(name)
    if not value:
        return None
    return value[0].decode("latin-1")


def request_path(request: Request) -> str:
    """
    @return: the request's path without the query string, as text.
    """
    path = request.uri.split(b"?", 1)[0]
    return path.decode("latin-1")


def query_args(request: Request) -> dict[str, list[str]]:
    """
    Parse only the query string.

    Twisted merges POSTed form fields into C{request.args}; the emulated
    servers (Flask's C{request.args}, Django's C{request.GET}) do not, and the
    difference matters for CRITs, where credentials in the body are treated
    differently from credentials in the URL.
    """
    parts = request.uri.split(b"?", 1)
    if len(parts) == 1:
        return {}
    return parse_qs(parts[1].decode("latin-1"), keep_blank_values=True)


def body_length(request: Request) -> int:
    """
    @return: how many body bytes the request carried.
    """
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, io.SEEK_END)
    size = content.tell()
    content.seek(position)
    return size


def read_body(request: Request, limit: int) -> bytes | None:
    """
    @return: the whole body, or L{None} when it is longer than C{limit}
        bytes (the caller then answers with an error instead of reading it).
    """
    if body_length(request) > limit:
        return None
    request.content.seek(0)
    return request.content.read()


def content_type(request: Request) -> tuple[str, dict[str, str]]:
    """
    @return: the media type (lower case) and its parameters.
    """
    raw = header(request, b"content-type") or ""
    media, options = multipart.parse_options_header(raw)
    return media.lower(), options


def parse_form(
    request: Request,
    *,
    max_parts: int = 64,
    max_file_size: int = 64 * 1024 * 1024,
    max_field_size: int = 4 * 1024 * 1024,
) -> Form:
    """
    Decode a C{multipart/form-data} or C{application/x-www-form-urlencoded}
    body, keeping file names.

    Every limit is enforced while parsing, so a hostile body costs at most
    C{max_parts * max(max_field_size, max_file_size)} bytes of memory and
    disk.

    @raise FormError: the body does not parse, breaks a limit, or is of
        another media type.
    """
    media, options = content_type(request)
    if media == "application/x-www-form-urlencoded":
        body = read_body(request, max_field_size)
        if body is None:
            raise FormError("form body too large")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return Form(fields=fields)
    if media != "multipart/form-data":
        raise FormError(f"not a form: {media or 'no content type'}")
    boundary = options.get("boundary")
    if not boundary:
        raise FormError("multipart body without a boundary")
    fields: dict[str, list[str]] = {}
    files: dict[str, list[tuple[str, bytes]]] = {}
    request.content.seek(0)
    parser = multipart.MultipartParser(
        request.content,
        boundary,
        content_length=body_length(request),
        part_limit=max_parts,
        partsize_limit=max(max_file_size, max_field_size),
        memory_limit=max(max_file_size, max_field_size),
        spool_limit=1024 * 1024,
    )
    try:
        for part in parser:
            try:
                if part.filename is not None:
                    if part.size > max_file_size:
                        raise FormError("file part too large")
                    files.setdefault(part.name, []).append((part.filename, part.raw))
                else:
                    if part.size > max_field_size:
                        raise FormError("text field too large")
                    fields.setdefault(part.name, []).append(part.value)
            finally:
                part.close()
    except multipart.MultipartError as e:
        raise FormError(f"malformed multipart body: {e}") from e
    except UnicodeDecodeError as e:
        raise FormError("text field is not UTF-8") from e
    return Form(fields=fields, files=files)


@attrs.define
class RequestCounter:
    """
    How many requests each route received, for C{/_sim/state}.
    """

    counts: dict[str, int] = attrs.field(factory=dict)

    def hit(self, route: str) -> None:
        self.counts[route] = self.counts.get(route, 0) + 1


class FaultInjector:
    """
    The failure knobs both simulators share.

    @ivar fail_rate: the share (0..1) of API requests answered with a 500.
    @ivar slow_body_seconds: how long a slow body takes to trickle out;
        C{0} sends bodies at once.
    """

    def __init__(self, *, fail_rate: float, slow_body_seconds: float, seed: int) -> None:
        self.fail_rate = check_fraction("fail_rate", fail_rate)
        self.slow_body_seconds = check_non_negative("slow_body_seconds", slow_body_seconds)
        self._random = random.Random(seed)

    def should_fail(self) -> bool:
        """
        Draw once from the seeded generator: the same seed and request order
        give the same failures, so a flaky-looking test is reproducible.
        """
        if self.fail_rate <= 0:
            return False
        return self._random.random() < self.fail_rate


def check_fraction(name: str, value: Any) -> float:
    """
    @raise ValueError: C{value} is not a number between 0 and 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """
    @raise ValueError: C{value} is not a number >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return float(value)


def send_body(
    request: Request,
    clock: IReactorTime,
    body: bytes,
    slow_seconds: float,
    chunks: int = 10,
) -> bytes | int:
    """
    Answer with C{body}, at once or trickled across C{slow_seconds}.

    A trickled body sends the status line and headers (with the full
    C{Content-Length}) at once and then writes C{chunks} pieces at equal
    intervals on C{clock}, so a client sees a live but slow peer rather
    than a dead one.  If the client goes away,
    the remaining writes are cancelled.

    @return: what a C{render} method returns: C{body} or C{NOT_DONE_YET}.
    """
    if slow_seconds <= 0 or not body:
        return body
    request.setHeader(b"content-length", b"%d" % (len(body),))
    size = -(-len(body) // chunks)
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    interval = slow_seconds / len(pieces)
    start = clock.seconds()
    pending: list[IDelayedCall] = []
    written = [0]

    def schedule() -> None:
        # Aim at absolute times, so a test clock advanced in one big step
        # still delivers every piece that is due.
        due = start + interval * (written[0] + 1)
        pending.append(clock.callLater(max(0.0, due - clock.seconds()), write_next))

    def write_next() -> None:
        pending.clear()
        request.write(pieces[written[0]])
        written[0] += 1
        if written[0] < len(pieces):
            schedule()
        else:
            request.finish()

    def gone(_reason: object) -> None:
        for call in pending:
            if call.active():
                call.cancel()
        pending.clear()

    request.notifyFinish().addErrback(gone)
    request.write(b"")  # the status line and headers go out now
    schedule()
    return NOT_DONE_YET


def parse_control(
    request: Request, settings_by_name: Mapping[str, Callable[[Any], Callable[[], None]]]
) -> tuple[int, dict[str, str] | None]:
    """
    Apply a C{POST /_sim/control} JSON body.

    @param settings_by_name: for each accepted key, a function that
        validates a value (raising L{ValueError} or L{TypeError}) and returns
        a thunk that applies it.  Everything is validated before anything is
        applied, so a bad request changes nothing.
    @return: C{(200, None)} on success, or an HTTP status and an error dict.
    """
    body = read_body(request, CONTROL_BODY_LIMIT)
    if body is None:
        return 413, {"message": "control body too large"}
    try:
        settings = json.loads(body or b"{}")
    except ValueError:
        return 400, {"message": "control body is not JSON"}
    if not isinstance(settings, dict):
        return 400, {"message": "control body must be a JSON object"}
    unknown = sorted(set(settings) - set(settings_by_name))
    if unknown:
        return 400, {"message": "unknown setting: " + ", ".join(unknown)}
    appliers = []
    for key in sorted(settings):
        try:
            appliers.append(settings_by_name[key](settings[key]))
        except (TypeError, ValueError) as e:
            return 400, {"message": f"{key}: {e}"}
    for apply in appliers:
        apply()
    return 200, None


class SimulatorServer:
    """
    A simulator's resource listening on a TCP port of one interface.

    The port can be closed and reopened: L{stop_listening} also drops the
    connections that are open (a crashed server does not finish its
    answers), and L{start_listening} binds the same port number again.

    @ivar url: C{http://host:port} once listening.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        resource: IResource,
        *,
        port: int = 0,
        interface: str = "127.0.0.1",
    ) -> None:
        self._reactor = reactor
        self._interface = interface
        self._port_number = port
        # The simulators parse bodies themselves (keeping file names, with
        # limits), so Twisted need not parse them into request.args first.
        site = Site(resource, parsePOSTFormSubmission=False)
        site.noisy = False
        # No access log: CRITs clients may put api_key in the query string.
        site.log = lambda request: None
        self._factory = WrappingFactory(site)
        self._factory.noisy = False
        self._listening = None

    @property
    def port(self) -> int:
        """
        The bound port number (the requested one until first bound).
        """
        return self._port_number

    @property
    def url(self) -> str:
        """
        The base URL clients should use.
        """
        host = self._interface
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port_number}"

    @property
    def listening(self) -> bool:
        """
        Whether the port is open now.
        """
        return self._listening is not None

    def start_listening(self) -> int:
        """
        Open the port; the first call with port 0 picks a free port and every
        later call reuses it.

        @return: the bound port number.
        @raise twisted.internet.error.CannotListenError: the port is taken.
        """
        if self._listening is None:
            self._listening = self._reactor.listenTCP(
                self._port_number, self._factory, interface=self._interface
            )
            self._port_number = self._listening.getHost().port
        return self._port_number

    def stop_listening(self, drop_connections: bool = True) -> Deferred[None]:
        """
        Close the port, refusing new connections.

        @param drop_connections: also abort the connections already open, as
            a crashed or restarted server would.
        @return: fires once the port is closed.
        """
        if drop_connections:
            for protocol in list(self._factory.protocols):
                transport = protocol.transport
                if transport is not None:
                    transport.abortConnection()
        if self._listening is None:
            return succeed(None)
        listening, self._listening = self._listening, None
        return Deferred.fromCoroutine(_await(listening.stopListening()))

    def close(self) -> Deferred[None]:
        """
        Stop for good: close the port and every connection.
        """
        return self.stop_listening(drop_connections=True)


async def _await(result: Any) -> None:
    """
    Await C{result} if it is a Deferred (C{stopListening} may return
    L{None}).
    """
    if isinstance(result, Deferred):
        await result
