"""
The service's configuration and the analysis request it publishes.

Nothing here imports CRITs or Django, so the rules can be read and tested
on their own.  The code is the common subset of Python 2.7 (what CRITs
runs) and Python 3 (what cuckoodist's tests run).

The request is cuckoodist's wire format (see cuckoodist's README,
"Messages"):

    {"payload": {Cuckoo /tasks/create/file fields, all strings},
     "file": {"name", "data" (base64)}            (inline mode)
          or {"name", "md5", "sha256"}            (by-reference mode),
     "crits_data": {"crits_url", "analysis_id", "object_type", "object_id",
                    "username", "api_key", "md5", "source"},
     "priority": 1..3                             (only when configured)}
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import base64
import os
import re
import time

try:  # Python 2
    from urlparse import urlsplit, urlunsplit
    TEXT = (str, unicode)  # noqa: F821 (Python 2 only)
except ImportError:  # Python 3
    from urllib.parse import urlsplit, urlunsplit
    TEXT = (str,)

INLINE = "inline"
REFERENCE = "reference"
SUBMIT_MODES = (INLINE, REFERENCE)
PRIORITIES = (1, 2, 3)

#: Cuckoo options a configuration or a run may set, in payload order.
CUCKOO_OPTIONS = ("package", "options", "timeout", "machine", "tags")
#: What an analyst may change for one run (the rest is the admin's).
RUNTIME_KEYS = CUCKOO_OPTIONS + ("priority",)

#: Every key of the service's configuration and its default.  The Django
#: forms take their initial values from here.
DEFAULTS = {
    "broker_url": "amqp://guest:guest@localhost:5672//",
    "broker_ca_file": "",
    "exchange": "",
    "routing_key": "worker/feed_cuckoo",
    "crits_url": "",
    "api_user": "",
    "api_key": "",
    "submit_mode": INLINE,
    "package": "",
    "options": "",
    "timeout": 0,
    "machine": "",
    "tags": "",
    "priority": None,
}

#: How each key is named to the admin, in errors and in the details view.
LABELS = {
    "broker_url": "Broker URL",
    "broker_ca_file": "Broker CA file",
    "exchange": "Exchange",
    "routing_key": "Routing key",
    "crits_url": "CRITs URL for the workers",
    "api_user": "API user",
    "api_key": "API key",
    "submit_mode": "Submit mode",
    "package": "Cuckoo package",
    "options": "Cuckoo options",
    "timeout": "Cuckoo timeout",
    "machine": "Cuckoo machine",
    "tags": "Cuckoo tags",
    "priority": "Priority",
}

#: Keys never written to an analysis record or shown in full.
SECRET_KEYS = ("api_key",)

#: RabbitMQ refuses messages over 128 MiB by default; base64 adds a third.
MAX_INLINE_BYTES = 96 * 1024 * 1024
#: Cuckoodist refuses strings longer than this in most fields.
_MAX_TEXT = 64 * 1024
#: AMQP short strings (exchange and routing key) hold at most 255 bytes.
_MAX_SHORT = 255
#: Where Debian and RHEL keep the system's CA bundle.
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

_CONTROL = re.compile("[\x00-\x1f\x7f]")


class ConfigProblem(ValueError):
    """
    A configuration value is unusable; the message names its label.
    """


class SampleProblem(ValueError):
    """
    The sample cannot be sent as configured.
    """


def with_defaults(existing):
    """
    The default configuration, overlaid with what CRITs has stored.
    """
    config = dict(DEFAULTS)
    for key, value in (existing or {}).items():
        config[key] = value
    return config


def _text(config, key, required=False, limit=_MAX_TEXT):
    value = config.get(key, DEFAULTS[key])
    if value is None:
        value = ""
    if not isinstance(value, TEXT):
        raise ConfigProblem("%s must be text" % LABELS[key])
    value = value.strip()
    if required and not value:
        raise ConfigProblem("%s is required" % LABELS[key])
    if len(value.encode("utf-8")) > limit:
        raise ConfigProblem("%s is longer than %d bytes" % (LABELS[key], limit))
    if _CONTROL.search(value):
        raise ConfigProblem("%s contains a control character" % LABELS[key])
    return value


def _integer(config, key):
    value = config.get(key, DEFAULTS[key])
    if value is None or (isinstance(value, TEXT) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ConfigProblem("%s must be a whole number" % LABELS[key])
    if isinstance(value, TEXT):
        if not re.match(r"^\s*[0-9]{1,9}\s*$", value):
            raise ConfigProblem("%s must be a whole number" % LABELS[key])
        return int(value)
    if isinstance(value, float) and value != int(value):
        raise ConfigProblem("%s must be a whole number" % LABELS[key])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigProblem("%s must be a whole number" % LABELS[key])


def check_config(config):
    """
    Check a configuration as CRITs stores it (form values, or values read
    back from its database) and return it normalised: text stripped,
    C{crits_url} without a trailing slash, C{timeout} an integer,
    C{priority} an integer or L{None}.

    @raise ConfigProblem: naming the first unusable value.
    """
    checked = {}
    broker = _text(config, "broker_url", required=True, limit=2048)
    parts = urlsplit(broker)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigProblem("%s must start with amqp:// or amqps://" % LABELS["broker_url"])
    if not parts.hostname:
        raise ConfigProblem("%s names no host" % LABELS["broker_url"])
    checked["broker_url"] = broker
    ca_file = _text(config, "broker_ca_file", limit=4096)
    if ca_file and not os.path.isfile(ca_file):
        raise ConfigProblem("%s %s is not a file" % (LABELS["broker_ca_file"], ca_file))
    checked["broker_ca_file"] = ca_file
    checked["exchange"] = _text(config, "exchange", limit=_MAX_SHORT)
    checked["routing_key"] = _text(config, "routing_key", required=True, limit=_MAX_SHORT)

    url = _text(config, "crits_url", required=True, limit=2048).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigProblem("%s must be an http:// or https:// URL" % LABELS["crits_url"])
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigProblem("%s must not carry a query, fragment or user name" % LABELS["crits_url"])
    if " " in url:
        raise ConfigProblem("%s contains a space" % LABELS["crits_url"])
    checked["crits_url"] = url
    checked["api_user"] = _text(config, "api_user", required=True, limit=128)
    checked["api_key"] = _text(config, "api_key", required=True, limit=512)

    mode = _text(config, "submit_mode", required=True, limit=32)
    if mode not in SUBMIT_MODES:
        raise ConfigProblem("%s must be one of: %s" % (LABELS["submit_mode"], ", ".join(SUBMIT_MODES)))
    checked["submit_mode"] = mode

    for key in ("package", "options", "machine", "tags"):
        checked[key] = _text(config, key)
    timeout = _integer(config, "timeout")
    if timeout is not None and timeout < 0:
        raise ConfigProblem("%s must be 0 (Cuckoo's default) or more seconds" % LABELS["timeout"])
    checked["timeout"] = timeout or 0
    priority = _integer(config, "priority")
    if priority is not None and priority not in PRIORITIES:
        raise ConfigProblem("%s must be 1, 2 or 3, or empty for the workers' default" % LABELS["priority"])
    checked["priority"] = priority
    return checked


def redacted_url(url):
    """
    C{url} with any password replaced, for logs and the details view.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = "[%s]" % host
        if parts.port is not None:
            host = "%s:%d" % (host, parts.port)
        netloc = "%s:***@%s" % (parts.username or "", host)
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "(unreadable URL)"


