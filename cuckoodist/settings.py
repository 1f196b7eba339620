# -*- test-case-name: tests.test_config -*-
"""
How a configuration key is declared and checked.

Each key is declared once, as a field of the frozen attrs class that holds
it, with L{setting}: its default and the check its value must pass live
together in the field.  L{build} reads a mapping of the configuration into
such a class: it refuses keys the class does not declare (suggesting the
closest one), checks every value, and fills in every default, so the key
sets and defaults are never written down a second time.

The checks take the raw value and its key path, and return the value to
store or raise L{ConfigError} naming that path.  Their reasons never quote
string values, because a misplaced string may be a password or an API key;
numbers are quoted, they are not secret.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import attrs

from cuckoodist.amqp.names import queue_name_problem
from cuckoodist.errors import ConfigError

__all__ = [
    "Check",
    "Path",
    "REQUIRED",
    "setting",
    "keys_of",
    "build",
    "kind_of",
    "wrong_type",
    "text",
    "path_text",
    "boolean",
    "integer",
    "seconds",
    "one_of",
    "printable",
    "mapping",
    "check_keys",
    "take",
    "http_url",
    "http_urls",
    "queue",
    "queues",
    "UINT16_MAX",
    "DEFAULT_PORTS",
]

T = TypeVar("T")
Check = Callable[[Any, tuple], T]
Path = tuple
#: Marks a key without a default.
REQUIRED: Any = object()
#: AMQP carries prefetch counts and heartbeats as unsigned 16-bit fields.
UINT16_MAX = 65535
DEFAULT_PORTS = {"http": 80, "https": 443}

_CHECK = "cuckoodist.check"


def setting(default: Any = REQUIRED, check: Check[Any] | None = None, **field: Any) -> Any:
    """
    Declare one configuration key as an attrs field: its default (none for
    a required key) and the check its value must pass.

    @param check: C{None} for a key whose value the reader supplies (a
        stage's C{type}, the sections parsed with the whole document).
    @param field: passed to C{attrs.field} (C{converter}, C{repr}).
    """
    if default is not REQUIRED:
        field["default"] = default
    return attrs.field(metadata={_CHECK: check}, **field)


def keys_of(cls: type) -> tuple[str, ...]:
    """
    The keys C{cls} declares, in declaration order.
    """
    return tuple(f.name for f in attrs.fields(cls) if _CHECK in f.metadata)


def build(cls: type[T], doc: dict, path: Path, hint: Callable[[str], str] = lambda key: "", **given: Any) -> T:
    """
    Read C{doc} into C{cls}: refuse keys it does not declare, check every
    declared key found, and take the default of every one missing.

    @param given: values the caller supplies instead of reading them.
    @raise ConfigError: naming the first key that is unknown, missing or
        wrong.
    """
    check_keys(doc, path, keys_of(cls), hint)
    values = dict(given)
    for f in attrs.fields(cls):
        check = f.metadata.get(_CHECK)
        if check is None or f.name in values:
            continue
        default = f.default
        if default is attrs.NOTHING:
            default = REQUIRED
        elif isinstance(default, attrs.Factory):
            default = default.factory()
        values[f.name] = take(doc, f.name, path, check, default)
    return cls(**values)


def kind_of(value: object) -> str:
    """
    Name a YAML value's type the way the person who wrote it thinks of it.
    """
    if value is None:
        return "null"
    for cls, name in _KINDS:
        if isinstance(value, cls):
            return name
    return f"a {type(value).__name__}"


#: Booleans before integers: C{True} is an C{int} too.
_KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "a list"), (dict, "a mapping"))



def wrong_type(expected: str, value: object, path: Path) -> ConfigError:
    return ConfigError(f"expected {expected}, got {kind_of(value)}", path)


def text(*, empty: bool = True) -> Check[str]:
    def check(value: Any, path: Path) -> str:
        if not isinstance(value, str):
            raise wrong_type("a string", value, path)
        if not empty and not value:
            raise ConfigError("must not be empty", path)
        return value

    return check


def path_text(*, empty: bool) -> Check[str]:
    plain = text(empty=empty)

    def check(value: Any, path: Path) -> str:
        value = plain(value, path)
        if "\0" in value:
            raise ConfigError("a file name cannot contain a NUL character", path)
        return value

    return check


def boolean(value: Any, path: Path) -> bool:
    if not isinstance(value, bool):
        raise wrong_type("a boolean (true or false)", value, path)
    return value


def integer(minimum: int, maximum: int | None = None) -> Check[int]:
    def check(value: Any, path: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type("an integer", value, path)
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}, got {value}", path)
        if maximum is not None and value > maximum:
            raise ConfigError(f"must be at most {maximum}, got {value}", path)
        return value

    return check


def seconds(*, zero: bool) -> Check[float]:
    """
    A duration in seconds: an int or a float, finite, positive (or also zero
    when C{zero} is set).
    """

    def check(value: Any, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong_type("a number of seconds", value, path)
        try:
            amount = float(value)
        except OverflowError:
            raise ConfigError("is too large", path) from None
        if not math.isfinite(amount):
            raise ConfigError(f"must be a finite number, got {value}", path)
        if amount < 0 or (amount == 0 and not zero):
            bound = "zero or more" if zero else "more than zero"
            raise ConfigError(f"must be {bound}, got {value}", path)
        return amount

    return check


def one_of(choices: tuple[str, ...]) -> Check[str]:
    def check(value: Any, path: Path) -> str:
        if not isinstance(value, str):
            raise wrong_type("a string", value, path)
        if value not in choices:
            raise ConfigError(
                f"{value!r} is not one of {', '.join(choices)}", path
            )
        return value

    return check



def printable(key: object) -> str:
    """
    Render a key from the document for a path in an error message, escaping
    newlines and control characters so the message stays one clean line.
    """
    text = str(key)
    return text if text.isprintable() else repr(text)


def mapping(value: Any, path: Path) -> dict:
    if not isinstance(value, dict):
        raise wrong_type("a mapping", value, path)
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(
                f"keys must be strings, got {kind_of(key)}", path + (printable(key),)
            )
    return value


def check_keys(
    doc: dict,
    path: Path,
    allowed: tuple[str, ...],
    hint: Callable[[str], str] = lambda key: "",
) -> None:
    """
    Reject the first key of C{doc} that is not in C{allowed}.

    @param hint: given the unknown key, returns extra advice, or C{""}.
    """
    for key in doc:
        if key not in allowed:
            advice = hint(key) or did_you_mean(key, allowed)
            raise ConfigError("unknown key" + advice, path + (printable(key),))


def did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def take(doc: dict, key: str, path: Path, check: Check[T], default: Any = REQUIRED) -> T:
    if key not in doc:
        if default is REQUIRED:
            raise ConfigError("missing required key", path + (key,))
        return default
    return check(doc[key], path + (key,))



def http_url(value: Any, path: Path) -> str:
    """
    An http(s) base URL.  Credentials in it are refused: the URL appears in
    logs and reprs, and a token has its own key.  Trailing slashes are the
    only thing removed.
    """
    url = text(empty=False)(value, path)
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigError("a URL cannot contain whitespace or control characters", path)
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError:
        raise ConfigError("not a valid URL (bad port or host)", path) from None
    if parts.scheme.lower() not in DEFAULT_PORTS:
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



def http_urls(value: Any, path: Path) -> tuple[str, ...]:
    """
    A list of http(s) base URLs, each checked like a single one.
    """
    if not isinstance(value, list):
        raise wrong_type("a list of URLs", value, path)
    return tuple(http_url(item, path + (index,)) for index, item in enumerate(value))



def queue(*, empty: bool) -> Check[str]:
    """
    A queue name the broker can take, checked by L{queue_name_problem}
    (length in UTF-8, lone surrogates, control characters, C{amq.}), so a
    bad name stops the start instead of failing later in AMQP framing.

    @param empty: allow C{""} (a producer queue meaning "nowhere").
    """

    def check(value: Any, path: Path) -> str:
        name = text(empty=empty)(value, path)
        problem = queue_name_problem(name) if name else None
        if problem is not None:
            raise ConfigError(problem, path)
        return name

    return check


def queues(value: Any, path: Path) -> tuple[str, ...]:
    """
    A list of queue names, each checked like a single one.
    """
    if not isinstance(value, list):
        raise wrong_type("a list of queue names", value, path)
    return tuple(queue(empty=False)(item, path + (index,)) for index, item in enumerate(value))

