"""
Which strings can be queue names: checked before any gets near the wire.
"""

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.names import MAX_QUEUE_NAME_BYTES, queue_name_problem


class QueueNameTests(SynchronousTestCase):
    def test_usable(self) -> None:
        """
        Ordinary names, non-ASCII ones, and names of exactly 255 bytes pass.
        """
        for name in ("worker/feed_cuckoo", "ünïcode/queue", "q" * MAX_QUEUE_NAME_BYTES, "é" * 127):
            self.assertIsNone(queue_name_problem(name), name)

    def test_refused(self) -> None:
        """
        Each unusable name is refused with a reason that never quotes it;
        length is counted in UTF-8 bytes, not characters.
        """
        cases = {
            "q" * 256: "at most 255 bytes",
            "é" * 128: "this one is 256",
            "": "cannot be empty",
            "bad\ud800": "lone surrogate",
            "bad\x00name": "control characters",
            "line\nbreak": "control characters",
            "amq.direct": "reserved",
        }
        for name, reason in cases.items():
            problem = queue_name_problem(name)
            self.assertIsNotNone(problem, repr(name))
            self.assertIn(reason, problem)
            if name:
                self.assertNotIn(name, problem)
        self.assertIn("must be a string", queue_name_problem(42))
