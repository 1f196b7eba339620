# -*- test-case-name: tests.test_crits_encoding -*-
# Test-only: a frozen copy of cuckoodist/crits_encoding.py as it was before
# its encoder was optimised (issue #12, CPU per sample).  It is kept so that
# tests.test_crits_encoding can prove the optimised module writes
# byte-identical output for every input.  Do not edit it to follow changes of
# behaviour: a deliberate change of output should update or drop this copy.
"""
Encode analysis results the way the CRITs services API reads them.

CRITs (Python 2.7, Django, tastypie) accepts results as an
C{application/x-www-form-urlencoded} POST.  In batch mode the fields
C{result}, C{result_type} and C{result_subtype} are JSON lists, and each
stored result is C{{'subtype': s, 'result': r}} updated with
C{ast.literal_eval(t)}.  So C{result_type} is not a label: it is the text of
a Python dict literal holding the extra columns.  That has consequences that
this module exists to handle in one place:

  - JSON C{true}/C{false}/C{null} are not Python literals and make CRITs fail
    with a 500, so we write C{True}/C{False}/C{None}.
  - Python 2 decodes C{\\uXXXX} escapes only inside C{u'...'} literals and
    Python 3 accepts the C{u} prefix, so every string is written as an
    all-ASCII C{u'...'} literal.  The whole body is then pure ASCII and no
    charset question can arise between us, Django and Python 2.
  - A key named C{subtype} or C{result} would overwrite CRITs' own columns,
    so L{encode_result_type} renames it.
  - CRITs keeps results in MongoDB, whose documents take only text keys and
    integers that fit in 64 bits; anything else would fail the whole batch,
    so L{encode_result_type} turns such keys and integers into text.
  - Django 1.10+ refuses request bodies over C{DATA_UPLOAD_MAX_MEMORY_SIZE}
    (2,621,440 bytes by default), so L{result_batches} packs rows into
    requests that stay under a byte budget and truncates a row that is too
    big on its own rather than dropping it.

Text that UTF-8 cannot encode (lone surrogates, which Python 3 strings may
hold after C{surrogateescape} decoding) cannot be stored by CRITs either; every
surrogate code point in a value is replaced by U+FFFD REPLACEMENT CHARACTER.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import urlencode

from cuckoodist.results import ResultRow

__all__ = [
    "DJANGO_MAX_BODY",
    "MAX_DEPTH",
    "to_literal",
    "encode_result_type",
    "result_batches",
    "encode_form",
]

DJANGO_MAX_BODY = 2_621_440
"""
Django's default C{DATA_UPLOAD_MAX_MEMORY_SIZE}: the largest request body a
stock CRITs on Django 1.10 or later accepts.
"""

MAX_DEPTH = 32
"""
Containers nested deeper than this are replaced by a marker string.  Python
2's parser overflows its stack at roughly 90 nested brackets and Python 3's at
200; a report nested that deeply is hostile, not informative.
"""

_TOO_DEEP = "...[nested too deep]"
_SURROGATES = re.compile("[\ud800-\udfff]")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# quote_plus leaves these bytes as they are (space becomes "+"); every other
# byte of UTF-8 becomes a three-character "%XX".
_URL_SAFE_BYTES = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~ "
)
# The "," between JSON list items, once in each of the three lists, quoted.
_SEPARATORS_COST = 3 * len("%2C")
_BATCH_FIELDS = ("result_is_batch", "result", "result_type", "result_subtype")


def to_literal(value: object) -> str:
    """
    Write C{value} as a Python literal that Python 2.7's and Python 3's
    C{ast.literal_eval} both read back to the same value.

    The output is ASCII only: strings are C{u'...'} with escapes, so
    non-ASCII and control characters survive Python 2, which would keep the
    escapes verbatim in a literal without the prefix.  Dicts, lists, tuples,
    C{str}, C{int}, C{float}, C{bool} and C{None} keep their type.  Infinite
    and NaN floats, which have no literal, become their string form
    (C{u'inf'}, C{u'nan'}); C{bytes} become their latin-1 decoding; anything
    else becomes C{str(value)}.  Surrogate code points become U+FFFD and
    containers deeper than L{MAX_DEPTH} become a marker string.

    @param value: the value to write.
    @return: the literal, ASCII only.
    """
    return _render(_normalise(value, 0, crits=False))


def encode_result_type(extra: Mapping[str, object]) -> str:
    """
    Write the extra columns of one result as the dict literal CRITs merges
    into it.

    On top of L{to_literal}, this makes the dict storable by CRITs: keys
    C{subtype} and C{result} are renamed C{extra_subtype} and
    C{extra_result} (prefixing again while the name is taken) because CRITs
    would let them overwrite the real columns; every key becomes text and
    every integer outside 64 bits becomes its decimal text, because MongoDB
    rejects anything else and would fail the whole batch.

    @param extra: the extra columns, as in L{ResultRow.extra}.
    @return: an ASCII dict literal.
    @raise TypeError: C{extra} is not a mapping.
    """
    return _render(_crits_extra(extra))


def encode_form(fields: Mapping[str, str]) -> bytes:
    """
    Encode form fields as the body of an C{application/x-www-form-urlencoded}
    POST, text as UTF-8.

    (CRITs compares the content type for exact equality, so the request must
    say C{application/x-www-form-urlencoded} without a charset; UTF-8 is what
    Django assumes.)

    @param fields: field names and values, sent in this order.
    @return: the body, ASCII bytes.
    @raise ValueError: a field holds text UTF-8 cannot encode (a lone
        surrogate); L{result_batches} never produces such fields.
    """
    return urlencode(list(fields.items()), encoding="utf-8").encode("ascii")


def result_batches(
    rows: Sequence[ResultRow], base_fields: Mapping[str, str], max_body: int
) -> Iterator[dict[str, str]]:
    """
    Pack result rows into as few batch POSTs as fit under a body size.

    Each yielded dict is a complete form: C{base_fields} (C{object_type},
    C{object_id}, C{analysis_id}, credentials if sent in the body...), then
    C{result_is_batch="1"} and the three JSON lists.  Its L{encode_form}
    encoding is strictly shorter than C{max_body} bytes.  Rows keep their
    order and are packed greedily.  Sizes are computed per row and summed
    (URL encoding is per byte, so lengths add up), so the work is linear in
    the output rather than re-encoding a growing batch for every row.

    A row that does not fit in a request on its own is truncated, never
    dropped: first, if cutting strings alone cannot make it fit, the
    longest lists and dicts are shortened to a common length with a
    C{"...[truncated N items]"} marker; then the longest strings are cut to a
    common length with a C{"...[truncated N chars]"} marker, keeping as much
    as fits.

    @param rows: the results, in the order CRITs should show them.
    @param base_fields: the fields every request carries; they must not
        include the batch fields.
    @param max_body: the exclusive upper bound on a body's size in bytes,
        normally L{DJANGO_MAX_BODY}.
    @return: an iterator of form field dicts; nothing for no rows.
    @raise ValueError: C{max_body} cannot hold the base fields with empty
        lists, or not even a fully truncated row; or C{base_fields} holds a
        batch field.
    """
    clash = sorted(set(_BATCH_FIELDS) & set(base_fields))
    if clash:
        raise ValueError(f"base fields must not include {clash}")
    skeleton = dict(base_fields)
    skeleton.update(
        result_is_batch="1", result="[]", result_type="[]", result_subtype="[]"
    )
    # Row content of a batch must total strictly less than this.
    budget = max_body - len(encode_form(skeleton))
    if budget <= 0:
        raise ValueError(
            f"max_body {max_body} cannot hold the base fields and empty lists"
        )
    return _pack(rows, skeleton, budget)


def _pack(
    rows: Sequence[ResultRow], skeleton: dict[str, str], budget: int
) -> Iterator[dict[str, str]]:
    """
    The generator behind L{result_batches}, split off so that argument
    errors are raised at the call rather than at the first C{next}.
    """
    batch: list[tuple[str, str, str]] = []
    used = 0
    for row in rows:
        parts = _row_parts(_text(row.result), _text(row.subtype),
                           _crits_extra(row.extra))
        cost = _parts_cost(parts)
        if batch and used + _SEPARATORS_COST + cost >= budget:
            yield _batch_form(skeleton, batch)
            batch, used = [], 0
        if not batch and cost >= budget:
            parts, cost = _truncated_row(row, budget)
        used += cost + (_SEPARATORS_COST if batch else 0)
        batch.append(parts)
    if batch:
        yield _batch_form(skeleton, batch)


def _batch_form(
    skeleton: dict[str, str], batch: list[tuple[str, str, str]]
) -> dict[str, str]:
    """
    Assemble one request's fields from encoded rows.
    """
    form = dict(skeleton)
    form["result"] = "[" + ",".join(parts[0] for parts in batch) + "]"
    form["result_type"] = "[" + ",".join(parts[1] for parts in batch) + "]"
    form["result_subtype"] = "[" + ",".join(parts[2] for parts in batch) + "]"
    return form


def _row_parts(result: str, subtype: str, extra: dict) -> tuple[str, str, str]:
    """
    The JSON items one row contributes to the three batch lists.  JSON is
    written ASCII-only, so its URL-encoded size is easy to count.
    """
    return (
        json.dumps(result),
        json.dumps(_render(extra)),
        json.dumps(subtype),
    )


def _parts_cost(parts: tuple[str, str, str]) -> int:
    """
    The number of body bytes the parts of a row take once URL-encoded.
    """
    return sum(_quoted_length(part) for part in parts)


def _quoted_length(ascii_text: str) -> int:
    """
    The length of C{quote_plus(ascii_text)} without building it.
    """
    raw = ascii_text.encode("ascii")
    return len(raw) + 2 * len(raw.translate(None, _URL_SAFE_BYTES))


def _truncated_row(row: ResultRow, budget: int) -> tuple[tuple[str, str, str], int]:
    """
    Shrink a row that is too big for a request of its own until it fits.

    @return: the encoded parts and their cost, which is below C{budget}.
    @raise ValueError: even the most truncated form does not fit.
    """
    result, subtype = _text(row.result), _text(row.subtype)
    extra = _crits_extra(row.extra)
    longest_string, longest_container = _longest(
        [result, subtype, extra], (0, 0))

    def attempt(items: Optional[int], chars: Optional[int]):
        parts = _row_parts(
            _cap(result, items, chars), _cap(subtype, items, chars),
            _cap(extra, items, chars))
        cost = _parts_cost(parts)
        return (parts, cost) if cost < budget else None

    if attempt(0, 0) is None:
        raise ValueError(f"a row cannot be truncated to fit in {budget} bytes")
    items: Optional[int] = None
    if attempt(None, 0) is None:
        items = _largest(lambda k: attempt(k, 0) is not None, longest_container)
    fitted = attempt(items, None)
    if fitted is None:
        chars = _largest(lambda n: attempt(items, n) is not None, longest_string)
        fitted = attempt(items, chars)
    assert fitted is not None
    return fitted


def _largest(fits, upper: int) -> int:
    """
    Binary search for a large C{n} in C{[0, upper)} with C{fits(n)}, given
    that C{fits(0)} holds.  The result always satisfies C{fits}, even where
    marker lengths make C{fits} not quite monotonic.
    """
    low, high = 0, max(upper, 1)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def _longest(tree: Any, found: tuple[int, int]) -> tuple[int, int]:
    """
    The length of the longest string and of the longest container in a
    normalised tree.
    """
    chars, items = found
    if isinstance(tree, str):
        return max(chars, len(tree)), items
    if isinstance(tree, dict):
        found = (chars, max(items, len(tree)))
        for key, value in tree.items():
            found = _longest(value, _longest(key, found))
        return found
    if isinstance(tree, (list, tuple)):
        found = (chars, max(items, len(tree)))
        for value in tree:
            found = _longest(value, found)
        return found
    return found


def _cap(tree: Any, items: Optional[int], chars: Optional[int]) -> Any:
    """
    Copy a normalised tree with containers cut to C{items} entries and
    strings to C{chars} characters, each cut marked; C{None} means no cut.
    A string is cut only if that makes it shorter.
    """
    if isinstance(tree, str):
        if chars is None:
            return tree
        dropped = len(tree) - chars
        marker = f"...[truncated {dropped} chars]"
        if dropped > len(marker):
            return tree[:chars] + marker
        return tree
    if isinstance(tree, dict):
        entries = list(tree.items())
        capped = {
            _cap(key, items, chars): _cap(value, items, chars)
            for key, value in entries[:items]
        }
        if items is not None and len(entries) > items:
            capped[f"...[truncated {len(entries) - items} items]"] = ""
        return capped
    if isinstance(tree, (list, tuple)):
        capped_list = [_cap(value, items, chars) for value in tree[:items]]
        if items is not None and len(tree) > items:
            capped_list.append(f"...[truncated {len(tree) - items} items]")
        return type(tree)(capped_list)
    return tree


def _crits_extra(extra: Mapping[str, object]) -> dict:
    """
    Normalise extra columns for CRITs and rename keys that would clobber
    the result's own C{subtype} and C{result}.
    """
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra columns must be a mapping, not {type(extra)!r}")
    tree = _normalise(extra, 0, crits=True)
    renamed = {}
    for key, value in tree.items():
        if key in ("subtype", "result"):
            key = "extra_" + key
            while key in tree or key in renamed:
                key = "extra_" + key
        renamed[key] = value
    return renamed


def _text(value: object) -> str:
    """
    Make text of C{value} that UTF-8 can encode.
    """
    if isinstance(value, str):
        text = str.__str__(value)
    else:
        text = _safe_str(value)
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return text


def _safe_str(value: object) -> str:
    """
    C{str(value)}, or a placeholder if the object cannot even say that.
    """
    try:
        text = str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if isinstance(text, str) else type(value).__name__


def _int_text(number: int) -> str:
    """
    Decimal text of an integer, or hexadecimal past Python's limit on
    decimal conversion of huge integers.
    """
    try:
        return int.__repr__(number)
    except ValueError:
        return hex(number)


def _normalise(value: object, depth: int, crits: bool) -> Any:
    """
    Reduce a value to a tree of plain literal types.

    @param depth: how many containers enclose C{value}.
    @param crits: whether to apply CRITs' storage rules (text keys, 64-bit
        integers).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        number = int.__int__(value)
        if crits and not _INT64_MIN <= number <= _INT64_MAX:
            return _int_text(number)
        return number
    if isinstance(value, float):
        real = float.__float__(value)
        return real if math.isfinite(real) else float.__repr__(real)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    if not isinstance(value, (Mapping, list, tuple)):
        return _text(_safe_str(value))
    if depth >= MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(value, Mapping):
        return {
            _normalise_key(key, depth + 1, crits): _normalise(item, depth + 1, crits)
            for key, item in value.items()
        }
    items = [_normalise(item, depth + 1, crits) for item in value]
    return items if isinstance(value, list) else tuple(items)


