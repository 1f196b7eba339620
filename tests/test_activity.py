"""
L{Activity}: the deliveries a daemon has in flight and its recent
failures, by a test clock.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.activity import RECENT_FAILURES, Activity
from cuckoodist.sample_context import Sample


class ActivityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.activity = Activity(self.clock)

    def test_in_flight_oldest_first(self) -> None:
        """
        A sample is listed while its block runs, stamped with its start,
        oldest first, and gone afterwards, also when the block raised.
        """
        first, second = Sample("feed_cuckoo", "q1"), Sample("check_results", "q2")
        with self.activity.handling(first):
            self.clock.advance(5)
            with self.activity.handling(second):
                self.assertEqual(self.activity.in_flight(), [first, second])
                self.assertEqual(self.activity.in_flight(limit=1), [first])
                self.assertEqual((first.started, second.started), (0, 5))
                self.assertEqual(self.activity.in_flight_count(), 2)
            with self.assertRaises(ZeroDivisionError):
                with self.activity.handling(second):
                    1 / 0
            self.assertEqual(self.activity.in_flight(), [first])
        self.assertEqual(self.activity.in_flight(), [])

    def test_what_a_stage_learns_shows(self) -> None:
        """
        The listed sample is the stage's own object: ids filled in later
        are what the list shows.
        """
        sample = Sample("feed_cuckoo", "q1")
        with self.activity.handling(sample):
            sample.analysis_id, sample.task_id = "a1", 7
            (shown,) = self.activity.in_flight()
            self.assertEqual((shown.analysis_id, shown.task_id), ("a1", 7))

    def test_failures_bounded_newest_first(self) -> None:
        """
        Failures are remembered newest first, with their reason, up to
        L{RECENT_FAILURES}.
        """
        for n in range(RECENT_FAILURES + 5):
            self.clock.advance(1)
            self.activity.failed(Sample("parse_and_submit", "q", analysis_id=f"a{n}", task_id=n), f"why {n}", n % 2 == 0)
        failures = self.activity.recent_failures()
        self.assertEqual(len(failures), RECENT_FAILURES)
        newest = failures[0]
        self.assertEqual((newest.analysis_id, newest.reason, newest.at, newest.final),
                         (f"a{RECENT_FAILURES + 4}", f"why {RECENT_FAILURES + 4}", RECENT_FAILURES + 5, True))
        self.assertEqual(failures[-1].analysis_id, "a5")
