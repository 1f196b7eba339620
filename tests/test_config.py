# -*- test-case-name: tests.test_config -*-
"""
Tests for L{cuckoodist.config}.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.config import CRITS_BODY_LIMIT, Config, CuckooConfig, load_config, parse_config
from cuckoodist.errors import ConfigError
from cuckoodist.report.rows import STAGE_PARSERS as PARSERS
from cuckoodist.stages.check_results import CheckResultsConfig
from cuckoodist.stages.feed_cuckoo import FeedCuckooConfig
from cuckoodist.stages.overseer import OverseerConfig
from cuckoodist.stages.parse_and_submit import ParseAndSubmitConfig

EXAMPLE = FilePath(__file__).parent().parent().child("etc").child("cuckoodist.yaml")


def minimal(**top: Any) -> dict:
    """
    A small valid document: one Cuckoo and one stage of each type, with
    every optional key left out.  Keyword arguments replace top-level keys.
    """
    doc: dict = {
        "cuckoo": {"main": {"url": "http://cuckoo:8090"}},
        "stages": [
            {"type": "feed_cuckoo", "cuckoo": "main"},
            {"type": "check_results"},
            {"type": "parse_and_submit"},
            {"type": "overseer", "dump_dir": "/var/lib/cuckoodist/dump"},
        ],
    }
    doc.update(top)
    return doc


def with_stage(index: int, **keys: Any) -> dict:
    """
    L{minimal} with keys added to (or replaced in) stage C{index}.
    """
    doc = minimal()
    doc["stages"][index].update(keys)
    return doc


class ErrorAssertions:
    """
    Helpers shared by the error tests.
    """

    def assertConfigError(self, doc: object, expected: str) -> ConfigError:
        """
        Assert that C{doc} is refused with exactly the message C{expected}.
        """
        error = self.assertRaises(ConfigError, parse_config, doc)
        self.assertEqual(str(error), expected)
        return error

    def assertErrorAt(self, doc: object, where: str, reason_pattern: str) -> None:
        """
        Assert that C{doc} is refused at key path C{where} with a reason
        matching the regular expression C{reason_pattern}.
        """
        error = self.assertRaises(ConfigError, parse_config, doc)
        prefix = f"Error in configuration at '{where}': "
        self.assertTrue(str(error).startswith(prefix), str(error))
        self.assertRegex(error.reason, reason_pattern)
        self.assertNotIn("\n", str(error))


class DefaultsTests(SynchronousTestCase):
    """
    Keys left out take the documented defaults.
    """

    def test_top_level(self) -> None:
        """
        Only C{stages} is required; the rest defaults.
        """
        config = parse_config({"stages": [{"type": "check_results"}]})
        self.assertEqual(config.amqp.host, "127.0.0.1")
        self.assertEqual(config.amqp.port, 5672)
        self.assertEqual(config.amqp.vhost, "/")
        self.assertEqual(config.amqp.username, "guest")
        self.assertEqual(config.amqp.password, "guest")
        self.assertFalse(config.amqp.tls)
        self.assertEqual(config.amqp.heartbeat, 30)
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.log_file, "")
        self.assertEqual(config.grace_period, 30.0)
        self.assertEqual(config.http_timeout, 120.0)
        self.assertIsNone(config.crits)
        self.assertEqual(dict(config.cuckoo), {})

    def test_stages(self) -> None:
        """
        Each stage type gets its own defaults, equal to those of its value
        class.
        """
        config = parse_config(minimal())
        self.assertEqual(
            config.stages,
            (
                FeedCuckooConfig(
                    consumer_queue="worker/feed_cuckoo",
                    producer_queue="worker/check_results",
                    failed_queue="worker/failed",
                    prefetch_count=1,
                    cuckoo="main",
                    max_pending=10,
                    check_free_space=False,
                    min_free_space=256 * 1024 * 1024,
                    status_interval=10.0,
                ),
                CheckResultsConfig(
                    consumer_queue="worker/check_results",
                    producer_queue="worker/parse_and_submit",
                    failed_queue="worker/failed",
                    prefetch_count=100,
                    wait_between_requests=5.0,
                    analysis_deadline=86400.0,
                ),
                ParseAndSubmitConfig(
                    consumer_queue="worker/parse_and_submit",
                    producer_queue="",
                    failed_queue="worker/failed",
                    prefetch_count=10,
                    push_api_calls_max=5000,
                    cuckoo_cleanup=True,
                    enabled_parsers=PARSERS,
                    max_report_size=1024**3,
                    max_dropped_files=500,
                    max_dropped_bytes=512 * 1024**2,
                    crits_max_body=2_500_000,
                ),
                OverseerConfig(
                    consumer_queue="worker/failed",
                    prefetch_count=100,
                    dump_dir="/var/lib/cuckoodist/dump",
                    max_retries=3,
                    retry_delay=60.0,
                ),
            ),
        )
        self.assertEqual(
            [s.type for s in config.stages],
            ["feed_cuckoo", "check_results", "parse_and_submit", "overseer"],
        )

    def test_section_defaults(self) -> None:
        """
        C{verify_ssl} defaults to true and a Cuckoo token to empty.
        """
        config = parse_config(
            minimal(crits={"url": "https://crits", "username": "u", "api_key": "k"})
        )
        self.assertTrue(config.crits.verify_ssl)
        self.assertEqual(
            config.cuckoo["main"],
            CuckooConfig(name="main", url="http://cuckoo:8090", token="", verify_ssl=True),
        )

    def test_null_sections(self) -> None:
        """
        A C{crits:} or C{cuckoo:} heading with everything under it commented
        out means the section is absent.
        """
        config = parse_config(
            {"crits": None, "cuckoo": None, "stages": [{"type": "check_results"}]}
        )
        self.assertIsNone(config.crits)
        self.assertEqual(dict(config.cuckoo), {})

    def test_explicit_values(self) -> None:
        """
        Values given are kept, and durations become floats.
        """
        config = parse_config(
            with_stage(
                1, wait_between_requests=2, analysis_deadline=0.5, prefetch_count=7
            )
        )
        stage = config.stages[1]
        self.assertEqual(stage.wait_between_requests, 2.0)
        self.assertIsInstance(stage.wait_between_requests, float)
        self.assertEqual(stage.analysis_deadline, 0.5)
        self.assertEqual(stage.prefetch_count, 7)

    def test_cuckoo_mapping_is_read_only(self) -> None:
        """
        The Cuckoo table of a frozen config cannot be changed behind its back.
        """
        config = parse_config(minimal())
        with self.assertRaises(TypeError):
            config.cuckoo["other"] = config.cuckoo["main"]  # type: ignore[index]


class ExampleFileTests(SynchronousTestCase):
    """
    The shipped C{etc/cuckoodist.yaml} is valid and complete.
    """

    def test_loads(self) -> None:
        """
        The example loads and points at the local simulators.
        """
        config = load_config(EXAMPLE.path)
        self.assertEqual(config.cuckoo["main"].url, "http://127.0.0.1:8090")
        self.assertEqual(config.crits.url, "http://127.0.0.1:8443")
        self.assertEqual(config.amqp.host, "127.0.0.1")
        self.assertEqual(
            [s.type for s in config.stages],
            ["feed_cuckoo", "check_results", "parse_and_submit", "overseer"],
        )
        self.assertEqual(config.stages[-1].dump_dir, "dump")

    def test_every_key_used(self) -> None:
        """
        Every key the loader knows appears in the example, so it documents
        them all.
        """
        doc = yaml.safe_load(EXAMPLE.getContent())
        self.assertEqual(
            set(doc),
            {"amqp", "queue_type", "log_level", "log_file", "log_format", "grace_period", "http_timeout",
             "metrics", "dashboard", "crits", "cuckoo", "stages"},
        )
        self.assertEqual(set(doc["metrics"]), {"listen"})
        self.assertEqual(set(doc["dashboard"]), {"token"})
        self.assertEqual(
            set(doc["crits"]), {"url", "username", "api_key", "verify_ssl", "allowed_urls"}
        )
        self.assertEqual(set(doc["cuckoo"]["main"]), {"url", "token", "verify_ssl", "max_requests"})
        used = {(s["type"], key) for s in doc["stages"] for key in s}
        config = parse_config(doc)
        for stage in config.stages:
            for field in stage.__attrs_attrs__:
                self.assertIn((stage.type, field.name), used)

    def test_chain_comment(self) -> None:
        """
        The commented two-instance parse_and_submit chain is itself valid:
        the first relays to the second, which only handles dropped files.
        """
        text = EXAMPLE.getContent().decode("utf-8")
        block = re.search(r"((?:^  # (?:- |  ).*\n)+)", text, re.MULTILINE)
        self.assertIsNotNone(block)
        uncommented = re.sub(r"^  # ", "", block.group(1), flags=re.MULTILINE)
        stages = yaml.safe_load(uncommented)
        config = parse_config({"stages": stages})
        first, second = config.stages
        self.assertEqual(first.producer_queue, second.consumer_queue)
        self.assertNotIn("dropped", first.enabled_parsers)
        self.assertEqual(second.enabled_parsers, ("dropped",))
        self.assertEqual(second.producer_queue, "")
        self.assertFalse(first.cuckoo_cleanup)
        self.assertTrue(second.cuckoo_cleanup)


class StructureErrorTests(ErrorAssertions, SynchronousTestCase):
    """
    Documents of the wrong shape are refused with one line naming the place.
    """

    def test_empty(self) -> None:
        """
        An empty document is refused.
        """
        self.assertConfigError(
            None, "Error in configuration: the configuration is empty; expected a mapping"
        )

    def test_top_level_not_mapping(self) -> None:
        """
        A top level that is a list or scalar is refused.
        """
        self.assertConfigError(
            [1], "Error in configuration: the top level must be a mapping, got a list"
        )
        self.assertConfigError(
            "x", "Error in configuration: the top level must be a mapping, got a string"
        )

    def test_unknown_top_key(self) -> None:
        """
        An unknown top-level key is named, with a suggestion for a typo.
        """
        self.assertConfigError(
            minimal(log_levle="info"),
            "Error in configuration at 'log_levle': unknown key; did you mean 'log_level'?",
        )
        self.assertConfigError(
            minimal(frobnicate=1), "Error in configuration at 'frobnicate': unknown key"
        )

    def test_non_string_key(self) -> None:
        """
        A key that YAML read as a number is refused.
        """
        doc = minimal()
        doc["cuckoo"]["main"][8090] = "x"
        self.assertConfigError(
            doc, "Error in configuration at 'cuckoo.main.8090': keys must be strings, got an integer"
        )

    def test_control_characters_in_key(self) -> None:
        """
        A key with a newline or escape in it is shown escaped, so the message
        stays on one line and cannot rewrite a terminal.
        """
        self.assertConfigError(
            minimal(**{"log\nlevel": 1}),
            "Error in configuration at ''log\\nlevel'': unknown key; did you mean 'log_level'?",
        )
        self.assertConfigError(
            minimal(cuckoo={"\x1b[2J": {"url": "http://c"}}),
            "Error in configuration at 'cuckoo.'\\x1b[2J'': "
            "a Cuckoo name must be non-empty and printable",
        )

    def test_unknown_section_key(self) -> None:
        """
        Unknown keys inside sections are refused with their full path.
        """
        doc = minimal()
        doc["cuckoo"]["main"]["tokken"] = "x"
        self.assertConfigError(
            doc, "Error in configuration at 'cuckoo.main.tokken': unknown key; did you mean 'token'?"
        )

    def test_key_of_other_stage_type(self) -> None:
        """
        A key that belongs to another stage type says which one.
        """
        self.assertConfigError(
            with_stage(1, max_pending=3),
            "Error in configuration at 'stages.1.max_pending': unknown key; "
            "it is a setting of feed_cuckoo stages, not check_results",
        )
        self.assertConfigError(
            with_stage(3, failed_queue="x"),
            "Error in configuration at 'stages.3.failed_queue': unknown key; it is a "
            "setting of feed_cuckoo and check_results and parse_and_submit stages, not overseer",
        )

    def test_missing_stages(self) -> None:
        """
        C{stages} is required.
        """
        doc = minimal()
        del doc["stages"]
        self.assertConfigError(doc, "Error in configuration at 'stages': missing required key")

    def test_empty_stages(self) -> None:
        """
        An empty stage list is refused: the process would do nothing.
        """
        self.assertConfigError(
            minimal(stages=[]), "Error in configuration at 'stages': at least one stage is needed"
        )

    def test_stages_not_list(self) -> None:
        """
        C{stages} must be a list.
        """
        self.assertConfigError(
            minimal(stages={"type": "overseer"}),
            "Error in configuration at 'stages': expected a list of stages, got a mapping",
        )

    def test_stage_not_mapping(self) -> None:
        """
        Each stage must be a mapping.
        """
        self.assertConfigError(
            minimal(stages=["overseer"]),
            "Error in configuration at 'stages.0': expected a mapping, got a string",
        )


class MissingKeyTests(ErrorAssertions, SynchronousTestCase):
    """
    Required keys are named when absent.
    """

    def test_stage_type(self) -> None:
        """
        Every stage needs a type.
        """
        doc = minimal()
        del doc["stages"][2]["type"]
        self.assertConfigError(doc, "Error in configuration at 'stages.2.type': missing required key")

    def test_feed_cuckoo(self) -> None:
        """
        feed_cuckoo needs to know which Cuckoo to feed.
        """
        doc = minimal()
        del doc["stages"][0]["cuckoo"]
        self.assertConfigError(doc, "Error in configuration at 'stages.0.cuckoo': missing required key")

    def test_dump_dir(self) -> None:
        """
        The overseer needs a dump directory.
        """
        doc = minimal()
        del doc["stages"][3]["dump_dir"]
        self.assertConfigError(doc, "Error in configuration at 'stages.3.dump_dir': missing required key")

    def test_crits_keys(self) -> None:
        """
        The crits section, if present, needs url, username and api_key.
        """
        full = {"url": "https://crits", "username": "u", "api_key": "k"}
        for key in full:
            section = dict(full)
            del section[key]
            self.assertConfigError(
                minimal(crits=section),
                f"Error in configuration at 'crits.{key}': missing required key",
            )

    def test_cuckoo_url(self) -> None:
        """
        A Cuckoo entry needs a url.
        """
        self.assertConfigError(
            minimal(cuckoo={"main": {"token": "t"}}),
            "Error in configuration at 'cuckoo.main.url': missing required key",
        )


class TypeErrorTests(ErrorAssertions, SynchronousTestCase):
    """
    Values of the wrong type say what was expected and what was found.
    """

    def test_bool_is_not_int(self) -> None:
        """
        C{true} is refused where an integer is expected, although Python
        counts C{bool} as an C{int}.
        """
        self.assertConfigError(
            with_stage(0, max_pending=True),
            "Error in configuration at 'stages.0.max_pending': expected an integer, got a boolean",
        )

    def test_bool_is_not_duration(self) -> None:
        """
        C{true} is refused where seconds are expected.
        """
        self.assertConfigError(
            minimal(grace_period=False),
            "Error in configuration at 'grace_period': expected a number of seconds, got a boolean",
        )

    def test_int_is_not_bool(self) -> None:
        """
        C{1} is refused where a boolean is expected.
        """
        self.assertConfigError(
            with_stage(2, cuckoo_cleanup=1),
            "Error in configuration at 'stages.2.cuckoo_cleanup': "
            "expected a boolean (true or false), got an integer",
        )

    def test_float_is_not_int(self) -> None:
        """
        A size must be a whole number.
        """
        self.assertConfigError(
            with_stage(2, max_report_size=1.5),
            "Error in configuration at 'stages.2.max_report_size': expected an integer, got a float",
        )

    def test_int_is_a_float(self) -> None:
        """
        An integer is a valid number of seconds.
        """
        config = parse_config(minimal(http_timeout=7))
        self.assertEqual(config.http_timeout, 7.0)

    def test_quoted_number(self) -> None:
        """
        A quoted number is a string, not a number.
        """
        self.assertConfigError(
            with_stage(1, prefetch_count="5"),
            "Error in configuration at 'stages.1.prefetch_count': expected an integer, got a string",
        )

    def test_unquoted_token(self) -> None:
        """
        A numeric token is refused without echoing it.
        """
        doc = minimal()
        doc["cuckoo"]["main"]["token"] = 123456789
        error = self.assertConfigError(
            doc, "Error in configuration at 'cuckoo.main.token': expected a string, got an integer"
        )
        self.assertNotIn("123456789", str(error))

    def test_null_value(self) -> None:
        """
        A key with no value is refused for a scalar setting.
        """
        self.assertConfigError(
            minimal(log_file=None),
            "Error in configuration at 'log_file': expected a string, got null",
        )

    def test_parsers_not_list(self) -> None:
        """
        enabled_parsers must be a list.
        """
        self.assertConfigError(
            with_stage(2, enabled_parsers="info"),
            "Error in configuration at 'stages.2.enabled_parsers': expected a list, got a string",
        )

    def test_section_not_mapping(self) -> None:
        """
        crits must be a mapping.
        """
        self.assertConfigError(
            minimal(crits=["https://crits"]),
            "Error in configuration at 'crits': expected a mapping, got a list",
        )

    def test_non_finite(self) -> None:
        """
        C{.inf} and C{.nan} are not durations.
        """
        self.assertErrorAt(minimal(http_timeout=float("inf")), "http_timeout", "finite")
        self.assertErrorAt(minimal(http_timeout=float("nan")), "http_timeout", "finite")

    def test_huge_int_duration(self) -> None:
        """
        An integer too large for a float is refused, not crashed on.
        """
        self.assertConfigError(
            minimal(grace_period=10**400),
            "Error in configuration at 'grace_period': is too large",
        )


class EnumErrorTests(ErrorAssertions, SynchronousTestCase):
    """
    Values from a fixed set list the choices.
    """

    def test_log_level(self) -> None:
        """
        Only debug, info and warning are log levels.
        """
        self.assertConfigError(
            minimal(log_level="verbose"),
            "Error in configuration at 'log_level': 'verbose' is not one of debug, info, warning",
        )

    def test_stage_type(self) -> None:
        """
        An unknown stage type is refused.
        """
        self.assertConfigError(
            with_stage(1, type="check"),
            "Error in configuration at 'stages.1.type': 'check' is not one of "
            "feed_cuckoo, check_results, parse_and_submit, overseer",
        )

    def test_parser(self) -> None:
        """
        An unknown parser is refused at its index.
        """
        self.assertConfigError(
            with_stage(2, enabled_parsers=["info", "strings"]),
            "Error in configuration at 'stages.2.enabled_parsers.1': 'strings' is not one of "
            "info, signatures, behavior, network, dropped",
        )

    def test_duplicate_parser(self) -> None:
        """
        A parser listed twice is refused.
        """
        self.assertConfigError(
            with_stage(2, enabled_parsers=["info", "dropped", "info"]),
            "Error in configuration at 'stages.2.enabled_parsers.2': 'info' is listed twice",
        )

    def test_parser_subset(self) -> None:
        """
        Any subset of parsers is accepted, in the order given.
        """
        config = parse_config(with_stage(2, enabled_parsers=["dropped", "info"]))
        self.assertEqual(config.stages[2].enabled_parsers, ("dropped", "info"))


class RangeErrorTests(ErrorAssertions, SynchronousTestCase):
    """
    Numbers outside the meaningful range are refused.
    """

    def test_prefetch_zero(self) -> None:
        """
        A prefetch count of 0 would mean "unlimited" to RabbitMQ; refuse it.
        """
        self.assertConfigError(
            with_stage(3, prefetch_count=0),
            "Error in configuration at 'stages.3.prefetch_count': must be at least 1, got 0",
        )

    def test_prefetch_too_large(self) -> None:
        """
        AMQP carries the prefetch count in 16 bits.
        """
        self.assertConfigError(
            with_stage(1, prefetch_count=70000),
            "Error in configuration at 'stages.1.prefetch_count': must be at most 65535, got 70000",
        )

    def test_negative_size(self) -> None:
        """
        Sizes cannot be negative.
        """
        self.assertConfigError(
            with_stage(0, min_free_space=-1),
            "Error in configuration at 'stages.0.min_free_space': must be at least 0, got -1",
        )

    def test_zero_interval(self) -> None:
        """
        Polling with no pause is refused.
        """
        self.assertConfigError(
            with_stage(1, wait_between_requests=0),
            "Error in configuration at 'stages.1.wait_between_requests': must be more than zero, got 0",
        )

    def test_negative_grace(self) -> None:
        """
        A negative grace period is refused, but zero (stop at once) is fine.
        """
        self.assertConfigError(
            minimal(grace_period=-0.5),
            "Error in configuration at 'grace_period': must be zero or more, got -0.5",
        )
        self.assertEqual(parse_config(minimal(grace_period=0)).grace_period, 0.0)

    def test_zero_allowed(self) -> None:
        """
        Zero is meaningful for retries and API call limits.
        """
        config = parse_config(
            {
                "stages": [
                    {"type": "overseer", "dump_dir": "d", "max_retries": 0},
                    {"type": "parse_and_submit", "push_api_calls_max": 0},
                ]
            }
        )
        self.assertEqual(config.stages[0].max_retries, 0)
        self.assertEqual(config.stages[1].push_api_calls_max, 0)

    def test_crits_body_limit(self) -> None:
        """
        CRITs refuses bodies over 2,621,440 bytes, so a larger cap is refused.
        """
        self.assertConfigError(
            with_stage(2, crits_max_body=CRITS_BODY_LIMIT + 1),
            "Error in configuration at 'stages.2.crits_max_body': must be at most 2621440, got 2621441",
        )
        config = parse_config(with_stage(2, crits_max_body=CRITS_BODY_LIMIT))
        self.assertEqual(config.stages[2].crits_max_body, CRITS_BODY_LIMIT)

    def test_max_retries_bounded(self) -> None:
        """
        The backoff delay must stay a finite float.
        """
        self.assertErrorAt(with_stage(3, max_retries=5000), "stages.3.max_retries", "at most 100")


class QueueErrorTests(ErrorAssertions, SynchronousTestCase):
    """
    Queue names are checked against AMQP rules and loops.
    """

    def test_empty_consumer(self) -> None:
        """
        A stage must consume from somewhere.
        """
        self.assertConfigError(
            with_stage(1, consumer_queue=""),
            "Error in configuration at 'stages.1.consumer_queue': must not be empty",
        )

    def test_empty_producer(self) -> None:
        """
        Only parse_and_submit may end the chain with an empty producer queue.
        """
        self.assertConfigError(
            with_stage(0, producer_queue=""),
            "Error in configuration at 'stages.0.producer_queue': must not be empty",
        )
        config = parse_config(with_stage(2, producer_queue=""))
        self.assertEqual(config.stages[2].producer_queue, "")

    def test_loop(self) -> None:
        """
        Producing into the queue a stage consumes from is refused.
        """
        self.assertConfigError(
            with_stage(2, producer_queue="worker/parse_and_submit"),
            "Error in configuration at 'stages.2.producer_queue': "
            "must differ from consumer_queue, or messages would loop",
        )
        self.assertErrorAt(
            with_stage(1, failed_queue="worker/check_results"),
            "stages.1.failed_queue",
            "must differ from consumer_queue",
        )

    def test_reserved_and_long(self) -> None:
        """
        amq.* names are reserved and names are at most 255 bytes.
        """
        self.assertErrorAt(with_stage(1, consumer_queue="amq.x"), "stages.1.consumer_queue", "reserved")
        self.assertErrorAt(with_stage(1, consumer_queue="q" * 256), "stages.1.consumer_queue", "255")

    def test_unframeable_names(self) -> None:
        """
        Names AMQP cannot frame or that would garble log lines are refused
        at start-up, for every queue key: too many bytes of UTF-8 (even if
        few characters), lone surrogates and control characters.  The
        reason never quotes the name.
        """
        cases = [
            ("consumer_queue", "\u00e9" * 128, "255 bytes"),
            ("producer_queue", "worker/\ud800", "surrogate"),
            ("failed_queue", "worker/\x00failed", "control"),
            ("consumer_queue", "worker\nfeed", "control"),
            ("failed_queue", "worker/\x7f", "control"),
            ("producer_queue", "amq.gen-1", "reserved"),
        ]
        for key, name, reason in cases:
            error = self.assertRaises(ConfigError, parse_config, with_stage(0, **{key: name}))
            self.assertTrue(str(error).startswith(f"Error in configuration at 'stages.0.{key}': "))
            self.assertIn(reason, error.reason)
            self.assertNotIn(name, str(error))
            self.assertNotIn("\n", str(error))

    def test_unicode_names_accepted(self) -> None:
        """
        Printable non-ASCII names that fit in 255 bytes are fine.
        """
        config = parse_config(with_stage(0, producer_queue="worker/\u00e9tape"))
        self.assertEqual(config.stages[0].producer_queue, "worker/\u00e9tape")


class CuckooReferenceTests(ErrorAssertions, SynchronousTestCase):
    """
    Stages and Cuckoo entries refer to each other consistently.
    """

    def test_unknown_cuckoo(self) -> None:
        """
        A feed_cuckoo stage naming no configured Cuckoo is refused.
        """
        doc = minimal()
        doc["stages"].insert(0, {"type": "check_results"})
        doc["stages"].insert(0, {"type": "check_results", "consumer_queue": "other"})
        doc["stages"][2]["cuckoo"] = "backup"
        self.assertConfigError(
            doc, "Error in configuration at 'stages.2.cuckoo': unknown cuckoo 'backup' (known: main)"
        )

    def test_no_cuckoos(self) -> None:
        """
        Without a cuckoo section, no feed_cuckoo stage can work.
        """
        self.assertConfigError(
            {"stages": [{"type": "feed_cuckoo", "cuckoo": "main"}]},
            "Error in configuration at 'stages.0.cuckoo': "
            "unknown cuckoo 'main' (known: none are configured)",
        )

    def test_same_url_twice(self) -> None:
        """
        Two names for one URL are refused: a message's Cuckoo URL could not
        choose between their tokens.
        """
        doc = minimal()
        doc["cuckoo"]["copy"] = {"url": "HTTP://Cuckoo:8090/", "token": "t"}
        self.assertConfigError(
            doc,
            "Error in configuration at 'cuckoo.copy.url': same URL as cuckoo 'main'; "
            "a message could not tell them apart",
        )


class HttpUrlTests(ErrorAssertions, SynchronousTestCase):
    """
    Cuckoo and CRITs URLs must be plain http(s) base URLs.
    """

    def cuckoo_url(self, url: object) -> dict:
        return minimal(cuckoo={"main": {"url": url}})

    def test_trailing_slash(self) -> None:
        """
        Trailing slashes are removed and nothing else is changed.
        """
        config = parse_config(self.cuckoo_url("HTTP://Cuckoo:8090/api//"))
        self.assertEqual(config.cuckoo["main"].url, "HTTP://Cuckoo:8090/api")

    def test_bad_urls(self) -> None:
        """
        Other schemes, missing hosts, credentials, queries, bad ports and
        whitespace are refused at the url key.
        """
        for url, reason in [
            ("ftp://cuckoo", "must be an http:// or https:// URL"),
            ("cuckoo:8090", "must be an http:// or https:// URL"),
            ("http://", "the URL has no host"),
            ("https://user:secret@crits", "the URL must not contain credentials"),
            ("http://cuckoo/?x=1", "the URL must not have a query or fragment"),
            ("http://cuckoo/#top", "the URL must not have a query or fragment"),
            ("http://cuckoo:99999", "not a valid URL (bad port or host)"),
            ("http://cuckoo:0", "port 0 is not a valid port"),
            ("http://cuckoo :8090", "a URL cannot contain whitespace or control characters"),
            ("", "must not be empty"),
        ]:
            error = self.assertConfigError(
                self.cuckoo_url(url), f"Error in configuration at 'cuckoo.main.url': {reason}"
            )
            self.assertNotIn("secret", str(error))

    def test_crits_url(self) -> None:
        """
        The CRITs URL is checked the same way.
        """
        self.assertConfigError(
            minimal(crits={"url": "mongodb://crits", "username": "u", "api_key": "k"}),
            "Error in configuration at 'crits.url': must be an http:// or https:// URL",
        )


class AmqpTests(ErrorAssertions, SynchronousTestCase):
    """
    The AMQP URL is split into connection parameters.
    """

    def amqp(self, url: str):
        return parse_config(minimal(amqp=url)).amqp

    def test_amqps(self) -> None:
        """
        amqps:// means TLS on port 5671 unless a port is given.
        """
        amqp = self.amqp("amqps://u:p@rabbit.example/")
        self.assertTrue(amqp.tls)
        self.assertEqual((amqp.host, amqp.port), ("rabbit.example", 5671))
        self.assertEqual(self.amqp("amqps://u:p@rabbit:5999").port, 5999)
        self.assertFalse(self.amqp("amqp://u:p@rabbit").tls)

    def test_scheme_case(self) -> None:
        """
        The scheme is case-insensitive.
        """
        self.assertTrue(self.amqp("AMQPS://u:p@rabbit").tls)

    def test_vhost(self) -> None:
        """
        No path and "/" both mean the vhost "/"; a path segment is
        percent-decoded, so %2f is a slash.
        """
        self.assertEqual(self.amqp("amqp://u:p@h").vhost, "/")
        self.assertEqual(self.amqp("amqp://u:p@h/").vhost, "/")
        self.assertEqual(self.amqp("amqp://u:p@h/%2f").vhost, "/")
        self.assertEqual(self.amqp("amqp://u:p@h/%2Fprod").vhost, "/prod")
        self.assertEqual(self.amqp("amqp://u:p@h/cuckoo%20dist").vhost, "cuckoo dist")

    def test_vhost_two_segments(self) -> None:
        """
        An unencoded slash inside the vhost is ambiguous and refused.
        """
        self.assertConfigError(
            minimal(amqp="amqp://u:p@h/a/b"),
            "Error in configuration at 'amqp': the virtual host must be one path "
            "segment; write '/' in it as %2F",
        )

    def test_credentials(self) -> None:
        """
        User name and password are percent-decoded; both absent means guest.
        """
        amqp = self.amqp("amqp://ana%40lyst:p%3Ass%2Fw@h")
        self.assertEqual((amqp.username, amqp.password), ("ana@lyst", "p:ss/w"))
        amqp = self.amqp("amqp://h")
        self.assertEqual((amqp.username, amqp.password), ("guest", "guest"))
        amqp = self.amqp("amqp://u:@h")
        self.assertEqual(amqp.password, "")

    def test_half_credentials(self) -> None:
        """
        A user name without a password is refused.
        """
        self.assertConfigError(
            minimal(amqp="amqp://user@h"),
            "Error in configuration at 'amqp': give both a user name and a password, or neither",
        )

    def test_heartbeat(self) -> None:
        """
        ?heartbeat=N sets the heartbeat; 0 disables it.
        """
        self.assertEqual(self.amqp("amqp://u:p@h/?heartbeat=10").heartbeat, 10)
        self.assertEqual(self.amqp("amqp://u:p@h/?heartbeat=0").heartbeat, 0)

    def test_bad_query(self) -> None:
        """
        Unknown parameters and malformed heartbeats are refused, and the
        password never appears in the message.
        """
        for query, reason in [
            ("heartbeat=-1", "heartbeat must be a whole number of seconds"),
            ("heartbeat=1.5", "heartbeat must be a whole number of seconds"),
            ("heartbeat=", "heartbeat must be a whole number of seconds"),
            ("heartbeat=99999", "heartbeat must be at most 65535"),
            ("heartbeat=1&heartbeat=2", "heartbeat is given more than once"),
            ("frame_max=1", "unknown URL parameter 'frame_max'; supported: heartbeat, cacertfile, "
             "certfile, keyfile, verify, server_name_indication"),
            ("heartbeat", "the URL query is malformed"),
        ]:
            error = self.assertConfigError(
                minimal(amqp=f"amqp://u:hunter2@h/?{query}"),
                f"Error in configuration at 'amqp': {reason}",
            )
            self.assertNotIn("hunter2", str(error))

    def test_bad_urls(self) -> None:
        """
        Other schemes, missing hosts and bad ports are refused.
        """
        for url, reason in [
            ("http://u:hunter2@h/", "must be an amqp:// or amqps:// URL"),
            ("amqp://", "the URL has no host"),
            ("amqp://u:hunter2@h:notaport/", "not a valid URL (bad port or host)"),
            ("amqp://u:hunter2@h/#x", "the URL must not have a fragment"),
            (7, "expected a string, got an integer"),
        ]:
            error = self.assertConfigError(
                minimal(amqp=url), f"Error in configuration at 'amqp': {reason}"
            )
            self.assertNotIn("hunter2", str(error))


class SecretTests(SynchronousTestCase):
    """
    Secrets never show in a repr, so logging a config is safe.
    """

    def test_repr(self) -> None:
        """
        The AMQP password and URL, the CRITs API key and Cuckoo tokens are
        absent from C{repr(config)}, while ordinary settings are present.
        """
        config = parse_config(
            minimal(
                amqp="amqp://analyst:S3cretAmqp@rabbit/",
                crits={"url": "https://crits", "username": "analyst", "api_key": "S3cretKey"},
                cuckoo={"main": {"url": "http://cuckoo:8090", "token": "S3cretToken"}},
            )
        )
        self.assertEqual(config.amqp.password, "S3cretAmqp")
        self.assertEqual(config.crits.api_key, "S3cretKey")
        self.assertEqual(config.cuckoo["main"].token, "S3cretToken")
        text = repr(config)
        self.assertNotIn("S3cret", text)
        self.assertIn("rabbit", text)
        self.assertIn("http://cuckoo:8090", text)


class CuckooForUrlTests(SynchronousTestCase):
    """
    L{Config.cuckoo_for_url} finds the instance a message's URL names.
    """

    def setUp(self) -> None:
        self.config = parse_config(
            minimal(
                cuckoo={
                    "main": {"url": "http://Cuckoo.example:8090/", "token": "a"},
                    "tls": {"url": "https://sandbox.example", "token": "b"},
                    "proxied": {"url": "https://front.example/cuckoo/api"},
                }
            )
        )

    def name_for(self, url: str) -> str | None:
        found = self.config.cuckoo_for_url(url)
        return None if found is None else found.name

    def test_equivalent_spellings(self) -> None:
        """
        Trailing slashes, scheme and host case and default ports do not
        matter.
        """
        self.assertEqual(self.name_for("http://cuckoo.example:8090"), "main")
        self.assertEqual(self.name_for("HTTP://CUCKOO.EXAMPLE:8090/"), "main")
        self.assertEqual(self.name_for("https://sandbox.example:443/"), "tls")
        self.assertEqual(self.name_for("https://Sandbox.Example"), "tls")
        self.assertEqual(self.name_for("https://front.example:443/cuckoo/api/"), "proxied")

    def test_different(self) -> None:
        """
        Another scheme, port, host or path does not match: a token for an
        https Cuckoo is never sent over plain http.
        """
        self.assertIsNone(self.name_for("http://sandbox.example"))
        self.assertIsNone(self.name_for("http://cuckoo.example:8091"))
        self.assertIsNone(self.name_for("http://cuckoo.example"))
        self.assertIsNone(self.name_for("https://front.example/cuckoo"))
        self.assertIsNone(self.name_for("http://cuckoo.example.evil:8090"))

    def test_garbage(self) -> None:
        """
        A malformed URL from a message matches nothing instead of raising.
        """
        for url in [
            "",
            "not a url",
            "http://[::1",
            "http://cuckoo.example:99999",
            "ftp://cuckoo.example:8090",
        ]:
            self.assertIsNone(self.name_for(url))


class CritsUrlAllowedTests(ErrorAssertions, SynchronousTestCase):
    """
    L{Config.crits_url_allowed} admits only the CRITs the configuration
    lists, so a message cannot send the daemon to any other host.
    """

    def setUp(self) -> None:
        self.config = parse_config(
            minimal(
                crits={
                    "url": "https://Crits.example/",
                    "username": "u",
                    "api_key": "k",
                    "allowed_urls": ["http://other.example:8080/crits/", "https://third.example"],
                }
            )
        )

    def test_default_empty(self) -> None:
        """
        Without C{allowed_urls} only C{crits.url} itself is allowed.
        """
        config = parse_config(
            minimal(crits={"url": "https://crits.example", "username": "u", "api_key": "k"})
        )
        self.assertEqual(config.crits.allowed_urls, ())
        self.assertTrue(config.crits_url_allowed("https://crits.example"))
        self.assertFalse(config.crits_url_allowed("https://third.example"))

    def test_stored_without_trailing_slash(self) -> None:
        """
        The URLs are kept as a tuple, trailing slashes removed like C{url}.
        """
        self.assertEqual(
            self.config.crits.allowed_urls,
            ("http://other.example:8080/crits", "https://third.example"),
        )

    def test_equivalent_spellings(self) -> None:
        """
        Scheme and host case, default ports and trailing slashes do not
        matter, for C{url} and for each allowed URL.
        """
        for url in [
            "https://crits.example",
            "HTTPS://CRITS.EXAMPLE:443/",
            "http://OTHER.example:8080/crits",
            "http://other.example:8080/crits/",
            "https://third.example:443",
        ]:
            self.assertTrue(self.config.crits_url_allowed(url), url)

    def test_others_refused(self) -> None:
        """
        Another scheme, host, port or path, and garbage, are refused.
        """
        for url in [
            "http://crits.example",
            "https://crits.example:8443",
            "https://crits.example.evil",
            "http://other.example:8080",
            "http://other.example:8080/crits/api",
            "http://127.0.0.1:8443",
            "",
            "not a url",
            "http://[::1",
            "https://crits.example:99999",
            "\ud800",
        ]:
            self.assertFalse(self.config.crits_url_allowed(url), url)

    def test_no_crits_section(self) -> None:
        """
        Without a C{crits} section no message may name a CRITs.
        """
        self.assertFalse(parse_config(minimal()).crits_url_allowed("https://crits.example"))

    def test_invalid_entries(self) -> None:
        """
        Each entry is checked like C{crits.url}, and named by its index.
        """
        crits = {"url": "https://crits", "username": "u", "api_key": "k"}
        self.assertConfigError(
            minimal(crits=dict(crits, allowed_urls="https://x")),
            "Error in configuration at 'crits.allowed_urls': expected a list of URLs, got a string",
        )
        self.assertConfigError(
            minimal(crits=dict(crits, allowed_urls=["https://x", "ftp://y"])),
            "Error in configuration at 'crits.allowed_urls.1': must be an http:// or https:// URL",
        )
        error = self.assertRaises(
            ConfigError,
            parse_config,
            minimal(crits=dict(crits, allowed_urls=["https://user:Sup3rSecret@x"])),
        )
        self.assertNotIn("Sup3rSecret", str(error))


class LoadConfigTests(SynchronousTestCase):
    """
    L{load_config} turns file and YAML problems into L{ConfigError}.
    """

    def write(self, content: bytes) -> str:
        path = FilePath(self.mktemp())
        path.setContent(content)
        return path.path

    def test_loads(self) -> None:
        """
        A valid file is parsed.
        """
        path = self.write(b"stages:\n  - type: overseer\n    dump_dir: /tmp/d\n")
        self.assertEqual(load_config(path).stages[0].dump_dir, "/tmp/d")

    def test_missing_file(self) -> None:
        """
        A file that does not exist is reported with its name.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error), f"Error in configuration: cannot read {path!r}: No such file or directory"
        )

    def test_directory(self) -> None:
        """
        A directory is not a configuration file.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"Error in configuration: cannot read {path!r}: Is a directory")

    def test_syntax_error(self) -> None:
        """
        A YAML syntax error gives the line and column.
        """
        path = self.write(b"log_level: info\nstages:\n  - type: overseer\n   dump_dir: x: y\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertRegex(
            str(error),
            r"^Error in configuration: YAML error in '.*' at line 4, column \d+: .+$",
        )

    def test_python_tag(self) -> None:
        """
        Python object tags are refused by the safe loader, as a ConfigError.
        """
        path = self.write(b"stages: !!python/object/apply:os.system ['true']\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertRegex(str(error), r"YAML error in '.*' at line 1")

    def test_not_utf8(self) -> None:
        """
        Bytes that are not text are refused.
        """
        path = self.write(b"stages: \xff\xfe\x00\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("YAML error", str(error))

    def test_empty_file(self) -> None:
        """
        An empty file is refused as an empty configuration.
        """
        error = self.assertRaises(ConfigError, load_config, self.write(b"# nothing\n"))
        self.assertEqual(
            str(error), "Error in configuration: the configuration is empty; expected a mapping"
        )

    def test_duplicate_key(self) -> None:
        """
        A key given twice in one mapping is refused rather than silently
        overridden.
        """
        path = self.write(
            b"stages:\n  - type: overseer\n    dump_dir: /a\n    dump_dir: /b\n"
        )
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error),
            "Error in configuration at 'stages.0.dump_dir': "
            "duplicate key on line 4, first given on line 3",
        )

    def test_too_large(self) -> None:
        """
        A file over 1 MiB is refused without being parsed.
        """
        path = self.write(b"#" * (1024 * 1024 + 1))
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("is larger than 1048576 bytes", str(error))

    def test_deep_nesting(self) -> None:
        """
        Absurd nesting is refused, not a RecursionError traceback.
        """
        path = self.write(b"stages: " + b"[" * 100000 + b"]" * 100000 + b"\n")
        self.assertRaises(ConfigError, load_config, path)

    def test_alias_bomb(self) -> None:
        """
        Nested aliases (a "billion laughs" document) are handled quickly.
        """
        lines = [b"a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        for i in range(1, 12):
            refs = b", ".join([b"*a%d" % (i - 1)] * 9)
            lines.append(b"a%d: &a%d [%s]" % (i, i, refs))
        lines.append(b"stages: *a11")
        error = self.assertRaises(ConfigError, load_config, self.write(b"\n".join(lines)))
        self.assertEqual(str(error), "Error in configuration at 'a0': unknown key")


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


def _key_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """
    Every path to a value inside a document.
    """
    paths = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += _key_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            paths += _key_paths(value, prefix + (index,))
    return paths


_VALID = yaml.safe_load(EXAMPLE.getContent())
_PATHS = _key_paths(_VALID)


class NeverCrashesTests(SynchronousTestCase):
    """
    Whatever the document, the result is a L{Config} or a L{ConfigError}.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(_PATHS), _values)
    def test_one_value_replaced(self, path: tuple, value: Any) -> None:
        """
        Replacing any value of the example by anything gives a config or a
        single-line ConfigError whose path is a prefix of, or within, the
        replaced key.
        """
        doc = copy.deepcopy(_VALID)
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        try:
            config = parse_config(doc)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertNotIn("change-me", str(e))
        else:
            self.assertIsInstance(config, Config)

    @settings(max_examples=200, deadline=None)
    @given(_values)
    def test_any_document(self, doc: Any) -> None:
        """
        An arbitrary document never escapes as another exception.
        """
        try:
            parse_config(doc)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))


