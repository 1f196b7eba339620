# -*- test-case-name: tests.test_dashboard -*-
"""
The dashboard's web pages, as L{twisted.web} resources under
C{/dashboard/} of the operations listener.

  - C{GET /dashboard/}: the page; C{/dashboard/static/<file>}: its script
    and style sheet, from a fixed list (no directory listing, no path
    ever built from the request).
  - C{GET /dashboard/api/state} and C{/dashboard/api/history}: JSON,
    polled by the page (L{cuckoodist.dashboard.state},
    L{cuckoodist.dashboard.history}).
  - C{POST /dashboard/api/resubmit}: C{{"files": [names]}} or
    C{{"all": true}}; the one action that changes anything.

Read-only views are open: the listener is on the loopback interface by
default.  Resubmitting needs the configured C{dashboard.token} as
C{Authorization: Bearer} (401 without it), and a request a cross-site
page cannot make (403 otherwise): C{Content-Type: application/json}, the
header C{X-Cuckoodist-CSRF: 1}, and, when the browser says where it came
from (C{Origin}, C{Sec-Fetch-Site}), this very origin.  A form or an
image on another site can set none of these, and a script there cannot
send them without a CORS preflight, which nothing here answers.

Every answer forbids framing and inline script (C{Content-Security-
Policy}), content sniffing and referrers; API answers are never cached.
A connection that came in on a loopback address must also name a
loopback host: a page whose DNS name was rebound to 127.0.0.1 would
otherwise read the state from the user's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from importlib.resources import files
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cuckoodist.dashboard.resubmit import BrokerUnavailable, Busy

__all__ = ["DashboardPage", "SECURITY_HEADERS", "STATIC_FILES", "root_redirect"]

log = Logger()

#: Headers on every dashboard answer.
SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}

#: The only files served, by name: the page and what it loads.
STATIC_FILES = {
    b"dashboard.js": b"text/javascript; charset=utf-8",
    b"dashboard.css": b"text/css; charset=utf-8",
}

#: The largest resubmit request body read.
_MAX_BODY = 256 * 1024
#: The most files one resubmit request may name.
_MAX_FILES = 10_000
#: The header a cross-site form cannot set.
CSRF_HEADER = b"X-Cuckoodist-CSRF"


def _static(name: str) -> bytes:
    return (files("cuckoodist.dashboard") / "static" / name).read_bytes()


def _secure(request: Request) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def _json(request: Request, code: int, document: Any) -> bytes:
    _secure(request)
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: bytes | None) -> str:
    """
    The host part of a C{Host} header, without the port.
    """
    value = (header or b"").decode("latin-1").strip()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _rebound(request: Request) -> bool:
    """
    Whether a request came in on a loopback address but names another
    host: the mark of a DNS rebinding attack (or a misdirected request).
    """
    local = getattr(request.getHost(), "host", None)
    if not isinstance(local, str) or not _is_loopback(local):
        return False
    return not _is_loopback(_host_name(request.getHeader(b"host")))


class _Guarded(Resource):
    """
    A dashboard resource: refuses rebound requests, sets the security
    headers.
    """

    def render(self, request: Request) -> Any:
        if _rebound(request):
            return _json(request, 421, {"error": "this dashboard answers to a loopback host name only"})
        _secure(request)
        return super().render(request)


class _File(_Guarded):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._body


class _NotFound(_Guarded):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "not found"})

    render_POST = render_GET


class _Folder(_Guarded):
    """
    A folder of fixed children; anything else, and the folder itself, is
    not found (no listing).
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "not found"})