def _normalise_key(key: object, depth: int, crits: bool) -> Any:
    """
    Normalise a dict key: text for CRITs; otherwise any hashable literal.
    """
    normal = _normalise(key, depth, crits)
    if crits:
        if isinstance(normal, str):
            return normal
        if isinstance(normal, tuple):
            return _render(normal)
        return repr(normal) if normal is None or isinstance(normal, bool) else str(normal)
    try:
        hash(normal)
    except TypeError:
        return _render(normal)
    return normal


def _render(tree: Any) -> str:
    """
    Write a normalised tree as a Python literal.
    """
    pieces: list[str] = []
    _render_into(tree, pieces)
    return "".join(pieces)


def _render_into(tree: Any, out: list[str]) -> None:
    """
    Append the literal pieces of C{tree} to C{out}.
    """
    if isinstance(tree, str):
        # ascii() escapes everything outside printable ASCII with \\x, \\u
        # or \\U, exactly the escapes a Python 2 unicode literal reads.
        out.append("u" + ascii(tree))
    elif tree is None or isinstance(tree, bool):
        out.append(repr(tree))
    elif isinstance(tree, int):
        out.append(_int_text(tree))
    elif isinstance(tree, float):
        out.append(float.__repr__(tree))
    elif isinstance(tree, dict):
        out.append("{")
        first = True
        for key, value in tree.items():
            if not first:
                out.append(",")
            first = False
            _render_into(key, out)
            out.append(":")
            _render_into(value, out)
        out.append("}")
    else:
        opening, closing = ("[", "]") if isinstance(tree, list) else ("(", ")")
        out.append(opening)
        for index, value in enumerate(tree):
            if index:
                out.append(",")
            _render_into(value, out)
        if isinstance(tree, tuple) and len(tree) == 1:
            out.append(",")
        out.append(closing)
