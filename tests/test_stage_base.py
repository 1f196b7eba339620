"""
The rule that ends every delivery exactly once (L{Stage._on_delivery}),
the in-stage retries (L{retrying}) on a clock, and the in-memory pieces
the stage tests stand on: the L{HTTPClient} over a given agent keeps its
bounds, and the recording outbox has the L{Outbox}'s shape.
"""

import inspect
import io
import json

from treq.testing import StringStubbingResource
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.amqp.consumer import Outbox
from cuckoodist.amqp.protocol import Closed, PublishNacked
from cuckoodist.errors import InvalidMessage, PermanentError, TransientError
from cuckoodist.http import BodyTooLarge, HTTPClient, NotSent
from cuckoodist.retry import retrying
from cuckoodist.stages.base import Stage
from tests.memory import PeerAgent, RecordingOutbox, Steps, World


class Raising(Stage):
    """
    A stage whose work raises the class attribute C{error}.
    """

    kind = "raising"
    error: BaseException = RuntimeError("unset")

    async def process(self, delivery, outbox) -> None:
        raise self.error


STAGE = {"type": "check_results", "consumer_queue": "in/queue", "failed_queue": "in/failed"}


class OnDeliveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self, Raising, STAGE)

    def fail_with(self, error: BaseException, body: bytes = b'{"TaskId": 5, "CritsData": {"analysis_id": "a-1"}}') -> Deferred:
        self.world.stage.error = error
        return self.world.deliver(body)

    def envelope(self) -> dict:
        (failed,) = self.world.outbox.published
        self.assertEqual((failed.queue, failed.delay), ("in/failed", None))
        return failed.json()

    def test_transient(self) -> None:
        """
        A transient error goes to the failed queue, not final, counted as
        the first failure now; the delivery acks.
        """
        self.successResultOf(self.fail_with(TransientError("Cuckoo answered 503")))
        doc = self.envelope()
        self.assertEqual(doc, {
            "Service": "raising", "Queue": "in/queue", "Error": "Cuckoo answered 503", "Desc": "transient failure",
            "Msg": '{"TaskId": 5, "CritsData": {"analysis_id": "a-1"}}', "Attempts": 1, "Final": False,
            "AnalysisId": "a-1", "TaskId": 5, "FirstFailure": self.world.clock.seconds(),
        })

    def test_permanent(self) -> None:
        """
        A permanent error is final; an invalid message says so; a message
        that failed before carries its count and first failure on.
        """
        body = json.dumps({"Retry": {"attempts": 2, "first_failure": 123.0}}).encode()
        self.successResultOf(self.fail_with(PermanentError("refused"), body))
        doc = self.envelope()
        self.assertEqual((doc["Final"], doc["Desc"], doc["Attempts"], doc["FirstFailure"], doc["AnalysisId"]),
                         (True, "permanent failure", 3, 123.0, ""))
        self.world.outbox.published.clear()
        self.successResultOf(self.fail_with(InvalidMessage("bad"), b"\xff"))
        doc = self.envelope()
        self.assertEqual((doc["Final"], doc["Desc"], doc["Msg"]), (True, "invalid message", "\ufffd"))

    def test_resume(self) -> None:
        """
        An error carrying a message to resume from fails that message
        instead of the one received.
        """
        error = TransientError("later")
        error.resume = b'{"TaskId": 6}'
        self.successResultOf(self.fail_with(error))
        self.assertEqual((self.envelope()["Msg"], self.envelope()["TaskId"]), ('{"TaskId": 6}', 6))

    def test_unexpected_is_permanent(self) -> None:
        """
        Any other exception is a bug: logged, and the message failed as
        permanent with the exception named (cut to a loggable length).
        """
        self.successResultOf(self.fail_with(KeyError("x" * 3000)))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        doc = self.envelope()
        self.assertEqual((doc["Final"], doc["Desc"]), (True, "permanent failure"))
        self.assertTrue(doc["Error"].startswith("internal error in raising: KeyError: 'xxx"), doc["Error"])
        self.assertEqual(len(doc["Error"]), 2003)

    def test_broker_trouble_not_settled(self) -> None:
        """
        When the broker lost or refused the stage's output, or the work was
        cancelled, nothing is decided: the error propagates (the delivery
        stays unacked) and nothing goes to the failed queue.  So when the
        failed queue itself refuses.
        """
        for error in (Closed("channel closed"), PublishNacked("nack"), CancelledError()):
            self.failureResultOf(self.fail_with(error), type(error))
        self.assertEqual(self.world.outbox.published, [])
        outbox = RecordingOutbox(refuse={"in/failed": PublishNacked("nack")})
        self.world.stage.error = TransientError("x")
        self.failureResultOf(self.world.deliver(b"{}", outbox), PublishNacked)


class RetryingTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """
        Transient failures are retried after C{base_delay * 2**n} seconds,
        capped at C{max_delay}.
        """
        clock = Clock()
        step = Steps(*[TransientError("503")] * 4)
        d = Deferred.fromCoroutine(retrying(clock, step, "step", attempts=5, base_delay=2, max_delay=5))
        for wait, calls in ((2, 2), (4, 3), (5, 4)):
            self.assertEqual(step.calls, calls - 1)
            clock.advance(wait - 0.5)
            self.assertEqual(step.calls, calls - 1)
            clock.advance(0.5)
        clock.advance(5)
        self.assertEqual((self.successResultOf(d), step.calls), ("done", 5))

    def test_gives_up(self) -> None:
        """
        After C{attempts} tries the last transient error is raised.
        """
        clock = Clock()
        d = Deferred.fromCoroutine(retrying(clock, Steps(TransientError("a"), TransientError("b")), "step", attempts=2))
        clock.advance(1)
        self.assertEqual(self.failureResultOf(d, TransientError).value.reason, "b")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_permanent_not_retried(self) -> None:
        """
        A permanent error is raised at once.
        """
        clock = Clock()
        step = Steps(PermanentError("401"))
        d = Deferred.fromCoroutine(retrying(clock, step, "step"))
        self.failureResultOf(d, PermanentError)
        self.assertEqual((step.calls, clock.getDelayedCalls()), (1, []))

    def test_cancel_while_waiting(self) -> None:
        """
        Cancelling during the wait stops the retries.
        """
        clock = Clock()
        step = Steps(TransientError("a"))
        d = Deferred.fromCoroutine(retrying(clock, step, "step"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((step.calls, clock.getDelayedCalls()), (1, []))


def answer(code: int, body: bytes, headers: dict | None = None):
    return StringStubbingResource(lambda *request: (code, headers or {}, body))


class AgentHTTPTests(SynchronousTestCase):
    """
    L{HTTPClient} over a given agent, as the stage tests use it, keeps the
    behaviour its built-in pools have.
    """

    def client(self, resource) -> tuple[HTTPClient, Clock]:
        clock = Clock()
        return HTTPClient(clock, 10, agent=PeerAgent({"http://peer.test": resource})), clock

    def call(self, http: HTTPClient, **kwargs) -> Deferred:
        return Deferred.fromCoroutine(http.request("GET", "http://peer.test/x?token=secret", what="Peer", **kwargs))

    def test_answer(self) -> None:
        """
        A response comes back whole, or into the sink; closing has no
        pools to wait for.
        """
        http, clock = self.client(answer(200, b"hello"))
        self.assertEqual(self.successResultOf(self.call(http)).body, b"hello")
        sink = io.BytesIO()
        self.assertEqual(self.successResultOf(self.call(http, sink=sink)).body, b"")
        self.assertEqual((sink.getvalue(), clock.getDelayedCalls()), (b"hello", []))
        self.successResultOf(http.close())

    def test_redirect_permanent(self) -> None:
        """
        A redirect is not followed: it is a permanent error, whose reason
        leaves out the query string (it may hold credentials).
        """
        http, _ = self.client(answer(302, b"", {b"location": b"http://elsewhere.test/"}))
        reason = self.failureResultOf(self.call(http), PermanentError).value.reason
        self.assertIn("Peer answered 302 (a redirect) to GET http://peer.test/x;", reason)
        self.assertNotIn("secret", reason)

    def test_too_large(self) -> None:
        """
        A body over the limit is refused.
        """
        http, _ = self.client(answer(200, b"z" * 100))
        self.failureResultOf(self.call(http, max_body=10), BodyTooLarge)

    def test_refused_is_not_sent(self) -> None:
        """
        A refused connection is L{NotSent}.
        """
        agent = PeerAgent({})
        http = HTTPClient(Clock(), 10, agent=agent)
        reason = self.failureResultOf(self.call(http), NotSent).value.reason
        self.assertTrue(reason.startswith("Peer unreachable for GET http://peer.test/x: Connection was refused"), reason)

    def test_deadline(self) -> None:
        """
        A peer that never answers fails the call at the deadline.
        """
        agent = PeerAgent({})
        agent.request = lambda *args, **kwargs: Deferred()
        clock = Clock()
        d = self.call(HTTPClient(clock, 10, agent=agent))
        clock.advance(10)
        self.assertEqual(self.failureResultOf(d, TransientError).value.reason, "Peer did not answer GET http://peer.test/x within 10 s")

    def test_builds_pools_by_default(self) -> None:
        """
        Without an agent, one pool per TLS policy is built; with one, none.
        """
        self.assertEqual(len(HTTPClient(Clock(), 10)._pools), 2)
        self.assertEqual(HTTPClient(Clock(), 10, agent=PeerAgent({}))._pools, [])


class RecordingOutboxTests(SynchronousTestCase):
    def test_same_shape(self) -> None:
        """
        The recording outbox has the L{Outbox}'s publishing methods, with
        the same parameters.
        """
        for name in ("publish", "publish_later"):
            self.assertEqual(inspect.signature(getattr(RecordingOutbox, name)), inspect.signature(getattr(Outbox, name)))