class CuckooMaxRequestsTests(ErrorAssertions, SynchronousTestCase):
    """
    C{cuckoo.<name>.max_requests}: the cap on requests in flight to one
    node, 8 unless set, an integer from 1 to 1000.
    """

    def test_default_and_set(self) -> None:
        """
        Unset, it is 8; set, it is what the entry says.
        """
        config = parse_config(minimal(cuckoo={"main": {"url": "http://c:8090"}, "other": {"url": "http://d:8090", "max_requests": 2}}))
        self.assertEqual((config.cuckoo["main"].max_requests, config.cuckoo["other"].max_requests), (8, 2))

    def test_bad_values(self) -> None:
        """
        Zero, negatives, too large, booleans, floats and strings are
        refused, naming the key's path.
        """
        for value, reason in (
            (0, "must be at least 1, got 0"),
            (-3, "must be at least 1, got -3"),
            (1001, "must be at most 1000, got 1001"),
            (True, "expected an integer"),
            (2.5, "expected an integer"),
            ("8", "expected an integer"),
        ):
            self.assertErrorAt(minimal(cuckoo={"main": {"url": "http://c:8090", "max_requests": value}}), "cuckoo.main.max_requests", reason)


class QueueTypeTests(ErrorAssertions, SynchronousTestCase):
    """
    C{queue_type}: classic by default, quorum on request, nothing else,
    and no priorities with quorum queues.
    """

    def test_default_classic(self) -> None:
        """
        Without the key every queue is classic, as the Go workers declare
        them.
        """
        self.assertEqual(parse_config(minimal()).queue_type, "classic")

    def test_quorum(self) -> None:
        """
        C{quorum} is taken as it is.
        """
        self.assertEqual(parse_config(minimal(queue_type="quorum")).queue_type, "quorum")

    def test_refused(self) -> None:
        """
        Anything else is refused, naming both choices and never quoting the
        value (a misplaced string may be a secret).
        """
        reason = (
            "Error in configuration at 'queue_type': must be classic (the default: queues on one node, as the "
            "Go workers declare them) or quorum (queues replicated over the nodes of a RabbitMQ cluster)"
        )
        for value in ("Quorum", "stream", "", None, 1, ["quorum"], {"quorum": True}):
            error = self.assertConfigError(minimal(queue_type=value), reason)
            self.assertEqual(error.path, ("queue_type",))

    def test_priorities_refused_with_quorum(self) -> None:
        """
        RabbitMQ 3.10 quorum queues have no priorities: a stage with
        C{max_priority} under C{queue_type: quorum} stops the start, naming
        the stage's key and both ways out; with classic queues it is fine.
        """
        doc = minimal(queue_type="quorum")
        doc["stages"][1]["max_priority"] = 3
        self.assertConfigError(
            doc,
            "Error in configuration at 'stages.1.max_priority': quorum queues have no priorities in RabbitMQ; "
            "set max_priority to 0 or queue_type to classic",
        )
        doc["stages"][1]["max_priority"] = 0
        self.assertEqual(parse_config(doc).queue_type, "quorum")
        doc = minimal(queue_type="classic")
        doc["stages"][1]["max_priority"] = 3
        self.assertEqual(parse_config(doc).stages[1].max_priority, 3)


