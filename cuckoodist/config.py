# -*- test-case-name: tests.test_config -*-
"""
The YAML configuration of a cuckoodist process, checked once at start-up.

A daemon that discovers a typo an hour into a run, when the first message
reaches the stage that reads the misspelt key, has already lost work.  So
L{parse_config} reads every key eagerly, rejects anything it does not know,
fills in every default, and hands back frozen value objects: the stages never
look at raw YAML.  Every problem is a single L{ConfigError} whose path names
the offending key, e.g. C{Error in configuration at 'stages.2.cuckoo': ...}.

Error messages never quote string values, because a misplaced string may be
a password or an API key; numbers are quoted, they are not secret.
"""

from __future__ import annotations

import difflib
import math
import os
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar, Union
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import yaml

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.errors import ConfigError

__all__ = [
    "AmqpConfig",
    "CritsConfig",
    "CuckooConfig",
    "FeedCuckooConfig",
    "CheckResultsConfig",
    "ParseAndSubmitConfig",
    "OverseerConfig",
    "StageConfig",
    "Config",
    "DEFAULT_AMQP_URL",
    "PARSERS",
    "STAGE_TYPES",
    "LOG_LEVELS",
    "CRITS_BODY_LIMIT",
    "load_config",
    "parse_config",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PARSERS = ("info", "signatures", "behavior", "network", "dropped")
STAGE_TYPES = ("feed_cuckoo", "check_results", "parse_and_submit", "overseer")
LOG_LEVELS = ("debug", "info", "warning")

#: CRITs (Django C{DATA_UPLOAD_MAX_MEMORY_SIZE}) refuses larger request bodies.
CRITS_BODY_LIMIT = 2_621_440
#: A configuration file is a few kilobytes; refuse to slurp anything huge.
MAX_FILE_SIZE = 1024 * 1024
#: AMQP carries prefetch counts and heartbeats as unsigned 16-bit fields.
_UINT16_MAX = 65535
#: C{retry_delay * 2 ** max_retries} must stay a finite float.
_MAX_RETRIES_LIMIT = 100

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _frozen_mapping(value: Mapping[str, CuckooConfig]) -> Mapping[str, CuckooConfig]:
    return MappingProxyType(dict(value))


@attrs.frozen
class AmqpConfig:
    """
    Where the broker is and how to log in.

    @ivar url: the URL as written; hidden from C{repr} since it holds the
        password.
    @ivar vhost: already percent-decoded; C{"/"} when the URL has no path.
    @ivar tls: C{True} for C{amqps://}.
    @ivar heartbeat: seconds between AMQP heartbeats, C{0} disables them.
    @ivar ca_file: PEM file of the CAs to trust (C{cacertfile}); C{None}
        trusts the system store.
    @ivar cert_file: PEM client certificate (C{certfile}), or C{None}.
    @ivar key_file: PEM key of C{cert_file} (C{keyfile}), or C{None}.
    @ivar verify: C{False} only for C{verify=verify_none}: then neither the
        certificate chain nor the host name is checked.
    @ivar server_name: the name sent as SNI and checked against the
        broker's certificate (C{server_name_indication}); C{None} means
        C{host}.
    """

    url: str = attrs.field(repr=False)
    host: str
    port: int
    vhost: str
    username: str
    password: str = attrs.field(repr=False)
    tls: bool
    heartbeat: int
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    server_name: str | None = None


@attrs.frozen
class CritsConfig:
    """
    The CRITs instance used for messages that carry no CRITs URL or
    credentials of their own.

    @ivar url: base URL without a trailing slash; the API is below C{/api/v1/}.
    @ivar allowed_urls: other CRITs base URLs (without trailing slashes)
        that messages may name.  A message names the CRITs that results go
        to, and the daemon makes requests there; without a list of known
        servers a forged message could point it at any host reachable from
        inside the network (server-side request forgery).
    """

    url: str
    username: str
    api_key: str = attrs.field(repr=False)
    verify_ssl: bool = True
    allowed_urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class CuckooConfig:
    """
    One named Cuckoo instance.

    @ivar url: base URL of the REST API, without a trailing slash.
    @ivar token: the Cuckoo 2.0.7 API bearer token; C{""} sends none.
    """

    name: str
    url: str
    token: str = attrs.field(default="", repr=False)
    verify_ssl: bool = True


@attrs.frozen(kw_only=True)
class FeedCuckooConfig:
    """
    Settings of a stage that uploads samples to one Cuckoo.

    @ivar cuckoo: the name of an entry of L{Config.cuckoo}.
    @ivar max_pending: upload only while Cuckoo has fewer pending tasks.
    @ivar min_free_space: bytes of free disk Cuckoo must report when
        C{check_free_space} is set.
    @ivar status_interval: seconds between status probes while Cuckoo is full.
    """

    type: str = "feed_cuckoo"
    consumer_queue: str = "worker/feed_cuckoo"
    producer_queue: str = "worker/check_results"
    failed_queue: str = "worker/failed"
    prefetch_count: int = 1
    cuckoo: str
    max_pending: int = 10
    check_free_space: bool = False
    min_free_space: int = 256 * 1024 * 1024
    status_interval: float = 10.0


@attrs.frozen(kw_only=True)
class CheckResultsConfig:
    """
    Settings of a stage that polls Cuckoo until an analysis is reported.

    @ivar analysis_deadline: seconds after submission after which the task
        is given up as failed.
    """

    type: str = "check_results"
    consumer_queue: str = "worker/check_results"
    producer_queue: str = "worker/parse_and_submit"
    failed_queue: str = "worker/failed"
    prefetch_count: int = 100
    wait_between_requests: float = 5.0
    analysis_deadline: float = 86400.0


@attrs.frozen(kw_only=True)
class ParseAndSubmitConfig:
    """
    Settings of a stage that turns a report into CRITs results.

    @ivar producer_queue: where to relay the message afterwards, C{""} for
        nowhere (the end of the chain).
    @ivar enabled_parsers: a subset of L{PARSERS}, in the order given.
    @ivar max_dropped_bytes: total unpacked bytes of dropped files.
    @ivar crits_max_body: bytes per CRITs request, at most
        L{CRITS_BODY_LIMIT}.
    @ivar cleanup_delay: seconds between finishing an analysis and deleting
        its Cuckoo task, held by the broker on C{<consumer_queue>.cleanup}:
        a duplicate delivery (at-least-once) arriving meanwhile still finds
        its task, instead of taking a finished analysis for a deleted one.
    """

    type: str = "parse_and_submit"
    consumer_queue: str = "worker/parse_and_submit"
    producer_queue: str = ""
    failed_queue: str = "worker/failed"
    prefetch_count: int = 10
    push_api_calls_max: int = 5000
    cuckoo_cleanup: bool = True
    cleanup_delay: float = 300.0
    enabled_parsers: tuple[str, ...] = attrs.field(default=PARSERS, converter=tuple)
    max_report_size: int = 1024 * 1024 * 1024
    max_dropped_files: int = 500
    max_dropped_bytes: int = 512 * 1024 * 1024
    crits_max_body: int = 2_500_000


@attrs.frozen(kw_only=True)
class OverseerConfig:
    """
    Settings of the stage that retries failed messages and dumps hopeless ones.

    @ivar retry_delay: seconds; the retry after failure M{n} (counted from
        1) waits C{retry_delay * 2 ** (n - 1)}, at most a day.
    @ivar allowed_queues: queues the overseer may re-publish to besides the
        ones this configuration's stages consume or produce to and the
        standard stage queues; a failed message naming any other queue is
        dumped instead, since anyone who can publish a failed message could
        otherwise make the overseer publish anywhere.
    """

    type: str = "overseer"
    consumer_queue: str = "worker/failed"
    prefetch_count: int = 100
    dump_dir: str
    max_retries: int = 3
    retry_delay: float = 60.0
    allowed_queues: tuple[str, ...] = attrs.field(default=(), converter=tuple)


StageConfig = Union[
    FeedCuckooConfig, CheckResultsConfig, ParseAndSubmitConfig, OverseerConfig
]


def _url_key(url: str) -> tuple[str, str, int, str] | None:
    """
    Reduce an HTTP URL to what identifies the server and API root.

    @return: C{(scheme, host, port, path)} with case, default ports and
        trailing slashes normalised, or C{None} if C{url} is not a usable
        http(s) URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.query or parts.fragment or parts.username is not None or "?" in url or "#" in url:
        # Configured URLs have none of these; a message's URL with any of
        # them names something else.
        return None
    return (
        scheme,
        parts.hostname.lower(),
        _DEFAULT_PORTS[scheme] if port is None else port,
        parts.path.rstrip("/"),
    )


@attrs.frozen(kw_only=True)
class Config:
    """
    The whole configuration of one cuckoodist process.

    @ivar grace_period: seconds a SIGTERM waits for in-flight work.
    @ivar http_timeout: seconds for a whole HTTP call, body included.
    @ivar crits: C{None} when every message must bring its own CRITs.
    @ivar cuckoo: Cuckoo instances by name (read-only).
    @ivar stages: the stages to run in this process, in file order.
    """

    amqp: AmqpConfig = attrs.field(
        factory=lambda: _parse_amqp(DEFAULT_AMQP_URL, ("amqp",))
    )
    log_level: str = "info"
    log_file: str = ""
    grace_period: float = 30.0
    http_timeout: float = 120.0
    crits: CritsConfig | None = None
    cuckoo: Mapping[str, CuckooConfig] = attrs.field(
        factory=dict, converter=_frozen_mapping
    )
    stages: tuple[StageConfig, ...] = attrs.field(converter=tuple)

    def cuckoo_for_url(self, url: str) -> CuckooConfig | None:
        """
        Find the configured Cuckoo that a message's Cuckoo URL points at, so
        its token and TLS setting apply.

        Scheme and host case, default ports and trailing slashes do not
        matter; the scheme itself does, so a token configured for https is
        never sent over plain http.

        @param url: a URL taken from a message; anything may be in it.
        @return: the matching instance, or C{None}.
        """
        wanted = _url_key(url)
        if wanted is None:
            return None
        for cuckoo in self.cuckoo.values():
            if _url_key(cuckoo.url) == wanted:
                return cuckoo
        return None

    def crits_url_allowed(self, url: str) -> bool:
        """
        Whether a CRITs URL taken from a message names a CRITs this fleet
        knows: the configured C{crits.url} or one of C{crits.allowed_urls}.

        URLs are compared as in L{cuckoo_for_url}: scheme and host case,
        default ports and trailing slashes do not matter, the scheme and
        the path do.  Without a C{crits} section no URL is allowed.

        @param url: a URL taken from a message; anything may be in it.
        """
        return self.known_crits_url(url) is not None

    def known_crits_url(self, url: str) -> str | None:
        """
        The configured CRITs base URL (C{crits.url} or one of
        C{crits.allowed_urls}) that a URL taken from a message names, so
        that requests go to the URL as configured, never as the message
        spelt it.
        """
        if self.crits is None:
            return None
        wanted = _url_key(url)
        if wanted is None:
            return None
        for known in (self.crits.url,) + self.crits.allowed_urls:
            if _url_key(known) == wanted:
                return known
        return None

    def is_configured_crits(self, url: str) -> bool:
        """
        Whether a CRITs URL taken from a message is the configured C{crits.url}
        itself (compared as in L{crits_url_allowed}), so that the configured
        credentials and TLS setting may be used for it.
        """
        wanted = _url_key(url)
        return self.crits is not None and wanted is not None and _url_key(self.crits.url) == wanted


# Reading values.  Each checker takes the raw value and its path, and returns
# the value to store or raises ConfigError.

_T = TypeVar("_T")
_Check = Callable[[Any, tuple], _T]
_Path = tuple
_REQUIRED: Any = object()


def _kind(value: object) -> str:
    """
    Name a YAML value's type the way the person who wrote it thinks of it.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _wrong_type(expected: str, value: object, path: _Path) -> ConfigError:
    return ConfigError(f"expected {expected}, got {_kind(value)}", path)


def _string(*, empty: bool = True) -> _Check[str]:
    def check(value: Any, path: _Path) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string", value, path)
        if not empty and not value:
            raise ConfigError("must not be empty", path)
        return value

    return check


def _path_string(*, empty: bool) -> _Check[str]:
    plain = _string(empty=empty)

    def check(value: Any, path: _Path) -> str:
        value = plain(value, path)
        if "\0" in value:
            raise ConfigError("a file name cannot contain a NUL character", path)
        return value

    return check


def _boolean(value: Any, path: _Path) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type("a boolean (true or false)", value, path)
    return value


def _integer(minimum: int, maximum: int | None = None) -> _Check[int]:
    def check(value: Any, path: _Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type("an integer", value, path)
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}, got {value}", path)
        if maximum is not None and value > maximum:
            raise ConfigError(f"must be at most {maximum}, got {value}", path)
        return value

    return check


def _seconds(*, zero: bool) -> _Check[float]:
    """
    A duration in seconds: an int or a float, finite, positive (or also zero
    when C{zero} is set).
    """

    def check(value: Any, path: _Path) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type("a number of seconds", value, path)
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError("is too large", path) from None
        if not math.isfinite(seconds):
            raise ConfigError(f"must be a finite number, got {value}", path)
        if seconds < 0 or (seconds == 0 and not zero):
            bound = "zero or more" if zero else "more than zero"
            raise ConfigError(f"must be {bound}, got {value}", path)
        return seconds

    return check


def _one_of(choices: tuple[str, ...]) -> _Check[str]:
    def check(value: Any, path: _Path) -> str:
        if not isinstance(value, str):
            raise _wrong_type("a string", value, path)
        if value not in choices:
            raise ConfigError(
                f"{value!r} is not one of {', '.join(choices)}", path
            )
        return value

    return check


def _printable(key: object) -> str:
    """
    Render a key from the document for a path in an error message, escaping
    newlines and control characters so the message stays one clean line.
    """
    text = str(key)
    return text if text.isprintable() else repr(text)


def _mapping(value: Any, path: _Path) -> dict:
    if not isinstance(value, dict):
        raise _wrong_type("a mapping", value, path)
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(
                f"keys must be strings, got {_kind(key)}", path + (_printable(key),)
            )
    return value


def _check_keys(
    doc: dict,
    path: _Path,
    allowed: tuple[str, ...],
    hint: Callable[[str], str] = lambda key: "",
) -> None:
    """
    Reject the first key of C{doc} that is not in C{allowed}.

    @param hint: given the unknown key, returns extra advice, or C{""}.
    """
    for key in doc:
        if key not in allowed:
            advice = hint(key) or _did_you_mean(key, allowed)
            raise ConfigError("unknown key" + advice, path + (_printable(key),))


def _did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _take(doc: dict, key: str, path: _Path, check: _Check[_T], default: Any = _REQUIRED) -> _T:
    if key not in doc:
        if default is _REQUIRED:
            raise ConfigError("missing required key", path + (key,))
        return default
    return check(doc[key], path + (key,))


# URLs.


def _http_url(value: Any, path: _Path) -> str:
    """
    An http(s) base URL.  Credentials in it are refused: the URL appears in
    logs and reprs, and a token has its own key.  Trailing slashes are the
    only thing removed.
    """
    url = _string(empty=False)(value, path)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError("a URL cannot contain whitespace or control characters", path)
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        raise ConfigError("not a valid URL (bad port or host)", path) from None
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ConfigError("must be an http:// or https:// URL", path)
    if not parts.hostname:
        raise ConfigError("the URL has no host", path)
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the URL must not contain credentials", path)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError("the URL must not have a query or fragment", path)
    if parts.port == 0:
        raise ConfigError("port 0 is not a valid port", path)
    return url.rstrip("/")


def _parse_amqp(value: Any, path: _Path) -> AmqpConfig:
    """
    Parse a RabbitMQ URI: C{amqp[s]://user:password@host:port/vhost?heartbeat=N}.

    Reasons never repeat the URL, since it normally holds a password.
    """
    url = _string(empty=False)(value, path)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError("the URL cannot contain whitespace or control characters", path)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("not a valid URL (bad port or host)", path) from None
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps"):
        raise ConfigError("must be an amqp:// or amqps:// URL", path)
    if not parts.hostname:
        raise ConfigError("the URL has no host", path)
    if port == 0:
        raise ConfigError("port 0 is not a valid port", path)
    if parts.fragment or url.endswith("#"):
        raise ConfigError("the URL must not have a fragment", path)
    if (parts.username is None) != (parts.password is None):
        raise ConfigError("give both a user name and a password, or neither", path)

    if parts.path in ("", "/"):
        vhost = "/"
    else:
        segment = parts.path[1:]
        if "/" in segment:
            raise ConfigError(
                "the virtual host must be one path segment; write '/' in it as %2F",
                path,
            )
        vhost = unquote(segment)

    heartbeat = 30
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        if parts.query:
            raise ConfigError("the URL query is malformed", path) from None
        query = {}
    tls_settings: dict[str, str] = {}
    for name, values in query.items():
        if name not in _AMQP_URL_PARAMETERS:
            raise ConfigError(
                f"unknown URL parameter {name!r}; supported: {', '.join(_AMQP_URL_PARAMETERS)}", path
            )
        if len(values) != 1:
            raise ConfigError(f"{name} is given more than once", path)
        if name != "heartbeat":
            if scheme != "amqps":
                raise ConfigError(f"{name} needs an amqps:// URL", path)
            tls_settings[name] = values[0]
            continue
        if not values[0].isdigit() or not values[0].isascii():
            raise ConfigError("heartbeat must be a whole number of seconds", path)
        heartbeat = int(values[0])
        if heartbeat > _UINT16_MAX:
            raise ConfigError(f"heartbeat must be at most {_UINT16_MAX}", path)
    verify = tls_settings.get("verify", "verify_peer")
    if verify not in ("verify_peer", "verify_none"):
        raise ConfigError("verify must be verify_peer or verify_none", path)
    for name in ("cacertfile", "certfile", "keyfile"):
        file = tls_settings.get(name)
        if file is not None and not (os.path.isfile(file) and os.access(file, os.R_OK)):
            raise ConfigError(f"{name} is not a readable file", path)
    if ("certfile" in tls_settings) != ("keyfile" in tls_settings):
        raise ConfigError("give both certfile and keyfile, or neither", path)
    server_name = tls_settings.get("server_name_indication")
    if server_name is not None and (
        not server_name or not server_name.isascii() or any(c.isspace() or c in "/@?#" for c in server_name)
    ):
        raise ConfigError("server_name_indication must be a host name", path)

    return AmqpConfig(
        url=url,
        host=parts.hostname,
        port=port if port is not None else (5671 if scheme == "amqps" else 5672),
        vhost=vhost,
        username="guest" if parts.username is None else unquote(parts.username),
        password="guest" if parts.password is None else unquote(parts.password),
        tls=scheme == "amqps",
        heartbeat=heartbeat,
        ca_file=tls_settings.get("cacertfile"),
        cert_file=tls_settings.get("certfile"),
        key_file=tls_settings.get("keyfile"),
        verify=verify == "verify_peer",
        server_name=server_name,
    )


#: The RabbitMQ URI query parameters we understand; all but heartbeat
#: need amqps.
_AMQP_URL_PARAMETERS = ("heartbeat", "cacertfile", "certfile", "keyfile", "verify", "server_name_indication")


# Sections.


def _parse_crits(value: Any, path: _Path) -> CritsConfig | None:
    if value is None:
        return None
    doc = _mapping(value, path)
    _check_keys(doc, path, ("url", "username", "api_key", "verify_ssl", "allowed_urls"))
    return CritsConfig(
        url=_take(doc, "url", path, _http_url),
        username=_take(doc, "username", path, _string(empty=False)),
        api_key=_take(doc, "api_key", path, _string(empty=False)),
        verify_ssl=_take(doc, "verify_ssl", path, _boolean, True),
        allowed_urls=_take(doc, "allowed_urls", path, _http_urls, ()),
    )


def _http_urls(value: Any, path: _Path) -> tuple[str, ...]:
    """
    A list of http(s) base URLs, each checked like a single one.
    """
    if not isinstance(value, list):
        raise _wrong_type("a list of URLs", value, path)
    return tuple(_http_url(item, path + (index,)) for index, item in enumerate(value))


def _parse_cuckoos(value: Any, path: _Path) -> dict[str, CuckooConfig]:
    if value is None:
        return {}
    doc = _mapping(value, path)
    found: dict[str, CuckooConfig] = {}
    for name, entry in doc.items():
        where = path + (name,)
        if not name or not name.isprintable():
            raise ConfigError(
                "a Cuckoo name must be non-empty and printable", path + (_printable(name),)
            )
        entry = _mapping(entry, where)
        _check_keys(entry, where, ("url", "token", "verify_ssl"))
        cuckoo = CuckooConfig(
            name=name,
            url=_take(entry, "url", where, _http_url),
            token=_take(entry, "token", where, _string(), ""),
            verify_ssl=_take(entry, "verify_ssl", where, _boolean, True),
        )
        for other in found.values():
            if _url_key(other.url) == _url_key(cuckoo.url):
                raise ConfigError(
                    f"same URL as cuckoo {other.name!r}; a message could not "
                    "tell them apart",
                    where + ("url",),
                )
        found[name] = cuckoo
    return found


def _queue(*, empty: bool) -> _Check[str]:
    """
    A queue name the broker can take, checked by L{queue_name_problem}
    (length in UTF-8, lone surrogates, control characters, C{amq.}), so a
    bad name stops the start instead of failing later in AMQP framing.

    @param empty: allow C{""} (a producer queue meaning "nowhere").
    """

    def check(value: Any, path: _Path) -> str:
        name = _string(empty=empty)(value, path)
        problem = queue_name_problem(name) if name else None
        if problem is not None:
            raise ConfigError(problem, path)
        return name

    return check


def _queues(value: Any, path: _Path) -> tuple[str, ...]:
    """
    A list of queue names, each checked like a single one.
    """
    if not isinstance(value, list):
        raise _wrong_type("a list of queue names", value, path)
    return tuple(_queue(empty=False)(item, path + (index,)) for index, item in enumerate(value))


def _parsers(value: Any, path: _Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _wrong_type("a list", value, path)
    seen: list[str] = []
    for index, item in enumerate(value):
        name = _one_of(PARSERS)(item, path + (index,))
        if name in seen:
            raise ConfigError(f"{name!r} is listed twice", path + (index,))
        seen.append(name)
    return tuple(seen)


_COMMON_KEYS = ("type", "consumer_queue", "producer_queue", "failed_queue", "prefetch_count")

#: The keys each stage type accepts, in the order the example file uses.
_STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "feed_cuckoo": _COMMON_KEYS
    + ("cuckoo", "max_pending", "check_free_space", "min_free_space", "status_interval"),
    "check_results": _COMMON_KEYS + ("wait_between_requests", "analysis_deadline"),
    "parse_and_submit": _COMMON_KEYS
    + (
        "push_api_calls_max",
        "cuckoo_cleanup",
        "cleanup_delay",
        "enabled_parsers",
        "max_report_size",
        "max_dropped_files",
        "max_dropped_bytes",
        "crits_max_body",
    ),
    "overseer": (
        "type",
        "consumer_queue",
        "prefetch_count",
        "dump_dir",
        "max_retries",
        "retry_delay",
        "allowed_queues",
    ),
}

_STAGE_CLASSES: dict[str, type] = {
    "feed_cuckoo": FeedCuckooConfig,
    "check_results": CheckResultsConfig,
    "parse_and_submit": ParseAndSubmitConfig,
    "overseer": OverseerConfig,
}

#: How each stage-specific key is checked.
_STAGE_CHECKS: dict[str, _Check[Any]] = {
    "consumer_queue": _queue(empty=False),
    "failed_queue": _queue(empty=False),
    "prefetch_count": _integer(1, _UINT16_MAX),
    "cuckoo": _string(empty=False),
    "max_pending": _integer(1),
    "check_free_space": _boolean,
    "min_free_space": _integer(0),
    "status_interval": _seconds(zero=False),
    "wait_between_requests": _seconds(zero=False),
    "analysis_deadline": _seconds(zero=False),
    "push_api_calls_max": _integer(0),
    "cuckoo_cleanup": _boolean,
    "cleanup_delay": _seconds(zero=True),
    "enabled_parsers": _parsers,
    "max_report_size": _integer(1),
    "max_dropped_files": _integer(0),
    "max_dropped_bytes": _integer(0),
    "crits_max_body": _integer(1, CRITS_BODY_LIMIT),
    "dump_dir": _path_string(empty=False),
    "max_retries": _integer(0, _MAX_RETRIES_LIMIT),
    "retry_delay": _seconds(zero=False),
    "allowed_queues": lambda value, path: _queues(value, path),
}


def _parse_stage(value: Any, path: _Path, cuckoos: Mapping[str, CuckooConfig]) -> StageConfig:
    doc = _mapping(value, path)
    kind = _take(doc, "type", path, _one_of(STAGE_TYPES))
    allowed = _STAGE_KEYS[kind]

    def elsewhere(key: str) -> str:
        owners = [t for t in STAGE_TYPES if key in _STAGE_KEYS[t]]
        if not owners:
            return ""
        return f"; it is a setting of {' and '.join(owners)} stages, not {kind}"

    _check_keys(doc, path, allowed, elsewhere)
    cls = _STAGE_CLASSES[kind]
    defaults = {
        f.name: _REQUIRED if f.default is attrs.NOTHING else f.default
        for f in attrs.fields(cls)
    }
    values: dict[str, Any] = {}
    for key in allowed[1:]:
        if key == "producer_queue":
            # Only parse_and_submit may end the chain.
            check = _queue(empty=kind == "parse_and_submit")
        else:
            check = _STAGE_CHECKS[key]
        values[key] = _take(doc, key, path, check, defaults[key])

    if "cuckoo" in values and values["cuckoo"] not in cuckoos:
        known = ", ".join(sorted(cuckoos)) or "none are configured"
        raise ConfigError(
            f"unknown cuckoo {values['cuckoo']!r} (known: {known})", path + ("cuckoo",)
        )
    consumer = values["consumer_queue"]
    for key in ("producer_queue", "failed_queue"):
        if values.get(key) == consumer:
            raise ConfigError(
                "must differ from consumer_queue, or messages would loop", path + (key,)
            )
    if values.get("cuckoo_cleanup") and not values.get("producer_queue"):
        problem = queue_name_problem(cleanup_queue(consumer))
        if problem is not None:
            raise ConfigError(
                f"with cuckoo_cleanup the stage also consumes '<consumer_queue>.cleanup': {problem}",
                path + ("consumer_queue",),
            )
    return cls(**values)


def cleanup_queue(consumer_queue: str) -> str:
    """
    The queue on which a parse_and_submit stage holds the deletion of its
    finished Cuckoo tasks.  Its own queue, not the stage's: Go workers
    sharing C{consumer_queue} would take a clean-up for a new task.
    """
    return f"{consumer_queue}.cleanup"


_TOP_KEYS = (
    "amqp",
    "log_level",
    "log_file",
    "grace_period",
    "http_timeout",
    "crits",
    "cuckoo",
    "stages",
)


def parse_config(doc: object) -> Config:
    """
    Check a configuration document and build a L{Config}.

    @param doc: what C{yaml.safe_load} returned; anything at all.
    @return: the configuration with every default filled in.
    @raise ConfigError: on the first problem found, naming its key path.
    """
    if doc is None:
        raise ConfigError("the configuration is empty; expected a mapping")
    if not isinstance(doc, dict):
        raise ConfigError(f"the top level must be a mapping, got {_kind(doc)}")
    _mapping(doc, ())
    _check_keys(doc, (), _TOP_KEYS)
    cuckoos = _take(doc, "cuckoo", (), _parse_cuckoos, {})
    raw_stages = _take(doc, "stages", (), lambda v, p: v)
    if not isinstance(raw_stages, list):
        raise _wrong_type("a list of stages", raw_stages, ("stages",))
    if not raw_stages:
        raise ConfigError("at least one stage is needed", ("stages",))
    return Config(
        amqp=_take(doc, "amqp", (), _parse_amqp, None)
        or _parse_amqp(DEFAULT_AMQP_URL, ("amqp",)),
        log_level=_take(doc, "log_level", (), _one_of(LOG_LEVELS), "info"),
        log_file=_take(doc, "log_file", (), _path_string(empty=True), ""),
        grace_period=_take(doc, "grace_period", (), _seconds(zero=True), 30.0),
        http_timeout=_take(doc, "http_timeout", (), _seconds(zero=False), 120.0),
        crits=_take(doc, "crits", (), _parse_crits, None),
        cuckoo=cuckoos,
        stages=tuple(
            _parse_stage(stage, ("stages", index), cuckoos)
            for index, stage in enumerate(raw_stages)
        ),
    )


# Files.


def _find_duplicate_keys(node: yaml.Node, path: _Path, seen: set[int]) -> None:
    """
    Refuse a mapping that repeats a key: C{safe_load} would silently keep the
    last one, and an operator editing a long file rarely means that.

    Alias nodes are visited once (C{seen}), so a document built from nested
    aliases cannot make this walk exponential.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in keys:
                    raise ConfigError(
                        f"duplicate key on line {line}, first given on line {keys[ident]}",
                        path + (_printable(key_node.value),),
                    )
                keys[ident] = line
                _find_duplicate_keys(value_node, path + (_printable(key_node.value),), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate_keys(item, path + (index,), seen)


def load_config(path: str) -> Config:
    """
    Read, parse and check a YAML configuration file.

    @param path: the file to read.
    @return: the checked configuration.
    @raise ConfigError: if the file cannot be read, is not YAML, or does not
        describe a valid configuration.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path!r}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{path!r} is larger than {MAX_FILE_SIZE} bytes")
    try:
        node = yaml.compose(data, Loader=yaml.SafeLoader)
        if node is not None:
            _find_duplicate_keys(node, (), set())
        doc = yaml.safe_load(data)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"YAML error in {path!r}{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error in {path!r}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path!r} is nested too deeply") from None
    return parse_config(doc)
