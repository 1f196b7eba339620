"""
The progress display of C{submit} and C{resubmit}: a bar redrawn in place
on a terminal, plain lines now and then elsewhere, nothing when turned off;
time from a L{Clock}.
"""

import io
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.commands.progress import LINE_INTERVAL, Progress, duration
from cuckoodist.commands.resubmit import resubmit
from cuckoodist.config import parse_amqp_url
from cuckoodist.dump import DumpRecord, DumpStore
from tests import harness


class _Terminal(io.StringIO):
    """
    A stream that says it is a terminal, as stderr on a console does.
    """

    def isatty(self) -> bool:
        return True


class _Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def _bars(text: str) -> list[str]:
    """
    The states a terminal showed: what follows each erase.
    """
    return [part for part in text.split("\r\x1b[K")[1:]]


class DurationTests(SynchronousTestCase):
    def test_formats(self) -> None:
        self.assertEqual([duration(s) for s in (0, 5.4, 65, 3599, 3600, 7322, -3)],
                         ["0:00", "0:05", "1:05", "59:59", "1:00:00", "2:02:02", "0:00"])


class TerminalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.stream = _Terminal()

    def test_bar(self) -> None:
        """
        On a terminal the bar is drawn on the first item, redrawn at most
        every tenth of a second, and always on the last; it shows the
        count, the rate and the time left, fits the width, and ends on a
        line of its own.
        """
        progress = Progress(4, "files", self.clock.seconds, self.stream, columns=60)
        self.clock.advance(1)
        progress.advance()
        self.clock.advance(0.01)
        progress.advance()  # too soon: not drawn
        self.clock.advance(1)
        progress.advance()
        progress.advance()  # the last: drawn however soon
        progress.finish()
        progress.finish()  # only once
        text = self.stream.getvalue()
        bars = _bars(text)
        self.assertEqual(len(bars), 4, text)
        self.assertTrue(bars[0].startswith("files [#"), bars[0])
        self.assertTrue(bars[0].endswith(" 1/4 1.0/s ETA 0:03"), bars[0])
        self.assertTrue(bars[1].endswith(" 3/4 1.5/s ETA 0:01"), bars[1])
        self.assertTrue(bars[2].endswith(" 4/4 2.0/s done"), bars[2])
        self.assertIn("[" + "#" * 10, bars[2])
        self.assertNotIn(".", bars[2].split("]")[0])
        self.assertEqual(bars[3], bars[2] + "\n")
        for bar in bars:
            self.assertLessEqual(len(bar.rstrip("\n")), 59)

    def test_detected(self) -> None:
        """
        Without C{tty}, a stream that is a terminal gets the bar and one
        that is not gets none.
        """
        Progress(2, "files", self.clock.seconds, self.stream, columns=40).advance()
        self.assertIn("\r\x1b[K", self.stream.getvalue())
        plain = io.StringIO()
        Progress(2, "files", self.clock.seconds, plain).advance()
        self.assertEqual(plain.getvalue(), "")

    def test_echo(self) -> None:
        """
        A line for stdout erases the bar first and draws it again after,
        so a terminal showing both has whole lines.
        """
        out = io.StringIO()
        progress = Progress(3, "files", self.clock.seconds, self.stream, columns=50)
        progress.echo("before any bar", out)
        self.assertEqual(self.stream.getvalue(), "")
        progress.advance()
        drawn = self.stream.getvalue()
        progress.echo("submitted x a.exe", out)
        self.assertEqual(out.getvalue(), "before any bar\nsubmitted x a.exe\n")
        after = self.stream.getvalue()[len(drawn):]
        self.assertTrue(after.startswith("\r\x1b[K"))
        self.assertEqual(_bars(after)[-1], _bars(drawn)[-1])

    def test_disabled(self) -> None:
        """
        C{--no-progress} writes nothing, not even the summary; echo still
        prints the command's line.
        """
        out = io.StringIO()
        progress = Progress(2, "files", self.clock.seconds, self.stream, enabled=False)
        progress.advance()
        progress.echo("line", out)
        progress.advance()
        progress.finish()
        self.assertEqual(self.stream.getvalue(), "")
        self.assertEqual(out.getvalue(), "line\n")

    def test_nothing_to_do(self) -> None:
        progress = Progress(0, "files", self.clock.seconds, self.stream)
        progress.finish()
        self.assertEqual(self.stream.getvalue(), "")

    def test_broken_stream(self) -> None:
        """
        A stderr that cannot be written does not stop the work.
        """
        progress = Progress(2, "files", self.clock.seconds, _Broken(), tty=True)
        progress.advance()
        progress.advance()
        progress.finish()
        self.assertEqual(progress.done, 2)


class PlainTests(SynchronousTestCase):
    def test_lines(self) -> None:
        """
        Off a terminal: no carriage returns, a line at most every
        L{LINE_INTERVAL} seconds while work remains, and a summary.
        """
        clock = Clock()
        stream = io.StringIO()
        progress = Progress(10, "resubmitted", clock.seconds, stream)
        for _ in range(3):
            clock.advance(1)
            progress.advance()
        self.assertEqual(stream.getvalue(), "")
        clock.advance(LINE_INTERVAL)
        progress.advance()
        progress.advance()  # at once: no second line
        clock.advance(6)
        for _ in range(5):
            progress.advance()  # the last is not a line: the summary says it
        progress.finish()
        self.assertEqual(stream.getvalue().splitlines(), [
            "resubmitted 4/10 (0.3/s), ETA 0:20",
            "resubmitted 10/10 in 0:19 (0.5/s)",
        ])

    def test_short_run(self) -> None:
        """
        Off a terminal, a run shorter than L{LINE_INTERVAL} writes nothing
        at all, so that a command's error stays its one line on stderr.
        """
        clock = Clock()
        stream = io.StringIO()
        progress = Progress(3, "files", clock.seconds, stream)
        for _ in range(3):
            clock.advance(LINE_INTERVAL / 4)
            progress.advance()
        progress.finish()
        self.assertEqual(stream.getvalue(), "")


class ResubmitProgressTests(TestCase):
    timeout = 60

    async def test_resubmit_reports_progress(self) -> None:
        """
        C{resubmit} counts the confirmed messages on its progress stream,
        and its lines for stdout are unchanged.
        """
        queue = f"{harness.prefix()}/feed_cuckoo"
        amqp = parse_amqp_url(harness.AMQP_URL)
        self.addCleanup(lambda: Deferred.fromCoroutine(harness.delete_queues(amqp, [queue])))
        store = DumpStore(os.path.abspath(self.mktemp()))
        for i in range(3):
            store.write(DumpRecord(stage="feed_cuckoo", queue=queue, reason="test", message=json.dumps({"n": i})))
        out, err = io.StringIO(), _Terminal()
        done, skipped = await resubmit(reactor, amqp, store.directory, None, out, timeout=30, progress_stream=err)
        self.assertEqual((done, skipped), (3, 0))
        self.assertEqual(out.getvalue().splitlines(), ["resubmitted 3/3", "resubmitted 3, skipped 0"])
        bars = _bars(err.getvalue())
        self.assertTrue(bars[-1].startswith("resubmitted ["), bars)
        self.assertIn(" 3/3 ", bars[-1])
        self.assertTrue(err.getvalue().endswith("\n"))