class _Static(_Folder):
    """
    C{/dashboard/static/<file>}: L{STATIC_FILES} only, read once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._files = {name: _File(_static(name.decode()), kind) for name, kind in STATIC_FILES.items()}

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self._files.get(path) or _NotFound()


class _Redirect(Resource):
    """
    A relative redirect, so that the page also works behind a proxy that
    serves it under another prefix.
    """

    isLeaf = True

    def __init__(self, location: bytes) -> None:
        super().__init__()
        self._location = location

    def render(self, request: Request) -> bytes:
        _secure(request)
        request.setResponseCode(302)
        request.setHeader(b"Location", self._location)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"see " + self._location + b"\n"


def root_redirect() -> Resource:
    """
    What C{/} answers: a redirect to the dashboard.
    """
    return _Redirect(b"dashboard/")


class _JSONPage(_Guarded):
    isLeaf = True

    def __init__(self, document: Callable[[], Any]) -> None:
        super().__init__()
        self._document = document

    def render_GET(self, request: Request) -> Any:
        document = self._document()
        if not isinstance(document, Deferred):
            return _json(request, 200, document)
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def answer(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                log.failure("Building a dashboard document failed", outcome)
                code, outcome = 500, {"error": "see the daemon's log"}
            else:
                code = 200
            if not finished:
                request.write(_json(request, code, outcome))
                request.finish()

        document.addBoth(answer)
        return NOT_DONE_YET


class _ResubmitPage(_Guarded):
    """
    C{POST /dashboard/api/resubmit}.
    """

    isLeaf = True

    def __init__(self, resubmitter: Any, token: str) -> None:
        super().__init__()
        self._resubmitter = resubmitter
        self._token = token.encode("utf-8")

    def render_POST(self, request: Request) -> Any:
        if not self._token:
            return _json(request, 403, {"error": "resubmitting is disabled: no dashboard.token is configured"})
        refused = _cross_site(request)
        if refused:
            return _json(request, 403, {"error": f"refused as a possible cross-site request: {refused}"})
        if not self._authorised(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="cuckoodist"')
            return _json(request, 401, {"error": "a valid dashboard token is required"})
        names, problem = _wanted(request)
        if problem:
            return _json(request, 400, {"error": problem})
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        async def run() -> None:
            try:
                complete, outcome = await self._resubmitter.resubmit(names)
                code, document = (200, outcome) if complete else (503, {**outcome, "error": "the broker did not confirm everything in time"})
            except Busy:
                code, document = 409, {"error": "another resubmission is under way; try again when it is done"}
            except BrokerUnavailable:
                code, document = 503, {"error": "the daemon is not connected to RabbitMQ; nothing was resubmitted"}
            except Exception:
                log.failure("Resubmitting from the dashboard failed")
                code, document = 500, {"error": "resubmitting failed; see the daemon's log"}
            if not finished:
                request.write(_json(request, code, document))
                request.finish()

        Deferred.fromCoroutine(run())
        return NOT_DONE_YET

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Allow", b"POST")
        return _json(request, 405, {"error": "POST only"})

    def _authorised(self, request: Request) -> bool:
        given = request.getHeader(b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)


def _cross_site(request: Request) -> str:
    """
    Why the request may come from another site, C{""} when it cannot.
    """
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/json":
        return "the body must be sent as application/json"
    if request.getHeader(CSRF_HEADER) != b"1":
        return f"the {CSRF_HEADER.decode()} header is missing"
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site.lower() != b"same-origin":
        return f"Sec-Fetch-Site is {site.decode('latin-1')!r}"
    origin = request.getHeader(b"origin")
    if origin is not None:
        scheme = b"https" if request.isSecure() else b"http"
        if origin.lower() != scheme + b"://" + (request.getHeader(b"host") or b"").lower():
            return "the Origin is not this dashboard"
    return ""


def _wanted(request: Request) -> tuple[list[str] | None, str]:
    """
    The files a resubmit request names (C{None}: all), or why it is bad.
    """
    body = request.content.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        return None, "the request is too large"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None, "the body is not JSON"
    if isinstance(doc, dict) and doc.get("all") is True and "files" not in doc:
        return None, ""
    listed = doc.get("files") if isinstance(doc, dict) else None
    if (
        not isinstance(listed, list)
        or not listed
        or len(listed) > _MAX_FILES
        or not all(isinstance(name, str) and 0 < len(name) <= 255 for name in listed)
    ):
        return None, 'send {"files": [file names]} or {"all": true}'
    return listed, ""


class DashboardPage(_Folder):
    """
    C{/dashboard/}: the page, its static files and its API.

    @param state: builds the state document.
    @param history: gives the history document.
    @param resubmitter: a L{cuckoodist.dashboard.resubmit.Resubmitter}.
    @param token: C{dashboard.token}; C{""} disables resubmitting.
    """

    def __init__(self, state: Callable[[], Any], history: Callable[[], Any], resubmitter: Any, token: str) -> None:
        super().__init__()
        self._index = _File(_static("index.html"), b"text/html; charset=utf-8")
        api = _Folder()
        api.putChild(b"state", _JSONPage(state))
        api.putChild(b"history", _JSONPage(history))
        api.putChild(b"resubmit", _ResubmitPage(resubmitter, token))
        self.putChild(b"api", api)
        self.putChild(b"static", _Static())
        self.putChild(b"", self._index)

    def render_GET(self, request: Request) -> bytes:
        # /dashboard without the slash: the page's relative links need it.
        return _Redirect(b"dashboard/").render(request)
