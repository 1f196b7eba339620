# -*- test-case-name: tests.test_report -*-
"""
The fast path of L{cuckoodist.report.extract}: walk a report's text with
regular expressions and C{json}'s C scanner, never producing parser events.

Why: an event-based parser (ijson) makes one Python tuple per JSON token,
and that alone caps it near C{json.load}'s speed.  Nearly all of a report is
call lists, and past the C{api_calls_max} cap a call only has to be checked
and counted.  One compiled pattern (L{_DICT_ITEM}) matches a whole call dict
and its separator in C, exactly to the JSON grammar, so a run of calls costs
one C{re} match each and nothing else.  The first calls, and every small
piece the rows need, are decoded by C{json}'s own C scanner, the very one
L{cuckoodist.report.plain} relies on.

The text is held in a window of about one read block (see
L{cuckoodist.report.extract._READ_SIZE}); every C call works on a bounded
piece of it (a few hundred calls, a 64 KiB slice), so the reactor thread
still gets the GIL every millisecond or so.

A call the pattern does not take (nested more than five deep, or not a
dict) is stepped over item by item, and a value too long for one slice is
built or skipped from its parts, so nothing depends on the whole value
fitting in memory twice.

Reports are hostile, so nothing here grows with what the report chooses:

  - A value nested deeper than L{_MAX_DEPTH} below where the walk started
    on it is stepped over with an explicit stack of closing characters
    (L{_Text.skip_flat}), in flat memory and without recursion; in a piece
    being built it becomes C{None}.  The rows never look that deep.
  - A string longer than a slice is decoded only as far as a row can use
    (L{rows.MAX_STRING} characters and one more, so the collector still
    sees, cuts and counts it) and the rest is stepped over, block by block.
  - A kept piece (info, a signature, a network entry, a process header, a
    long call) is decoded whole only if it fits in a slice; a longer one is
    walked key by key and only the fields rows read are built
    (L{rows.PIECES}, L{_Text.pick}), so a signature with millions of marks
    costs a walk, not millions of objects.  Lists of pieces (signatures,
    summary lists, network lists, processes) are walked item by item and
    each item goes to the collector, whose budget decides what is kept.
    A long call's arguments are built only up to
    L{rows.MAX_ARGUMENTS_SIZE} (L{_Text.sized}).
  - Every read checks the caller's stop flag (see L{_guard.check_stop}).

Which pieces are read, and where, is not decided here: L{_Text} is a
L{Walker}, and L{_walker.read_report} walks the sections through it, as it
does the event walk's.  This module supplies the operations, and the fast
path of a process's call list (L{_calls}).

This path only has to be right on what it accepts.  Whatever surprises it
(invalid or truncated JSON, bad UTF-8, a constant such as C{NaN}, a byte
order mark, a number longer than a slice) raises L{Fallback}, and the caller
starts over with the event-based walker, which gives the rows or words the
error.  A valid report therefore costs at most one extra pass, and an
invalid one is refused by the same code as before.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from itertools import islice
from typing import Any, BinaryIO, Callable, Iterator

from cuckoodist.report._guard import check_stop
from cuckoodist.report._walker import PIECE_TEXT, PROCESS_TEXT, CallRow, Walker, read_report
from cuckoodist.report.rows import (
    MAX_ARGUMENTS_SIZE,
    MAX_STRING,
    OVERSIZED,
    PIECES,
    SIZE_DEPTH,
    RowCollector,
    arguments_size,
)

__all__ = ["Fallback", "walk"]


class Fallback(Exception):
    """
    The fast path cannot be sure; use the event-based walker.
    """


def _pattern() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """
    Compile the JSON patterns.  Possessive quantifiers and atomic groups
    (Python 3.11) keep a failed match from backtracking.

    @return: (a dict array item with its separator, a string's body, white
        space).
    """
    ws = r"[ \t\n\r]*+"
    # A string's plain character, [^"\\\x00-\x1f] spelled as ranges: sre
    # matches the negated set three times slower.
    char = r"[\x20\x21\x23-\x5b\x5d-\U0010ffff]"
    escape = r'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})'
    body = char + "*+(?:" + escape + char + "*+)*+"
    # The same language as '"' + body + '"', but a string without escapes
    # (nearly all) takes the first branch and no repeat is set up.
    string = '"' + char + '*+(?:"|(?:' + escape + char + '*+)++")'
    # Empty branches, not "?": an optional group costs a repeat in sre.
    number = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++|)(?:[eE][-+]?+[0-9]++|)"

    def obj(value: str) -> str:
        return (r"\{" + ws + "(?:" + string + ws + ":" + ws + "(?>" + value + ")" + ws
                + r'(?:,' + ws + r'(?=")|(?=\})))*+\}')

    def arr(value: str) -> str:
        return (r"\[" + ws + "(?:(?>" + value + ")" + ws
                + r"(?:," + ws + r"(?=[^\]])|(?=\])))*+\]")

    # Branches that start with a literal are skipped at a glance, so the
    # number, which does not, comes last.
    value = string + "|true|false|null|" + number
    for _ in range(4):
        value = "|".join((string, obj(value), arr(value), "true|false|null", number))
    # The outer dict spells its members out twice, which measured faster
    # than the lookahead form the nested ones use to stay small.
    member = string + ws + ":" + ws + "(?:" + value + ")" + ws
    item = (r"(?>\{" + ws + "(?:" + member + "(?:," + ws + member + ")*+|)" + r"\})"
            + ws + "(?:," + ws + r"(?=[^\]])|(?=\]))")
    return re.compile(item), re.compile(body), re.compile(ws)


#: One dict item of an array, nested at most five deep, with the comma (or
#: the lookahead of C{]}) after it.
_DICT_ITEM, _STRING_BODY, _WS = _pattern()

#: What may follow an array item: a comma and the next item's start (not
#: a C{]}), or the C{]}.
_SEPARATOR = re.compile(r"[ \t\n\r]*+(?:,[ \t\n\r]*+(?=[^\]])|\])")

#: Items matched per C call: a few hundred microseconds of work.
_RUN = 256
#: The first slice a list item is read from: items of piece lists are
#: mostly short (a path, an address), and a hostile list has millions of
#: them, each of which would otherwise copy a L{_SMALL} slice.
_TINY = 256
#: The longest slice the C scanner builds a value from in one call.
_SLICE = 64 * 1024
#: A value is read from a small slice first, so small values (nearly all)
#: do not pay for copying a large one.
_SMALL = 4 * 1024
#: The deepest nesting walked recursively; deeper values are stepped over
#: flat (L{_Text.skip_flat}).
_MAX_DEPTH = 64
#: Raw characters of a long string decoded for a row: enough for
#: C{MAX_STRING + 2} characters even if each is an escaped surrogate pair.
_LONG = 12 * (MAX_STRING + 2)
#: The slices L{_Text.whole} tries for each size it is asked for.
_WHOLE = {PROCESS_TEXT: (_TINY, _SMALL), PIECE_TEXT: (_TINY, _SMALL, _SLICE)}
#: A JSON number or literal, for values stepped over flat.
_SCALAR = re.compile(r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++|)(?:[eE][-+]?+[0-9]++|)"
                     r"|true|false|null")


def _constant(name: str) -> Any:
    raise ValueError("not JSON: " + name)


def _scanner() -> Callable[[str, int], tuple[Any, int]]:
    """
    @return: C{json}'s C scanner, refusing C{NaN} and C{Infinity} like
        yajl does.  Each walk makes its own: a scanner keeps a key memo.
    """
    return json.JSONDecoder(parse_constant=_constant).scan_once


class _Text(Walker):
    """
    A window on the report text, refilled one read block at a time, and
    the L{Walker} on it.

    @ivar text: the decoded text held.
    @ivar pos: the index in L{text} where the walk is.
    @ivar eof: whether L{text} holds the end of the file.
    @ivar scan_once: this walk's C{json} scanner.
    """

    def __init__(self, fp: BinaryIO, read_size: int,
                 stop: threading.Event | None = None) -> None:
        self._fp = fp
        self._read_size = read_size
        self._stop = stop
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.scan_once = _scanner()
        self.text = ""
        self.pos = 0
        self.eof = False

    def fill(self) -> None:
        """
        Drop the text already walked and append the next block.

        @raise Fallback: at the end of the file, or on bad UTF-8.
        @raise Cancelled: if the stop flag is set.
        """
        check_stop(self._stop)
        if self.eof:
            raise Fallback("end of file")
        block = self._fp.read(self._read_size)
        try:
            more = self._decoder.decode(block, final=not block)
        except UnicodeDecodeError:
            raise Fallback("utf-8") from None
        self.eof = not block
        self.text = self.text[self.pos:] + more
        self.pos = 0

    def skip_ws(self) -> str:
        """
        Skip white space, reading on as needed.

        @return: the next character, or C{""} at the end of the file.
        """
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.fill()

    def expect(self, char: str) -> None:
        if self.skip_ws() != char:
            raise Fallback("expected " + char)
        self.pos += 1

    def scan(self, sizes: tuple[int, ...] | None = None) -> tuple[Any, bool]:
        """
        Decode the value at L{pos} if it fits in a slice of one of C{sizes}.

        @return: C{(value, True)} with L{pos} after it, or C{(None, False)}
            with L{pos} unchanged if the value is longer than the slices.
        """
        self.skip_ws()
        for size in sizes or (_SMALL, _SLICE):
            while len(self.text) - self.pos < size and not self.eof:
                self.fill()
            window = self.text[self.pos:self.pos + size]
            whole = len(window) < size
            try:
                value, end = self.scan_once(window, 0)
            except RecursionError:
                # Valid or not, it is walked level by level.
                return None, False
            except (StopIteration, ValueError):
                if whole:
                    raise Fallback("invalid value") from None
                continue
            if whole or end < len(window):
                self.pos += end
                return value, True
        return None, False

    def build(self, depth: int = 0) -> Any:
        """
        @return: the value at L{pos}, decoded.  A long one (a signature
            with thousands of marks, a long summary list) is put together
            from its parts, so no single C call takes long.
        """
        value, done = self.scan()
        if done:
            return value
        if depth > _MAX_DEPTH:
            self.skip_flat()
            return None
        first = self.text[self.pos]
        if first == "{":
            return {key: self.build(depth + 1) for key in self.entries()}
        if first == "[":
            return [self.build(depth + 1) for _ in self.items()]
        if first == '"':
            return self._build_string()
        raise Fallback("long scalar")

    def kind(self) -> str:
        return self.skip_ws()

    def whole(self, most: int) -> tuple[Any, bool]:
        return self.scan(_WHOLE[most])

    def scalar(self) -> Any:
        return self.build()

    def calls(self, kept: list, room: int, row: CallRow) -> int:
        return _calls(self, kept, room, row)

    def sized(self, room: int, depth: int = 0) -> tuple[Any, int]:
        """
        Build the value at L{pos} like L{build}, counting its size as
        L{rows.arguments_size} does, and stop building once the size passes
        C{room}: the rest is stepped over.

        @param depth: the level of the value in the one being measured.
        @return: the value (or L{rows.OVERSIZED}) and its size as counted
            (more than C{room} if oversized).
        """
        value, done = self.scan()
        if done:
            return value, arguments_size(value, room, depth)
        first = self.text[self.pos]
        if first == '"':
            value = self._build_string()
            return value, min(len(value), MAX_STRING) + 1
        if depth >= SIZE_DEPTH and first in "{[":
            self.skip_flat()
            return None, 1
        if first == "{":
            members: Any = {}
            keys = self.entries()
        elif first == "[":
            members = []
            keys = self.items()
        else:
            raise Fallback("long scalar")
        size = 1
        for key in keys:
            if size > room:
                self.skip()
                continue
            if first == "{":
                size += min(len(key), MAX_STRING) + 1
            item, counted = self.sized(room - size, depth + 1)
            size += counted
            if first == "{":
                members[key] = item
            else:
                members.append(item)
        return (OVERSIZED if size > room else members), size

    def _build_string(self) -> str:
        """
        Decode a string longer than a slice, but only its first
        C{MAX_STRING + 1} characters: the collector cuts it to
        C{MAX_STRING} and counts it, as it would a whole one.  The rest is
        stepped over, so a 600 MB string costs a window, not 600 MB.
        """
        while len(self.text) - self.pos < _LONG + 2 and not self.eof:
            self.fill()
        start = self.pos + 1
        # Stop at the closing quote, or before an escape the cut would split.
        head = _STRING_BODY.match(self.text, start, start + _LONG).end()
        value, _ = self.scan_once('"' + self.text[start:head] + '"', 0)
        self._skip_string()
        return value[:MAX_STRING + 1]

    def skip(self, depth: int = 0) -> None:
        """
        Check and step over the value at L{pos}, in flat memory whatever
        its size.
        """
        # One small slice only: a long value is walked, not scanned again
        # at every level.
        _, done = self.scan((_SMALL,))
        if done:
            return
        if depth > _MAX_DEPTH:
            self.skip_flat()
            return
        first = self.text[self.pos]
        if first == "{":
            for _ in self.entries():
                self.skip(depth + 1)
        elif first == "[":
            self._skip_items(depth)
        elif first == '"':
            self._skip_string()
        elif not self.scan((_SLICE,))[1]:
            raise Fallback("long scalar")

    def _skip_items(self, depth: int) -> None:
        """
        Step over the array at L{pos}: runs of dict items (a signature's
        marks) go by in C (L{count_dict_items}), anything else one item at
        a time.
        """
        if not self._opened("[", "]"):
            return
        while True:
            if self.skip_ws() == "{":
                _, closed = self.count_dict_items()
                if closed:
                    self.pos += 1
                    return
            self.skip(depth + 1)
            if self._closed("]"):
                return

    def skip_flat(self) -> None:
        """
        Check and step over the value at L{pos} however deep it nests: the
        open containers are a list of their closing characters, not Python
        frames, and no C call sees more than one token.  Slower per byte
        than L{skip}, so it is kept for what is nested too deep for that.
        """
        closers: list[str] = []
        while True:
            char = self.skip_ws()
            if char == "{" or char == "[":
                closer = "}" if char == "{" else "]"
                if self._opened(char, closer):
                    closers.append(closer)
                    if closer == "}":
                        self._skip_key()
                    continue
            elif char == '"':
                self._skip_string()
            else:
                self._skip_scalar()
            # A value ended: so do the containers whose last value it was.
            while closers:
                if not self._closed(closers[-1]):
                    if closers[-1] == "}":
                        self._skip_key()
                    break
                closers.pop()
            else:
                return

    def _skip_key(self) -> None:
        if self.skip_ws() != '"':
            raise Fallback("expected a key")
        self._skip_string()
        self.expect(":")

    def _skip_scalar(self) -> None:
        while True:
            match = _SCALAR.match(self.text, self.pos)
            if match is None:
                raise Fallback("invalid value")
            if match.end() < len(self.text) or self.eof:
                self.pos = match.end()
                return
            # The number may go on in the next block.
            if len(self.text) - self.pos > _SLICE:
                raise Fallback("long scalar")
            self.fill()

    def _skip_string(self) -> None:
        self.pos += 1
        while True:
            self.pos = _STRING_BODY.match(self.text, self.pos).end()
            if self.pos < len(self.text) and self.text[self.pos] == '"':
                self.pos += 1
                return
            # Stopped by a character a string may not hold, or by the end
            # of the window (perhaps inside an escape).
            if len(self.text) - self.pos > 6 or self.eof:
                raise Fallback("bad string")
            self.fill()

    def entries(self) -> Iterator[str]:
        """
        Iterate over the keys of the object at L{pos}; the caller must step
        over each value (L{skip}, L{build}) before asking for the next.
        """
        if self._opened("{", "}"):
            while True:
                if self.skip_ws() != '"':
                    raise Fallback("expected a key")
                key = self.build()
                self.expect(":")
                yield key
                if self._closed("}"):
                    return

    def items(self) -> Iterator[str]:
        """
        Iterate over the items of the array at L{pos}, giving the first
        character of each; same contract as L{entries}.
        """
        if self._opened("[", "]"):
            while True:
                yield self.skip_ws()
                if self._closed("]"):
                    return

    def _opened(self, opener: str, closer: str) -> bool:
        """
        Step over a container's opening character, and over its closing one
        too if it is empty.

        @return: whether members follow.
        """
        self.expect(opener)
        if self.skip_ws() == closer:
            self.pos += 1
            return False
        return True

    def after_item(self) -> bool:
        """
        Step over what follows an array item.

        @return: whether the array ended.
        """
        return self._closed("]")

    def _closed(self, closer: str) -> bool:
        """
        Step over what follows a member: a comma, or the closing character.

        @return: whether the container ended.
        """
        char = self.skip_ws()
        self.pos += 1
        if char == closer:
            return True
        if char != ",":
            raise Fallback(f"expected , or {closer}")
        return False

    def count_dict_items(self) -> tuple[int, bool]:
        """
        Count the run of dict items starting at L{pos} inside an array, in
        C, each with the comma after it.  L{pos} must be on an item (after
        a comma), not on the C{[}.

        @return: how many were stepped over, and whether the array's C{]}
            is next.
        """
        count = 0
        while True:
            scanner = _DICT_ITEM.scanner(self.text, self.pos)
            while True:
                run = list(islice(iter(scanner.match, None), _RUN))
                if not run:
                    break
                count += len(run)
                self.pos = run[-1].end()
            char = self.skip_ws()
            if char == "]":
                if not count:
                    # Right after a comma: "[..., ]".
                    raise Fallback("trailing comma")
                return count, True
            if len(self.text) - self.pos > _SLICE or self.eof:
                return count, False
            # The next item may be cut by the end of the window.
            self.fill()


def _keep_run(text: _Text, kept: list[tuple[str, dict]], room: int,
              row: Callable[[dict, int, bool], tuple[str, dict]]) -> bool:
    """
    Decode the run of dict calls at L{_Text.pos}, turn each into its row
    with C{row} (L{RowCollector.api_call}) and add that to C{kept}, up to
    C{room} of them, with as little Python per call as possible.  A dict
    the C scanner closes inside the window is complete, so it needs no
    slice (see L{_Text.scan}).

    @return: whether the array's C{]} was reached; if not, L{_Text.pos} is
        on the next item, which this loop did not take.
    """
    source = text.text
    pos = text.pos
    scan = text.scan_once
    separator = _SEPARATOR.match
    while len(kept) < room:
        try:
            call, end = scan(source, pos)
        except (StopIteration, ValueError, RecursionError):
            break
        if type(call) is not dict:
            break
        after = separator(source, end)
        if after is None:
            break
        # A call no longer than MAX_STRING holds no string that is.
        kept.append(row(call, len(kept), end - pos <= MAX_STRING))
        pos = after.end()
        if source[pos - 1] == "]":
            text.pos = pos
            return True
    text.pos = pos
    return False


def _long_call(text: _Text) -> Any:
    """
    @return: the call at L{_Text.pos}, with only the fields its row reads,
        and its arguments built only as far as L{rows.MAX_ARGUMENTS_SIZE}
        (or L{rows.OVERSIZED}); any other item, as L{_Text.pick} gives it.
    """
    value, done = text.scan()
    if done or text.text[text.pos] != "{":
        return value if done else text.pick(None)
    call = {}
    fields = PIECES["call"]
    for key in text.entries():
        if key == "arguments":
            call[key] = text.sized(MAX_ARGUMENTS_SIZE)[0]
        elif key in fields:
            call[key] = text.pick(None)
        else:
            text.skip()
    return call


def _calls(text: _Text, kept: list[tuple[str, dict]], room: int,
           row: Callable[[dict, int], tuple[str, dict]]) -> int:
    """
    Walk one process's call list.

    @param kept: the rows of the process's calls kept so far; the rows of
        this list's first calls are added, up to C{room} in all.
    @param row: L{RowCollector.api_call}.
    @return: how many dict calls the list holds.
    """
    seen = 0
    text.expect("[")
    if text.skip_ws() == "]":
        text.pos += 1
        return seen
    while True:
        if len(kept) < room:
            before = len(kept)
            closed = _keep_run(text, kept, room, row)
            seen += len(kept) - before
            if closed:
                return seen
            if len(kept) >= room:
                continue
            # An item the quick loop does not take: not a dict, long, or
            # cut by the end of the window.
            call = _long_call(text)
            if type(call) is dict:
                kept.append(row(call, len(kept)))
                seen += 1
            if text.after_item():
                return seen
            text.skip_ws()
            continue
        count, closed = text.count_dict_items()
        seen += count
        if closed:
            text.pos += 1
            return seen
        # Not a dict the pattern knows (another type, deeper nesting, an
        # escape it refuses): step over it the slow way.
        seen += text.skip_ws() == "{"
        text.skip()
        if text.after_item():
            return seen


def walk(fp: BinaryIO, collector: RowCollector, read_size: int,
         stop: threading.Event | None = None) -> None:
    """
    Walk the whole report, handing its pieces to C{collector}.

    @param read_size: bytes per file read.
    @param stop: checked at every read; once set, the walk ends.
    @raise Fallback: if the report is anything but plain valid JSON this
        path can vouch for; C{collector} is then half filled and must be
        thrown away.
    @raise Cancelled: if C{stop} was set.
    """
    text = _Text(fp, read_size, stop)
    if text.kind() != "{":
        # Not a report; the event walk says why.
        raise Fallback("not a JSON object")
    read_report(text, collector)
    if text.skip_ws() != "":
        raise Fallback("trailing data")
