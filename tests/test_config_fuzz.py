# -*- test-case-name: tests.test_config_fuzz -*-
"""
Property tests for L{cuckoodist.config.parse_config} on hostile documents.

Whatever YAML (or a hand-built document) holds, start-up must end either
with a configuration or with one L{ConfigError} line, and that line must
not repeat a secret.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.config import Config, parse_config
from cuckoodist.registry import STAGES
from cuckoodist.errors import ConfigError

_NASTY_CHARACTERS = ["\ud800", "\udfff", "\udc80", "\x00", "\n", "\x1b", "\u202e", "\ufeff"]

#: Text including lone surrogates, NUL and control characters.
_text = st.text(st.one_of(st.characters(), st.sampled_from(_NASTY_CHARACTERS)), max_size=20)

_keys = st.one_of(
    _text,
    st.sampled_from(
        ["amqp", "log_level", "log_file", "crits", "cuckoo", "stages", "type", "url",
         "consumer_queue", "producer_queue", "dump_dir", "allowed_urls", "enabled_parsers"]
    ),
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**399, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(10**399)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), -0.0, 1e308]),
    _text,
    st.sampled_from(["http://crits", "https://x:99999", "amqp://h/", "amq.gen", "q" * 300, ""]),
)


def _deep(depth: int) -> Any:
    """
    A list nested C{depth} levels deep, built without recursion.
    """
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


# Built on draw (st.builds), so the strategy's repr stays small.
_big = st.one_of(
    st.builds(_deep, st.sampled_from([100, 5_000])),
    st.builds(lambda n: list(range(n)), st.just(5_000)),
    st.builds(lambda n: {str(i): i for i in range(n)}, st.just(5_000)),
)

_values = st.recursive(
    st.one_of(_scalars, _big),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=30,
)

#: A marker that cannot appear in any message by accident.
_SECRET = "S3CR3T-"
_secrets = st.text(st.one_of(st.characters(), st.sampled_from(_NASTY_CHARACTERS)), max_size=10).map(
    lambda tail: _SECRET + tail
)


@st.composite
def _documents(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """
    A document shaped enough like a configuration to reach the stage and
    section parsers, with hostile values anywhere and secrets in the
    api_key, token and AMQP password.

    @return: the document and the secret strings it holds.
    """
    if draw(st.integers(0, 9)) == 0:
        return draw(_values), []
    secrets = [draw(_secrets) for _ in range(3)]
    doc: dict[Any, Any] = draw(st.dictionaries(_keys, _values, max_size=3))
    if draw(st.booleans()):
        doc["crits"] = {
            "url": draw(st.one_of(st.just("https://crits.example"), _values)),
            "username": draw(st.one_of(st.just("analyst"), _values)),
            "api_key": secrets[0],
            **draw(st.dictionaries(_keys, _values, max_size=2)),
        }
    if draw(st.booleans()):
        doc["cuckoo"] = {
            draw(_text): {"url": draw(st.one_of(st.just("http://cuckoo:8090"), _values)), "token": secrets[1]}
        }
    if draw(st.booleans()):
        doc["amqp"] = f"amqp://guest:{quote(secrets[2], safe='', errors='surrogatepass')}@127.0.0.1:{draw(st.integers(-5, 70000))}/"
    stages = []
    for _ in range(draw(st.integers(0, 3))):
        stage = draw(st.dictionaries(_keys, _values, max_size=4))
        stage["type"] = draw(st.one_of(st.sampled_from(sorted(STAGES)), _values))
        stages.append(stage)
    doc["stages"] = draw(st.one_of(st.just(stages), _values))
    return doc, secrets


class ParseConfigFuzzTests(SynchronousTestCase):
    """
    L{parse_config} refuses anything it cannot use with a L{ConfigError}
    and nothing else.
    """

    @settings(max_examples=200, deadline=None)
    @given(_documents())
    def test_only_config_errors(self, case: tuple[Any, list[str]]) -> None:
        """
        Every document yields a L{Config} or one L{ConfigError}: one line,
        encodable as UTF-8, quoting none of the secrets it was given.
        """
        doc, secrets = case
        try:
            result = parse_config(doc)
        except ConfigError as e:
            message = str(e)
            self.assertNotIn("\n", message)
            message.encode("utf-8")
            self.assertNotIn(_SECRET, message)
            for secret in secrets:
                self.assertNotIn(secret, message)
        else:
            self.assertIsInstance(result, Config)

    @settings(max_examples=30, deadline=None)
    @given(_values)
    def test_any_value_anywhere(self, value: Any) -> None:
        """
        A hostile value under each top-level key of an otherwise valid
        document still yields only L{ConfigError}.
        """
        for key in ["amqp", "log_level", "log_file", "grace_period", "http_timeout", "crits", "cuckoo", "stages"]:
            doc = {"stages": [{"type": "overseer", "dump_dir": "/d"}], key: value}
            try:
                parse_config(doc)
            except ConfigError as e:
                self.assertNotIn("\n", str(e))