def details(config):
    """
    The configuration as the CRITs service page lists it: by label, with
    the API key hidden and the broker password masked.
    """
    shown = {}
    for key, label in LABELS.items():
        value = config.get(key, DEFAULTS[key])
        if key in SECRET_KEYS:
            value = "(set)" if value else "(not set)"
        elif key == "broker_url" and isinstance(value, TEXT):
            value = redacted_url(value)
        elif value is None:
            value = ""
        shown[label] = value
    return shown


def strip_secrets(config):
    """
    Remove from C{config}, in place, what must not be stored with each
    analysis (CRITs saves the run's configuration in the analysis record).
    """
    for key in SECRET_KEYS:
        config.pop(key, None)
    if isinstance(config.get("broker_url"), TEXT):
        config["broker_url"] = redacted_url(config["broker_url"])


def connection_options(checked):
    """
    Keyword arguments for C{Connector} (and so for kombu's C{Connection}):
    a bounded connect, publisher confirms (a refused publish raises instead
    of vanishing), and for amqps:// a verified TLS connection.
    """
    options = {
        "connect_timeout": 15,
        "transport_options": {"confirm_publish": True},
    }
    if urlsplit(checked["broker_url"]).scheme == "amqps":
        import ssl

        ca_file = checked["broker_ca_file"]
        if not ca_file:
            for candidate in SYSTEM_CA_FILES:
                if os.path.isfile(candidate):
                    ca_file = candidate
                    break
        if not ca_file:
            raise ConfigProblem("%s: amqps:// needs a CA file and none was found; set %s"
                                % (LABELS["broker_url"], LABELS["broker_ca_file"]))
        options["ssl"] = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca_file}
    return options


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "%s" % (value,)


