# -*- test-case-name: tests.test_crits_encoding -*-
"""
Tests for L{cuckoodist.crits_encoding}.

CRITs decodes a batch as: form fields -> C{json.loads} of three lists ->
C{ast.literal_eval} of each C{result_type}.  L{decode_body} repeats exactly
that, so a round trip here is what CRITs would store.  Where a Python 2.7
interpreter is available, L{Python2Tests} also runs CRITs' decoding under
Python 2 itself.
"""

from __future__ import annotations

import ast
import enum
import glob
import io
import json
import os
import random
import shutil
import subprocess
import time
import tokenize
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any, Optional
from urllib.parse import parse_qs

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist import crits_encoding
from cuckoodist.crits_encoding import (
    DJANGO_MAX_BODY,
    MAX_DEPTH,
    encode_form,
    encode_result_type,
    result_batches,
    to_literal,
)
from cuckoodist.results import ResultRow
from tests import crits_encoding_reference as reference

BASE = {
    "object_type": "Sample",
    "object_id": "5d3f0c5e2f3a4b0012345678",
    "analysis_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
}


def decode_body(body: bytes) -> list[dict]:
    """
    Decode a batch request body the way CRITs' C{add_results} does.
    """
    fields = parse_qs(body.decode("ascii"), keep_blank_values=True,
                      strict_parsing=True, errors="strict")
    assert all(len(values) == 1 for values in fields.values()), fields
    form = {name: values[0] for name, values in fields.items()}
    assert form["result_is_batch"] == "1"
    results = json.loads(form["result"])
    types = json.loads(form["result_type"])
    subtypes = json.loads(form["result_subtype"])
    assert len(results) == len(types) == len(subtypes)
    stored = []
    for result, type_, subtype in zip(results, types, subtypes):
        row = {"subtype": subtype, "result": result}
        row.update(ast.literal_eval(type_))
        stored.append(row)
    return stored


def string_tokens(literal: str) -> list[str]:
    """
    The string tokens in a literal, as Python's tokenizer sees them.
    """
    tokens = tokenize.generate_tokens(io.StringIO(literal).readline)
    return [token.string for token in tokens if token.type == tokenize.STRING]


