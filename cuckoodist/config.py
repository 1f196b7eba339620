# -*- test-case-name: tests.test_config -*-
"""
The YAML configuration of a cuckoodist process, checked once at start-up.

A daemon that discovers a typo an hour into a run, when the first message
reaches the stage that reads the misspelt key, has already lost work.  So
L{parse_config} reads every key eagerly, rejects anything it does not know,
fills in every default, and hands back frozen value objects: the stages never
look at raw YAML.  Every problem is a single L{ConfigError} whose path names
the offending key, e.g. C{Error in configuration at 'stages.2.cuckoo': ...}.

Each key is declared once, with its default and check, as a field of the
class that holds it (see L{cuckoodist.settings}): the top-level keys and the
C{crits} and C{cuckoo} sections here, each stage type's keys in its stage's
module, found through L{cuckoodist.registry}.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import yaml

from cuckoodist.amqp.topology import CLASSIC, QUEUE_TYPES, QUORUM
from cuckoodist.errors import ConfigError
from cuckoodist.settings import (
    DEFAULT_PORTS,
    UINT16_MAX,
    Path,
    boolean,
    build,
    check_keys,
    http_url,
    http_urls,
    integer,
    keys_of,
    kind_of,
    mapping,
    one_of,
    path_text,
    printable,
    seconds,
    setting,
    take,
    text,
    wrong_type,
)

__all__ = [
    "AmqpConfig",
    "CritsConfig",
    "CuckooConfig",
    "Config",
    "DEFAULT_AMQP_URL",
    "LOG_LEVELS",
    "LOG_FORMATS",
    "MetricsConfig",
    "CRITS_BODY_LIMIT",
    "load_config",
    "parse_amqp_url",
    "parse_amqp_urls",
    "parse_config",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOG_LEVELS = ("debug", "info", "warning")
#: C{text}: twistd's lines; C{json}: one JSON object a line (L{cuckoodist.logs}).
LOG_FORMATS = ("text", "json")

#: CRITs (Django C{DATA_UPLOAD_MAX_MEMORY_SIZE}) refuses larger request bodies.
CRITS_BODY_LIMIT = 2_621_440
#: A configuration file is a few kilobytes; refuse to slurp anything huge.
MAX_FILE_SIZE = 1024 * 1024


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

    url: str = setting(check=http_url)
    username: str = setting(check=text(empty=False))
    api_key: str = setting(check=text(empty=False), repr=False)
    verify_ssl: bool = setting(True, boolean)
    allowed_urls: tuple[str, ...] = setting((), http_urls, converter=tuple)


@attrs.frozen
class CuckooConfig:
    """
    One named Cuckoo instance.

    @ivar url: base URL of the REST API, without a trailing slash.
    @ivar token: the Cuckoo 2.0.7 API bearer token; C{""} sends none.
    @ivar max_requests: HTTP requests this daemon has in flight at once to
        this node, counting every stage (uploads, status probes, polls,
        report and dropped-file downloads, deletes).  Cuckoo's API is a
        single Flask or Bottle process: past a few parallel requests they
        only queue there, and a burst of report downloads would starve the
        polls and the uploads of every other stage.  Requests past the cap
        wait in this daemon, before their HTTP timeout starts.
    """

    name: str
    url: str = setting(check=http_url)
    token: str = setting("", text(), repr=False)
    verify_ssl: bool = setting(True, boolean)
    max_requests: int = setting(8, integer(1, 1000))


def _endpoint_string(value: Any, path: Path) -> str:
    """
    A Twisted server endpoint description (C{tcp:9103:interface=127.0.0.1},
    C{unix:/run/cuckoodist/metrics.sock}), or C{""} for none.  Checked by
    parsing it the way the listener will, so a typo stops the start here
    rather than leaving the daemon up without the listener.
    """
    value = text()(value, path)
    if value:
        from twisted.internet.endpoints import _parseServer

        try:
            _parseServer(value, None)
        except Exception as e:
            raise ConfigError(f"not a Twisted endpoint description such as 'tcp:9103:interface=127.0.0.1': {e}", path) from None
    return value


@attrs.frozen
class MetricsConfig:
    """
    The operations listener: Prometheus C{/metrics}, C{/healthz} and
    C{/readyz} (and the dashboard), on one Twisted endpoint.

    @ivar listen: a server endpoint description; C{""} turns the listener
        off.  The default answers on the loopback interface only: the page
        and the metrics describe the pipeline's work, so exposing them is
        the operator's choice.
    """

    listen: str = setting("tcp:9103:interface=127.0.0.1", _endpoint_string)


#: The shortest dashboard token accepted: it guards an action any local
#: process (or browser page) could otherwise try to guess its way into.
MIN_TOKEN_LENGTH = 16


def _token(value: Any, path: Path) -> str:
    value = text()(value, path)
    if value and (
        len(value) < MIN_TOKEN_LENGTH or not (value.isascii() and value.isprintable()) or value != value.strip()
    ):
        # ASCII: the page sends it in a header, which a browser refuses to
        # carry anything else in.
        raise ConfigError(
            f"must be \"\" (resubmitting disabled) or at least {MIN_TOKEN_LENGTH} printable ASCII characters "
            "without surrounding spaces, e.g. from 'openssl rand -hex 24'",
            path,
        )
    return value


@attrs.frozen
class DashboardConfig:
    """
    The dashboard on the operations listener (C{metrics.listen}).

    @ivar token: what the dashboard's resubmit button must send (as
        C{Authorization: Bearer}); C{""} disables resubmitting from the
        page, the read-only views stay.  Never shown, logged or served.
    """

    token: str = setting("", _token, repr=False)


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
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.query or parts.fragment or parts.username is not None or "?" in url or "#" in url:
        # Configured URLs have none of these; a message's URL with any of
        # them names something else.
        return None
    return (
        scheme,
        parts.hostname.lower(),
        DEFAULT_PORTS[scheme] if port is None else port,
        parts.path.rstrip("/"),
    )


@attrs.frozen(kw_only=True)
class Config:
    """
    The whole configuration of one cuckoodist process.

    @ivar amqp: the broker, or the first node of a cluster when the
        C{amqp} key lists several (see L{amqp_nodes}).
    @ivar amqp_nodes: every node the C{amqp} key names, in its order; the
        connection tries the next one on each attempt.  Not a key of its
        own: read from C{amqp}, and just C{(amqp,)} when not given.
    @ivar queue_type: C{classic} or C{quorum}, the type of every queue the
        daemon declares (L{cuckoodist.amqp.topology}).
    @ivar log_format: C{text} or C{json} (see L{LOG_FORMATS}).
    @ivar metrics: the operations listener (L{MetricsConfig}).
    @ivar dashboard: the dashboard's resubmit token (L{DashboardConfig}).
    @ivar grace_period: seconds a SIGTERM waits for in-flight work.
    @ivar http_timeout: seconds for a whole HTTP call, body included.
    @ivar crits: C{None} when every message must bring its own CRITs.
    @ivar cuckoo: Cuckoo instances by name (read-only).
    @ivar stages: the stages to run in this process, in file order.
    """

    amqp: AmqpConfig = setting(
        attrs.Factory(lambda: parse_amqp_url(DEFAULT_AMQP_URL)), lambda value, path: parse_amqp_urls(value, path)[0]
    )
    amqp_nodes: tuple[AmqpConfig, ...] = attrs.field(
        default=attrs.Factory(lambda self: (self.amqp,), takes_self=True), converter=tuple, repr=False
    )
    queue_type: str = setting(CLASSIC, lambda value, path: _queue_type(value, path))
    log_level: str = setting("info", one_of(LOG_LEVELS))
    log_file: str = setting("", path_text(empty=True))
    log_format: str = setting("text", one_of(LOG_FORMATS))
    metrics: MetricsConfig = setting(attrs.Factory(MetricsConfig), lambda value, path: _parse_metrics(value, path))
    dashboard: DashboardConfig = setting(
        attrs.Factory(DashboardConfig), lambda value, path: _parse_dashboard(value, path), repr=False
    )
    grace_period: float = setting(30.0, seconds(zero=True))
    http_timeout: float = setting(120.0, seconds(zero=False))
    crits: CritsConfig | None = setting(None, lambda value, path: _parse_crits(value, path))
    cuckoo: Mapping[str, CuckooConfig] = setting(
        attrs.Factory(dict), lambda value, path: _parse_cuckoos(value, path), converter=_frozen_mapping
    )
    #: Read with the whole document (a stage names a Cuckoo); see L{parse_config}.
    stages: tuple[Any, ...] = setting(check=None, converter=tuple)

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


def parse_amqp_url(value: Any, path: Path = ("amqp",)) -> AmqpConfig:
    """
    Parse a RabbitMQ URI: C{amqp[s]://user:password@host:port/vhost?heartbeat=N},
    with RabbitMQ's TLS query parameters for C{amqps}.

    Reasons never repeat the URL, since it normally holds a password.

    @param path: the key path named in errors.
    @raise ConfigError: the URL is not usable.
    """
    url = text(empty=False)(value, path)
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
        if heartbeat > UINT16_MAX:
            raise ConfigError(f"heartbeat must be at most {UINT16_MAX}", path)
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


def parse_amqp_urls(value: Any, path: Path = ("amqp",)) -> tuple[AmqpConfig, ...]:
    """
    The C{amqp} key: one RabbitMQ URI, or a list of them, one per node of
    a cluster, each read by L{parse_amqp_url}.  A cluster's nodes share its
    users and virtual hosts, so the URLs must agree on the user, password
    and vhost; each node has its own host, port and TLS settings, and no
    node may be listed twice.

    @raise ConfigError: naming the entry at fault (C{amqp.1}).
    """
    if not isinstance(value, list):
        return (parse_amqp_url(value, path),)
    if not value:
        raise ConfigError("give one URL, or a list of at least one URL (one per node of the cluster)", path)
    nodes = tuple(parse_amqp_url(item, path + (index,)) for index, item in enumerate(value))
    first = nodes[0]
    for index, node in enumerate(nodes[1:], 1):
        for what in ("username", "password", "vhost"):
            if getattr(node, what) != getattr(first, what):
                raise ConfigError(
                    f"the {what.replace('username', 'user name')} differs from the first URL's; "
                    "the nodes of a cluster share users and virtual hosts",
                    path + (index,),
                )
        earlier = [n for n in nodes[:index] if (n.host.lower(), n.port) == (node.host.lower(), node.port)]
        if earlier:
            first_at = ".".join(str(part) for part in path + (nodes.index(earlier[0]),))
            raise ConfigError(f"names the same host and port as {first_at}", path + (index,))
    return nodes


def _queue_type(value: Any, path: Path) -> str:
    if not isinstance(value, str) or value not in QUEUE_TYPES:
        raise ConfigError(
            "must be classic (the default: queues on one node, as the Go workers declare them) "
            "or quorum (queues replicated over the nodes of a RabbitMQ cluster)",
            path,
        )
    return value


def _check_queue_type(config: Config) -> None:
    """
    Refuse what the queue type cannot do: RabbitMQ 3.10 quorum queues have
    no priorities (C{x-max-priority}).
    """
    if config.queue_type != QUORUM:
        return
    for index, stage in enumerate(config.stages):
        if getattr(stage, "max_priority", 0):
            raise ConfigError(
                "quorum queues have no priorities in RabbitMQ; set max_priority to 0 "
                "or queue_type to classic",
                ("stages", index, "max_priority"),
            )


#: The RabbitMQ URI query parameters we understand; all but heartbeat
#: need amqps.
_AMQP_URL_PARAMETERS = ("heartbeat", "cacertfile", "certfile", "keyfile", "verify", "server_name_indication")


# Sections.


def _parse_crits(value: Any, path: Path) -> CritsConfig | None:
    if value is None:
        return None
    return build(CritsConfig, mapping(value, path), path)


def _parse_metrics(value: Any, path: Path) -> MetricsConfig:
    if value is None:
        return MetricsConfig()
    return build(MetricsConfig, mapping(value, path), path)


def _parse_dashboard(value: Any, path: Path) -> DashboardConfig:
    if value is None:
        return DashboardConfig()
    return build(DashboardConfig, mapping(value, path), path)


def _parse_cuckoos(value: Any, path: Path) -> dict[str, CuckooConfig]:
    if value is None:
        return {}
    doc = mapping(value, path)
    found: dict[str, CuckooConfig] = {}
    for name, entry in doc.items():
        where = path + (name,)
        if not name or not name.isprintable():
            raise ConfigError(
                "a Cuckoo name must be non-empty and printable", path + (printable(name),)
            )
        cuckoo = build(CuckooConfig, mapping(entry, where), where, name=name)
        for other in found.values():
            if _url_key(other.url) == _url_key(cuckoo.url):
                raise ConfigError(
                    f"same URL as cuckoo {other.name!r}; a message could not "
                    "tell them apart",
                    where + ("url",),
                )
        found[name] = cuckoo
    return found


def _parse_stage(value: Any, path: Path, cuckoos: Mapping[str, CuckooConfig], stage_types: Mapping[str, type]) -> Any:
    """
    Read one entry of C{stages} into the config class its stage type
    declares (C{config_class} of a stage in L{cuckoodist.registry}).
    """
    doc = mapping(value, path)
    kind = take(doc, "type", path, one_of(tuple(stage_types)))
    cls = stage_types[kind].config_class

    def elsewhere(key: str) -> str:
        owners = [t for t, stage in stage_types.items() if key in keys_of(stage.config_class)]
        return f"; it is a setting of {' and '.join(owners)} stages, not {kind}" if owners else ""

    stage = build(cls, doc, path, elsewhere, type=kind)
    consumer = stage.consumer_queue
    for key in ("producer_queue", "failed_queue"):
        if getattr(stage, key, None) == consumer:
            raise ConfigError("must differ from consumer_queue, or messages would loop", path + (key,))
    stage.check(path, cuckoos)
    return stage


def parse_config(doc: object, stage_types: Mapping[str, type] | None = None) -> Config:
    """
    Check a configuration document and build a L{Config}.

    @param doc: what C{yaml.safe_load} returned; anything at all.
    @param stage_types: stage classes by type name; L{cuckoodist.registry}'s
        by default (imported here, not at the top: every stage module
        imports this one).
    @return: the configuration with every default filled in.
    @raise ConfigError: on the first problem found, naming its key path.
    """
    if stage_types is None:
        from cuckoodist.registry import STAGES as stage_types
    if doc is None:
        raise ConfigError("the configuration is empty; expected a mapping")
    if not isinstance(doc, dict):
        raise ConfigError(f"the top level must be a mapping, got {kind_of(doc)}")
    mapping(doc, ())
    check_keys(doc, (), keys_of(Config))
    cuckoos = take(doc, "cuckoo", (), _parse_cuckoos, {})
    raw_stages = take(doc, "stages", (), lambda v, p: v)
    if not isinstance(raw_stages, list):
        raise wrong_type("a list of stages", raw_stages, ("stages",))
    if not raw_stages:
        raise ConfigError("at least one stage is needed", ("stages",))
    stages = tuple(
        _parse_stage(stage, ("stages", index), cuckoos, stage_types) for index, stage in enumerate(raw_stages)
    )
    nodes = take(doc, "amqp", (), parse_amqp_urls, (parse_amqp_url(DEFAULT_AMQP_URL),))
    config = build(Config, doc, (), cuckoo=cuckoos, stages=stages, amqp=nodes[0], amqp_nodes=nodes)
    _check_queue_type(config)
    return config


# Files.


def _find_duplicate_keys(node: yaml.Node, path: Path, seen: set[int]) -> None:
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
                        path + (printable(key_node.value),),
                    )
                keys[ident] = line
                _find_duplicate_keys(value_node, path + (printable(key_node.value),), seen)
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