def build_request(checked, sample, analysis_id, now=None):
    """
    The request for one analysis.

    @param checked: a configuration returned by L{check_config}.
    @param sample: a mapping with C{name}, C{md5}, C{sha256}, C{object_id},
        C{source} and, in inline mode, C{data} (bytes).
    @param analysis_id: the CRITs analysis (task) id.
    @param now: the time to stamp as C{requested_at} (epoch seconds), the
        clock's by default: the pipeline measures its end-to-end latency
        from it (Go workers ignore the key).
    @raise SampleProblem: the sample cannot be sent in the configured mode.
    """
    payload = {}
    for key in CUCKOO_OPTIONS:
        value = checked[key]
        if key == "timeout":
            value = "%d" % value if value else ""
        if value:
            payload[key] = value

    md5 = _as_text(sample.get("md5") or "").lower()
    sha256 = _as_text(sample.get("sha256") or "").lower()
    name = _as_text(sample.get("name") or "") or md5
    if not name:
        raise SampleProblem("the sample has neither a file name nor an md5")
    source = _as_text(sample.get("source") or "")
    if not source:
        raise SampleProblem("the sample has no source; the workers need one to upload dropped files")
    file_part = {"name": name}
    if checked["submit_mode"] == INLINE:
        data = sample.get("data")
        if not data:
            raise SampleProblem("the sample has no file data")
        if len(data) > MAX_INLINE_BYTES:
            raise SampleProblem("the sample is %d bytes, more than the %d an inline request carries; "
                                "use the by-reference submit mode" % (len(data), MAX_INLINE_BYTES))
        file_part["data"] = base64.b64encode(data).decode("ascii")
    else:
        if not re.match(r"^[0-9a-f]{32}$", md5):
            raise SampleProblem("the sample has no valid md5, which by-reference mode needs")
        file_part["md5"] = md5
        if re.match(r"^[0-9a-f]{64}$", sha256):
            file_part["sha256"] = sha256

    request = {
        "payload": payload,
        "file": file_part,
        "crits_data": {
            "crits_url": checked["crits_url"],
            "analysis_id": _as_text(analysis_id),
            "object_type": "Sample",
            "object_id": _as_text(sample.get("object_id") or ""),
            "username": checked["api_user"],
            "api_key": checked["api_key"],
            "md5": md5,
            "source": source,
        },
    }
    if checked["priority"] is not None:
        request["priority"] = checked["priority"]
    request["requested_at"] = round(time.time() if now is None else now, 3)
    return request