def clean(value: Any) -> Any:
    """
    What a value should come back as: surrogates replaced by U+FFFD.
    """
    if isinstance(value, str):
        return "".join(
            "\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in value)
    if isinstance(value, dict):
        return {clean(key): clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean(item) for item in value]
    return value


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = (st.none() | st.booleans() | INT64
           | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(ANY_TEXT, children, max_size=5),
    max_leaves=25,
)
EXTRAS = st.dictionaries(
    ANY_TEXT.filter(lambda key: key not in ("subtype", "result")), VALUES,
    max_size=6)
ROWS = st.builds(ResultRow, subtype=ANY_TEXT, result=ANY_TEXT, extra=EXTRAS)


class ToLiteralTests(SynchronousTestCase):
    """
    Tests for L{to_literal}.
    """

    def assert_round_trip(self, value: object) -> str:
        """
        Assert C{value} survives C{literal_eval}, with the same types, in an
        ASCII literal whose strings all carry the C{u} prefix.
        """
        literal = to_literal(value)
        self.assertTrue(literal.isascii(), literal)
        for token in string_tokens(literal):
            self.assertTrue(token.startswith("u"), token)
        back = ast.literal_eval(literal)
        self.assertEqual(back, value)
        self.assertEqual(repr(back), repr(value))
        return literal

    def test_scalars(self) -> None:
        """
        None, booleans, integers, floats and strings keep value and type;
        booleans and None are Python's, not JSON's.
        """
        for value in [None, True, False, 0, -1, 2**63 - 1, -(2**63), 10**30,
                      0.0, -0.0, 1.5, -2.5e-300, 1e300, "", "plain", "it's",
                      'say "hi"', "back\\slash"]:
            self.assert_round_trip(value)
        self.assertEqual(to_literal(True), "True")
        self.assertEqual(to_literal(None), "None")

    def test_containers(self) -> None:
        """
        Dicts, lists and tuples, including the empty and one-element tuple,
        nest and come back unchanged.
        """
        self.assert_round_trip({"a": [1, {"b": (2,)}, ()], 7: None, (1, "x"): []})

    def test_non_ascii_and_control_characters(self) -> None:
        """
        Control characters, latin-1, BMP and astral characters survive in an
        ASCII-only literal.
        """
        literal = self.assert_round_trip(
            "\x00\x07\t\n\r\x1b\x7f \xe9\u20ac\u202e\U0001f600\uffff")
        self.assertNotIn("\n", literal)

    def test_surrogates_replaced(self) -> None:
        """
        Lone surrogates, which cannot be UTF-8 encoded and so cannot be
        stored by CRITs, become U+FFFD.
        """
        literal = to_literal({"k\udc80": "a\ud800b"})
        self.assertEqual(ast.literal_eval(literal), {"k\ufffd": "a\ufffdb"})

    def test_special_floats(self) -> None:
        """
        Infinite and NaN floats, which have no literal, become their string
        form.
        """
        self.assertEqual(
            ast.literal_eval(to_literal([float("inf"), float("-inf"), float("nan")])),
            ["inf", "-inf", "nan"])

    def test_bytes_and_other_types(self) -> None:
        """
        Bytes become their latin-1 text; other objects become C{str()} of
        themselves; an object whose C{str} fails becomes a placeholder.
        """
        class Broken:
            def __str__(self) -> str:
                raise RuntimeError("no")

        self.assertEqual(
            ast.literal_eval(to_literal([b"\x00\xff", {1, 2}.__class__.__name__,
                                         3j, Broken()])),
            ["\x00\xff", "set", "3j", "<unprintable Broken>"])

    def test_subclasses_use_base_value(self) -> None:
        """
        Subclasses of str, int and float are written as their plain value,
        whatever their repr says.
        """
        class Loud(int):
            def __repr__(self) -> str:
                return "LOUD"

        class Shouty(str):
            def __str__(self) -> str:
                return "SHOUT"

        self.assertEqual(ast.literal_eval(to_literal([Loud(5), Shouty("x")])),
                         [5, "x"])

    def test_depth_limit(self) -> None:
        """
        Nesting deeper than L{MAX_DEPTH} (which Python 2's parser could not
        read back) is replaced by a marker; shallower nesting is kept.
        """
        deep: Any = "leaf"
        for _ in range(200):
            deep = [deep]
        literal = to_literal(deep)
        back = ast.literal_eval(literal)
        for _ in range(MAX_DEPTH):
            back = back[0]
        self.assertEqual(back, "...[nested too deep]")
        kept: Any = "leaf"
        for _ in range(MAX_DEPTH):
            kept = [kept]
        self.assertEqual(ast.literal_eval(to_literal(kept)), kept)

    def test_cycle(self) -> None:
        """
        A self-referencing list is cut at the depth limit instead of
        recursing forever.
        """
        loop: list = []
        loop.append(loop)
        self.assertIn("nested too deep", to_literal(loop))

    def test_huge_integer(self) -> None:
        """
        An integer past Python's decimal conversion limit is written in hex
        and still reads back.
        """
        huge = 7**9000
        self.assertEqual(ast.literal_eval(to_literal([huge, -huge])), [huge, -huge])

    @given(VALUES)
    def test_property_round_trip(self, value: Any) -> None:
        """
        Any nested structure of plain values, with any code points, comes
        back from C{literal_eval} as itself, surrogates replaced.
        """
        literal = to_literal(value)
        self.assertTrue(literal.isascii())
        self.assertEqual(ast.literal_eval(literal), clean(value))


class EncodeResultTypeTests(SynchronousTestCase):
    """
    Tests for L{encode_result_type}.
    """

    def test_renames_reserved_keys(self) -> None:
        """
        C{subtype} and C{result} keys are renamed so they cannot overwrite
        CRITs' own columns, without clobbering an existing key.
        """
        extra = {"subtype": 1, "result": 2, "extra_result": 3, "md5": "d41d"}
        stored = {"subtype": "s", "result": "r"}
        stored.update(ast.literal_eval(encode_result_type(extra)))
        self.assertEqual(stored, {"subtype": "s", "result": "r",
                                  "extra_subtype": 1, "extra_extra_result": 2,
                                  "extra_result": 3, "md5": "d41d"})

    def test_mongodb_rules(self) -> None:
        """
        Keys become text and integers outside 64 bits become decimal text,
        at every depth, since MongoDB would refuse the document.
        """
        extra = {5: {None: 2**64, (1, 2): -(2**63)}, "n": [-(2**63) - 1]}
        self.assertEqual(
            ast.literal_eval(encode_result_type(extra)),
            {"5": {"None": str(2**64), "(1,2)": -(2**63)},
             "n": [str(-(2**63) - 1)]})

    def test_not_a_mapping(self) -> None:
        """
        Extra columns that are not a mapping are a programming error.
        """
        self.assertRaises(TypeError, encode_result_type, [("a", 1)])


class EncodeFormTests(SynchronousTestCase):
    """
    Tests for L{encode_form}.
    """

    def test_utf8_urlencoded(self) -> None:
        """
        Fields are URL-encoded as UTF-8, in order.
        """
        self.assertEqual(encode_form({"a b": "\xe9&=", "c": "/"}),
                         b"a+b=%C3%A9%26%3D&c=%2F")

    def test_unencodable(self) -> None:
        """
        A lone surrogate in a field is refused with C{ValueError} rather than
        sent as invalid UTF-8.
        """
        self.assertRaises(ValueError, encode_form, {"object_id": "\ud800"})


def api_call_rows(count: int) -> list[ResultRow]:
    """
    Rows shaped like the api_call results parse_and_submit produces.
    """
    return [
        ResultRow(
            subtype="api_call",
            result=f"NtCreateFile #{index}",
            extra={
                "pid": 2048 + index % 7,
                "category": "file",
                "status": index % 3 != 0,
                "return": "0x00000000",
                "arguments": {
                    "FileName": f"C:\\Users\\\u00e9l\u00e8ve\\AppData\\Local\\Temp\\f{index}.tmp",
                    "DesiredAccess": "0x00120089",
                    "ShareAccess": 7,
                },
                "time": 1574854065.123 + index,
            },
        )
        for index in range(count)
    ]


class ResultBatchesTests(SynchronousTestCase):
    """
    Tests for L{result_batches}.
    """

    def batches(self, rows: list[ResultRow], max_body: int,
                base: Optional[dict] = None) -> list[bytes]:
        """
        Encode C{rows} and return the request bodies, checking each form
        carries the base fields.
        """
        base = BASE if base is None else base
        bodies = []
        for form in result_batches(rows, base, max_body):
            for key, value in base.items():
                self.assertEqual(form[key], value)
            self.assertEqual(form["result_is_batch"], "1")
            bodies.append(encode_form(form))
        return bodies

    def stored(self, bodies: list[bytes]) -> list[dict]:
        """
        Everything CRITs would store from C{bodies}, in order.
        """
        return [row for body in bodies for row in decode_body(body)]

    def test_no_rows(self) -> None:
        """
        No rows, no requests.
        """
        self.assertEqual(self.batches([], 1000), [])

    def test_round_trip(self) -> None:
        """
        A small batch fits one request, and CRITs would store each row as
        subtype, result and the extra columns.
        """
        rows = [ResultRow("signature", "creates_exe", {"severity": 2, "ok": True}),
                ResultRow("file", "\u00e9\x00", {"md5": None, "l": [1.5, "x"]})]
        bodies = self.batches(rows, DJANGO_MAX_BODY)
        self.assertEqual(len(bodies), 1)
        self.assertEqual(self.stored(bodies), [
            {"subtype": "signature", "result": "creates_exe", "severity": 2,
             "ok": True},
            {"subtype": "file", "result": "\u00e9\x00", "md5": None,
             "l": [1.5, "x"]},
        ])
        self.assertTrue(bodies[0].isascii())

    def test_order_limit_and_packing(self) -> None:
        """
        Rows keep their order across requests, every body is strictly under
        the limit, and each request but the last is full: adding the next
        row would reach the limit.
        """
        rows = api_call_rows(300)
        max_body = 20_000
        forms = list(result_batches(rows, BASE, max_body))
        self.assertGreater(len(forms), 5)
        start = 0
        for form in forms:
            body = encode_form(form)
            self.assertLess(len(body), max_body)
            count = len(json.loads(form["result"]))
            if start + count < len(rows):
                [fuller] = result_batches(rows[start:start + count + 1], BASE,
                                          10 * max_body)
                self.assertGreaterEqual(len(encode_form(fuller)), max_body)
            start += count
        self.assertEqual(start, len(rows))
        stored = self.stored([encode_form(form) for form in forms])
        self.assertEqual([row["result"] for row in stored],
                         [row.result for row in rows])

    def test_exact_limit_is_excluded(self) -> None:
        """
        A body exactly C{max_body} long is not allowed; one byte more of
        room lets it through in one request.
        """
        rows = api_call_rows(3)
        [form] = result_batches(rows, BASE, 10**6)
        size = len(encode_form(form))
        self.assertEqual(len(list(result_batches(rows, BASE, size + 1))), 1)
        self.assertEqual(len(list(result_batches(rows, BASE, size))), 2)

    def test_oversize_string_truncated(self) -> None:
        """
        A row too big for any request keeps its place; its longest string is
        cut, with a marker saying how much, so that the request just fits.
        """
        big = "\u00e9" * 50_000
        rows = [ResultRow("a", "first", {}),
                ResultRow("b", big, {"small": "kept", "n": 1}),
                ResultRow("c", "last", {})]
        max_body = 10_000
        bodies = self.batches(rows, max_body)
        self.assertTrue(all(len(body) < max_body for body in bodies))
        stored = self.stored(bodies)
        self.assertEqual([row["subtype"] for row in stored], ["a", "b", "c"])
        cut = stored[1]
        self.assertEqual((cut["small"], cut["n"]), ("kept", 1))
        kept, marker = cut["result"].split("...[truncated ")
        self.assertEqual(kept, big[:len(kept)])
        self.assertEqual(marker, f"{len(big) - len(kept)} chars]")
        body_of_cut = [body for body in bodies if b"truncated" in body][0]
        self.assertGreater(len(body_of_cut), max_body - 100)

    def test_oversize_many_items_truncated(self) -> None:
        """
        A row made of so many short strings that cutting strings cannot help
        is shortened by dropping list items, with a marker, and still fits.
        """
        items = [f"i{n}" for n in range(5000)]
        rows = [ResultRow("strings", "r", {"items": items})]
        max_body = 4000
        [body] = self.batches(rows, max_body)
        self.assertLess(len(body), max_body)
        [stored] = self.stored([body])
        kept = stored["items"]
        self.assertEqual(kept[:-1], items[:len(kept) - 1])
        self.assertEqual(kept[-1], f"...[truncated {len(items) - len(kept) + 1} items]")
        self.assertGreater(len(kept), 100)

    def test_base_fields_too_big(self) -> None:
        """
        A limit that cannot hold even the base fields raises C{ValueError}
        at the call; so does a limit too small for any truncated row.
        """
        self.assertRaises(ValueError, result_batches, [], BASE, 100)
        rows = [ResultRow("x" * 100, "y" * 100, {})]
        gen = result_batches(rows, BASE, 250)
        self.assertRaises(ValueError, list, gen)

    def test_reserved_base_fields(self) -> None:
        """
        Base fields may not carry the batch fields, which would be silently
        replaced.
        """
        self.assertRaises(ValueError, result_batches, [],
                          dict(BASE, result="x"), DJANGO_MAX_BODY)

    def test_default_limit_scenario(self) -> None:
        """
        Ten thousand api_call rows under Django's default limit: few requests,
        each under 2,621,440 bytes and nearly full, everything in order, in
        well under the time a quadratic packer would take.
        """
        rows = api_call_rows(10_000)
        started = time.perf_counter()
        forms = list(result_batches(rows, BASE, DJANGO_MAX_BODY))
        elapsed = time.perf_counter() - started
        bodies = [encode_form(form) for form in forms]
        total = sum(len(body) for body in bodies)
        self.assertEqual(len(bodies), -(-total // DJANGO_MAX_BODY))
        for body in bodies[:-1]:
            self.assertLess(len(body), DJANGO_MAX_BODY)
            self.assertGreater(len(body), DJANGO_MAX_BODY - 1000)
        stored = self.stored(bodies)
        self.assertEqual(len(stored), len(rows))
        self.assertEqual(stored[9999]["arguments"]["FileName"],
                         rows[9999].extra["arguments"]["FileName"])
        self.assertLess(elapsed, 10)

    @settings(deadline=None, max_examples=200)
    @given(st.lists(ROWS, max_size=8))
    def test_property_survives_crits(self, rows: list[ResultRow]) -> None:
        """
        Any text (every code point, surrogates becoming U+FFFD) and nested
        structure survives encode -> urlencode -> parse_qs -> json.loads ->
        literal_eval, when nothing needs truncating.
        """
        bodies = self.batches(rows, DJANGO_MAX_BODY)
        expected = []
        for row in rows:
            value = {"subtype": clean(row.subtype), "result": clean(row.result)}
            value.update(clean(row.extra))
            expected.append(value)
        self.assertEqual(self.stored(bodies), expected)

    @settings(deadline=None, max_examples=200)
    @given(st.lists(ROWS, max_size=8), st.integers(min_value=600, max_value=3000))
    def test_property_limit(self, rows: list[ResultRow], max_body: int) -> None:
        """
        Under any limit that can hold a truncated row, every body is under
        the limit and every row arrives, in order, intact or marked as
        truncated.
        """
        bodies = self.batches(rows, max_body)
        self.assertTrue(all(len(body) < max_body for body in bodies))
        stored = self.stored(bodies)
        self.assertEqual(len(stored), len(rows))
        for row, value in zip(rows, stored):
            intact = {"subtype": clean(row.subtype), "result": clean(row.result)}
            intact.update(clean(row.extra))
            if value != intact:
                self.assertIn("...[truncated ", repr(value))


PY2_DECODER = r"""
import ast, json, sys, urlparse
fields = urlparse.parse_qs(sys.stdin.read(), keep_blank_values=True)
form = dict((k, v[0].decode("utf-8")) for k, v in fields.items())
out = []
for r, t, s in zip(json.loads(form["result"]), json.loads(form["result_type"]),
                   json.loads(form["result_subtype"])):
    row = {"subtype": s, "result": r}
    row.update(ast.literal_eval(t))
    out.append(row)
sys.stdout.write(json.dumps(out))
"""


def find_python2() -> Optional[str]:
    """
    A working Python 2.7 interpreter, if this machine has one.
    """
    candidates = [os.environ.get("CUCKOODIST_PYTHON2"), shutil.which("python2.7"),
                  shutil.which("python2")]
    candidates += sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/2.7*/bin/python2.7")))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            check = subprocess.run([candidate, "-c", "import ast, urlparse"],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if check.returncode == 0:
            return candidate
    return None


class Python2Tests(SynchronousTestCase):
    """
    CRITs' own decoding, run by a real Python 2.7.
    """

    def setUp(self) -> None:
        self.python2 = find_python2()
        if self.python2 is None:
            raise self.skipTest("no Python 2.7 interpreter found")

    def test_python2_reads_same_values(self) -> None:
        """
        Python 2.7's parse_qs, json and literal_eval recover the same values
        Python 3 does, non-ASCII, control characters, astral characters,
        negative and 64-bit numbers, floats and maximum nesting included.
        """
        deep: Any = "leaf"
        for _ in range(100):
            deep = [deep]
        rows = [
            ResultRow("s\u00e9", "r\x00\u20ac\U0001f600", {
                "text": "\x07'\"\\\n\u202e\U0010ffff\ud800",
                "numbers": [-1, -(2**63), 2**63 - 1, 2**64, -0.5, 1e300, 5e-324],
                "flags": [True, False, None, float("nan")],
                "tuple": (1,), "deep": deep, 3: {"x": ()},
                "subtype": "renamed"}),
        ] + api_call_rows(20)
        [body] = [encode_form(form)
                  for form in result_batches(rows, BASE, DJANGO_MAX_BODY)]
        run = subprocess.run([self.python2, "-c", PY2_DECODER], input=body,
                             capture_output=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr.decode("utf-8", "replace"))
        from_python2 = json.loads(run.stdout)
        from_python3 = json.loads(json.dumps(decode_body(body)))
        self.assertEqual(from_python2, from_python3)
        self.assertEqual(from_python2[0]["text"], "\x07'\"\\\n\u202e\U0010ffff\ufffd")
        self.assertEqual(from_python2[0]["extra_subtype"], "renamed")


class _Text(str):
    """
    A str subclass with its own C{repr} and hash, which the encoder must
    write as its plain value.
    """

    def __repr__(self) -> str:
        return "TEXT"

    def __hash__(self) -> int:
        return 7


class _Number(int):
    """
    An int subclass with its own C{repr}.
    """

    def __repr__(self) -> str:
        return "NUMBER"


class _Real(float):
    """
    A float subclass with its own C{repr}.
    """

    def __repr__(self) -> str:
        return "REAL"


class _Items(list):
    """
    A list subclass, which is written as a list.
    """


class _Mapping(Mapping):
    """
    A read-only mapping that is not a dict.
    """

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getitem__(self, key: object) -> object:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class _OddItems(dict):
    """
    A dict whose C{items} disagree with its keys: the encoder must go by
    C{items}, as the reference did.
    """

    def items(self):
        return [*super().items(), (5, "five")]


class _Object:
    """
    An object whose C{str} is given, possibly a str subclass.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Broken:
    """
    An object whose C{str} fails.
    """

    def __str__(self) -> str:
        raise RuntimeError("no")


_Pair = namedtuple("_Pair", "left right")


class Color(enum.IntEnum):
    """
    Int subclass members, one past 64 bits.
    """

    RED = 1
    BLUE = 2**64


class RandomValues:
    """
    Random values, rows and forms for comparing the encoder with
    L{tests.crits_encoding_reference}, stressing what it must get right:
    every kind of code point, integers around the 64-bit and decimal
    conversion limits, special floats, subclasses, keys that collide once
    normalised, reserved key names and nesting past L{MAX_DEPTH}.
    """

    KEYS = ["subtype", "result", "extra_subtype", "extra_result",
            "extra_extra_result", "a", "1", "True", "None", "(1,)"]
    CHARS = ("abc XYZ019_.-~", "'\"\\", "%+&=/?#;,:{}[]()",
             "".join(map(chr, range(32))) + "\x7f",
             "\x80\xa0\xe9\xff", "\u0100\u20ac\u202e\u2028\ufeff\uffff",
             "\U0001f600\U00010000\U0010ffff", "\ud800\udbff\udc00\udfff")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, most: int = 12) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            return rng.choice(self.KEYS)
        pools = rng.sample(self.CHARS, rng.randint(1, 3))
        return "".join(rng.choice(rng.choice(pools))
                       for _ in range(rng.randint(0, most)))

    def integer(self) -> int:
        rng = self.rng
        return rng.choice([
            rng.randint(-1000, 1000), 2**63 - 1, -(2**63), 2**63, -(2**63) - 1,
            2**64, rng.randint(-(2**70), 2**70), 10**rng.randint(18, 40),
            -7**rng.randint(20, 60), 7**9000,
        ])

    def real(self) -> float:
        rng = self.rng
        return rng.choice([
            rng.uniform(-1e6, 1e6), rng.random(), 0.0, -0.0, float("inf"),
            float("-inf"), float("nan"), 1e300, -2.5e-300, 5e-324, 1.0,
        ])

    def scalar(self) -> Any:
        rng = self.rng
        kind = rng.randrange(15)
        if kind < 5:
            return self.text()
        if kind < 7:
            return self.integer()
        if kind == 7:
            return self.real()
        if kind == 8:
            return rng.choice([True, False, None])
        if kind == 9:
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))
        if kind == 10:
            return bytearray(b"\x00\xffab")
        if kind == 11:
            return rng.choice([_Text(self.text()), _Number(self.integer()),
                               _Real(self.real())])
        if kind == 12:
            return rng.choice([_Object(self.text()), _Broken(), 3j,
                               _Object(_Text(self.text())),
                               frozenset([1]), rng.choice(list(Color))])
        if kind == 13:
            return rng.choice([1, True, 1.0, 0, -0.0, False, "1"])
        return rng.choice(["", "plain", "it's", 'say "hi"', "back\\slash"])

    def key(self) -> Any:
        rng = self.rng
        kind = rng.randrange(10)
        if kind < 5:
            return self.text(6)
        if kind == 5:
            return rng.choice([1, True, 1.0, -0.0, 0, "1", None, "None",
                               "True", 2**64, -(2**63) - 1, float("nan")])
        if kind == 6:
            return rng.choice([(1,), (1, "x"), (), ("\ud800",),
                               ((1, 2), None), _Pair(1, "b"), "(1,)"])
        if kind == 7:
            return rng.choice([b"ab", _Text("a"), _Text("subtype"),
                               "\ud800", "\udc00", "\ufffd", frozenset(),
                               _Object(_Text("subtype")), _Object(_Text("x"))])
        if kind == 8:
            return rng.choice([_Number(5), _Real(1.5), self.real(), "subtype",
                               "result"])
        return self.integer()

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        if depth > 4 or rng.random() < 0.45:
            return self.scalar()
        kind = rng.randrange(10)
        if kind == 0:
            deep: Any = self.scalar()
            for _ in range(rng.randint(MAX_DEPTH - 3, MAX_DEPTH + 5)):
                deep = rng.choice([[deep], (deep,), {"k": deep}])
            return deep
        size = rng.randint(0, 4)
        children = [self.value(depth + 1) for _ in range(size)]
        if kind < 4:
            return children
        if kind == 4:
            return tuple(children)
        if kind == 5:
            return rng.choice([_Items(children), _Pair(children, None)])
        entries = {self.key(): child for child in children}
        if kind == 6:
            return rng.choice([OrderedDict(entries), _Mapping(entries)])
        return entries

    def extra(self) -> Any:
        rng = self.rng
        if rng.random() < 0.01:
            return rng.choice([[("a", 1)], None, "x"])
        entries = {self.key(): self.value(1) for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.1:
            return rng.choice([OrderedDict(entries), _Mapping(entries),
                               _OddItems(entries)])
        return entries

    def row(self) -> ResultRow:
        rng = self.rng

        def cell() -> Any:
            if rng.random() < 0.1:
                return self.scalar()
            return self.text(rng.choice([8, 8, 40, 400]))

        return ResultRow(subtype=cell(), result=cell(), extra=self.extra())

    def form(self) -> dict:
        rng = self.rng
        fields: dict = {}
        for _ in range(rng.randint(0, 5)):
            value = rng.choice([self.text, self.text, self.scalar])()
            fields[rng.choice([self.text(6), "result", b"k\xff", 5])] = value
        return fields


def outcome(function, *args: Any) -> tuple:
    """
    What calling C{function} gives: its value (an iterator's items), or the
    type and text of what it raised.
    """
    try:
        value = function(*args)
        if isinstance(value, Iterator):
            value = list(value)
        return ("value", value)
    except Exception as error:
        return ("raised", type(error), str(error))


class ReferenceIdentityTests(SynchronousTestCase):
    """
    The encoder writes exactly what the implementation it replaced wrote
    (kept as L{tests.crits_encoding_reference}), byte for byte, for random
    values, rows, limits and forms.
    """

    def assertSame(self, name: str, *args: Any) -> None:
        got = outcome(getattr(crits_encoding, name), *args)
        want = outcome(getattr(reference, name), *args)
        if got != want:
            self.fail(f"{name}{args!r}:\n  got  {got!r}\n  want {want!r}")

    def test_values(self) -> None:
        """
        L{to_literal} and L{encode_result_type} of random values.
        """
        values = RandomValues(1201)
        for _ in range(2000):
            value = values.value()
            self.assertSame("to_literal", value)
            self.assertSame("encode_result_type", values.extra())
            if isinstance(value, Mapping):
                self.assertSame("encode_result_type", value)

    def test_batches(self) -> None:
        """
        L{result_batches} of random rows under random limits, from too small
        for anything to Django's, and L{encode_form} of every request.
        """
        values = RandomValues(1202)
        for _ in range(600):
            rows = [values.row() for _ in range(values.rng.randint(0, 6))]
            max_body = values.rng.choice(
                [values.rng.randint(150, 1200), values.rng.randint(1200, 6000),
                 DJANGO_MAX_BODY])
            if values.rng.random() < 0.3:
                # Right at the edge: the body of all rows in one request.
                kind, forms = outcome(reference.result_batches, rows, BASE,
                                      DJANGO_MAX_BODY)[:2]
                if kind == "value" and len(forms) == 1:
                    size = len(reference.encode_form(forms[0]))
                    max_body = size + values.rng.choice([0, 1])
            self.assertSame("result_batches", rows, BASE, max_body)
            kind, forms = outcome(crits_encoding.result_batches, rows, BASE,
                                  max_body)[:2]
            if kind == "value":
                for form in forms:
                    self.assertSame("encode_form", form)

    def test_forms(self) -> None:
        """
        L{encode_form} of random fields: every code point, surrogates
        (refused), bytes and non-text values.
        """
        values = RandomValues(1203)
        for _ in range(3000):
            self.assertSame("encode_form", values.form())