class AmqpNodesTests(ErrorAssertions, SynchronousTestCase):
    """
    The C{amqp} key as a list of nodes: C{amqp} stays the first node, and
    C{amqp_nodes} lists them all.
    """

    def test_one_url(self) -> None:
        """
        One URL, or none, is a cluster of one node.
        """
        config = parse_config(minimal(amqp="amqp://u:p@rabbit1/"))
        self.assertEqual(config.amqp_nodes, (config.amqp,))
        config = parse_config(minimal())
        self.assertEqual(config.amqp_nodes, (config.amqp,))
        self.assertEqual((config.amqp.host, config.amqp.port), ("127.0.0.1", 5672))

    def test_list(self) -> None:
        """
        Each URL is read like a single one; C{amqp} is the first.
        """
        config = parse_config(minimal(amqp=[
            "amqp://u:p@rabbit1/prod?heartbeat=10", "amqp://u:p@rabbit2:5673/prod", "amqps://u:p@rabbit3/prod",
        ]))
        self.assertEqual(
            [(n.host, n.port, n.vhost, n.tls) for n in config.amqp_nodes],
            [("rabbit1", 5672, "prod", False), ("rabbit2", 5673, "prod", False), ("rabbit3", 5671, "prod", True)],
        )
        self.assertIs(config.amqp, config.amqp_nodes[0])
        self.assertEqual(config.amqp_nodes[0].heartbeat, 10)
        from cuckoodist.settings import keys_of

        self.assertNotIn("amqp_nodes", keys_of(Config))
        self.assertNotIn(":p@", repr(config))

    def test_refused(self) -> None:
        """
        An empty list, a bad entry, nodes that disagree on the user, the
        password or the vhost, and a node given twice are refused, naming
        the entry and never the password.
        """
        for value, expected in [
            ([], "Error in configuration at 'amqp': give one URL, or a list of at least one URL "
                 "(one per node of the cluster)"),
            (["amqp://u:hunter2@a/", "http://u:hunter2@b/"],
             "Error in configuration at 'amqp.1': must be an amqp:// or amqps:// URL"),
            (["amqp://u:hunter2@a/", 5], "Error in configuration at 'amqp.1': expected a string, got an integer"),
            (["amqp://u:hunter2@a/", "amqp://v:hunter2@b/"],
             "Error in configuration at 'amqp.1': the user name differs from the first URL's; "
             "the nodes of a cluster share users and virtual hosts"),
            (["amqp://u:hunter2@a/", "amqp://u:hunter3@b/"],
             "Error in configuration at 'amqp.1': the password differs from the first URL's; "
             "the nodes of a cluster share users and virtual hosts"),
            (["amqp://u:hunter2@a/", "amqp://u:hunter2@b/other"],
             "Error in configuration at 'amqp.1': the vhost differs from the first URL's; "
             "the nodes of a cluster share users and virtual hosts"),
            (["amqp://u:hunter2@a/", "amqp://u:hunter2@b/", "amqp://u:hunter2@B:5672/"],
             "Error in configuration at 'amqp.2': names the same host and port as amqp.1"),
        ]:
            error = self.assertConfigError(minimal(amqp=value), expected)
            self.assertNotIn("hunter", str(error))
