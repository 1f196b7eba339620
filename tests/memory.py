"""
Running the stages in memory: no sockets, no broker, no threads, no real
time.

  - L{MemoryReactor}: a L{Clock} that also runs "threads" inline, for the
    report parser and the overseer's dump writes
    (C{deferToThreadPool(reactor, reactor.getThreadPool(), ...)}).
  - L{PeerAgent}: an L{IAgent} that serves each configured peer (the
    Cuckoo and the CRITs simulators) from its resource through treq.testing's
    C{RequestTraversalAgent}, records every request, and can refuse a
    connection the way a down peer does.
  - L{RecordingOutbox}: the L{Outbox}'s C{publish} and C{publish_later},
    recording what would be published.
  - L{World}: all of that wired the way C{tap.build_daemon} wires a daemon,
    around one stage.

treq builds request bodies (form data, multipart uploads) with producers
that run on the global cooperator, which the global reactor drives.  A
L{World} therefore patches C{twisted.internet.task.cooperate}, for the
test, with the L{PeerAgent}'s cooperator, which runs them as soon as the
request is made: every request completes within the call that makes it,
so a stage runs to its next wait on the clock within one call.
"""

import io
import json
from typing import Any, Callable, Mapping

import attrs
import twisted.internet.task
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, Cooperator
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from cuckoodist.amqp.consumer import Delivery
from cuckoodist.config import parse_config
from cuckoodist.http import HTTPClient
from cuckoodist.messages import CritsData, TaskMessage
from cuckoodist.registry import STAGES
from cuckoodist.simulators.crits import DEFAULT_API_KEY, CritsSimulator
from cuckoodist.simulators.cuckoo import CuckooSimulator
from cuckoodist.stages.base import Stage, StageContext

__all__ = ["MemoryReactor", "PeerAgent", "RecordingOutbox", "Published", "World", "CUCKOO", "CRITS"]

CUCKOO = "http://cuckoo.test:8090"
CRITS = "http://crits.test:8080"


class _InlinePool:
    """
    A thread pool whose "threads" run the work at once, in the caller.
    """

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], f: Callable, *args: Any, **kwargs: Any) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class MemoryReactor(Clock):
    """
    A L{Clock} with C{getThreadPool} and C{callFromThread}, whose work runs
    inline: C{deferToThreadPool} on it returns a fired Deferred.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pool = _InlinePool()

    def getThreadPool(self) -> _InlinePool:
        return self._pool

    def callInThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def callFromThread(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class _Trampoline:
    """
    Schedules a cooperator's ticks to run as soon as the current one (or
    the current request) returns, never inside one another.
    """

    def __init__(self) -> None:
        self._ticks: list[Callable[[], None]] = []
        self._draining = False

    def schedule(self, tick: Callable[[], None]) -> "_Tick":
        self._ticks.append(tick)
        return _Tick(self._ticks, tick)

    def drain(self) -> None:
        """
        Run every scheduled tick, and those they schedule; a call made from
        inside a tick leaves them to the outer one.
        """
        if self._draining:
            return
        self._draining = True
        try:
            while self._ticks:
                self._ticks.pop(0)()
        finally:
            self._draining = False


@attrs.frozen
class _Tick:
    ticks: list
    tick: Callable[[], None]

    def cancel(self) -> None:
        if self.tick in self.ticks:
            self.ticks.remove(self.tick)


@implementer(IBodyProducer)
class _Bytes:
    """
    A request body that is already in memory.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class _Collect:
    """
    A consumer that keeps what a body producer writes.
    """

    def __init__(self) -> None:
        self.out = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@attrs.frozen
class Sent:
    """
    One request a L{PeerAgent} was asked to make.
    """

    method: str
    url: str
    body: bytes

    @property
    def path(self) -> str:
        return "/" + self.url.split("/", 3)[3].split("?", 1)[0] if self.url.count("/") >= 3 else "/"


@implementer(IAgent)
class PeerAgent:
    """
    Serves each of C{peers} (base URL -> resource) in memory.

    treq's body producers (form data, multipart uploads) run on the global
    cooperator, which the global reactor drives: patch
    C{twisted.internet.task.cooperate} with C{self.cooperator.cooperate}
    (L{World} does) and they run to completion before the request is made.

    @ivar sent: every request, in order, refused ones included.
    @ivar refuse: a predicate on a L{Sent}; a request it holds for fails
        as a refused connection (the peer is down), before anything is sent.
    """

    def __init__(self, peers: Mapping[str, Any]) -> None:
        self._trampoline = _Trampoline()
        self.cooperator = Cooperator(scheduler=self._trampoline.schedule)
        self._agents = {base.encode("ascii"): RequestTraversalAgent(resource) for base, resource in peers.items()}
        self.sent: list[Sent] = []
        self.refuse: Callable[[Sent], bool] = lambda sent: False

    def serve(self, base: str, resource: Any) -> None:
        """
        Serve C{base} from C{resource} from now on, e.g. a treq.testing
        C{StringStubbingResource} answering what no simulator would.
        """
        self._agents[base.encode("ascii")] = RequestTraversalAgent(resource)

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Deferred:
        base = b"/".join(uri.split(b"/", 3)[:3])
        agent = self._agents.get(base)
        if agent is None:
            return fail(ConnectionRefusedError(f"no peer at {base!r}"))
        collected = _Collect()
        produced = bodyProducer.startProducing(collected) if bodyProducer is not None else succeed(None)
        self._trampoline.drain()

        def send(_: object) -> Deferred:
            body = collected.out.getvalue()
            sent = Sent(method.decode("ascii"), uri.decode("ascii"), body)
            self.sent.append(sent)
            if self.refuse(sent):
                raise ConnectionRefusedError(f"{base.decode()} is down")
            return agent.request(method, uri, headers, _Bytes(body) if bodyProducer is not None else None)

        return produced.addCallback(send)

    def paths(self, method: str | None = None) -> list[str]:
        """
        The paths requested so far, optionally of one method only.
        """
        return [s.path for s in self.sent if method is None or s.method == method]


@attrs.frozen
class Published:
    """
    One message a stage published: C{delay} is C{None} for
    C{publish}, the seconds for C{publish_later}.
    """

    queue: str
    body: bytes
    delay: float | None = None
    priority: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingOutbox:
    """
    An L{Outbox} that records what would be published (and confirmed).

    @ivar refuse: queue -> the exception publishing there raises (the broker
        nacked, the channel closed, a bug in the publish path).
    """

    def __init__(self, refuse: Mapping[str, BaseException] | None = None) -> None:
        self.published: list[Published] = []
        self.refuse = dict(refuse or {})

    async def publish(self, queue: str, body: bytes, priority: int | None = None) -> None:
        self._check(queue)
        self.published.append(Published(queue, body, priority=priority))

    async def publish_later(self, queue: str, body: bytes, delay: float, priority: int | None = None) -> None:
        self._check(queue)
        self.published.append(Published(queue, body, delay, priority))

    def _check(self, queue: str) -> None:
        if queue in self.refuse:
            raise self.refuse[queue]

    def to(self, queue: str) -> list[Published]:
        return [p for p in self.published if p.queue == queue]


def config_doc(stage: Mapping[str, Any], **top: Any) -> dict:
    """
    A configuration with one Cuckoo (C{sim}, at L{CUCKOO}), the CRITs at
    L{CRITS}, and the one C{stage}.
    """
    doc = {
        "http_timeout": 30,
        "crits": {"url": CRITS, "username": "analyst", "api_key": DEFAULT_API_KEY, "allowed_urls": ["http://crits-b.test"]},
        "cuckoo": {"sim": {"url": CUCKOO}},
        "stages": [dict(stage)],
    }
    doc.update(top)
    return doc


class World:
    """
    One stage built as C{tap.build_daemon} builds it, over the simulators in
    memory; its consumer is never started.

    @param stage_cls: the stage class, e.g. L{CheckResults}.
    @param stage: the stage's configuration mapping.
    @param cuckoo: options for the L{CuckooSimulator}.
    """

    def __init__(self, testcase: Any, stage_cls: type[Stage], stage: Mapping[str, Any], cuckoo: Mapping[str, Any] | None = None, **top: Any) -> None:
        self.clock = MemoryReactor()
        self.clock.advance(1_700_000_000)
        self.cuckoo = CuckooSimulator(self.clock, **(cuckoo or {}))
        self.crits = CritsSimulator(self.clock)
        self.agent = PeerAgent({CUCKOO: self.cuckoo.resource, CRITS: self.crits.resource})
        testcase.patch(twisted.internet.task, "cooperate", self.agent.cooperator.cooperate)
        self.http = HTTPClient(self.clock, 30, agent=self.agent)
        self.config = parse_config(config_doc(stage, **top))
        self.context = StageContext(reactor=self.clock, connection=None, http=self.http, config=self.config, stage_types=STAGES)
        self.stage = stage_cls(self.context, self.config.stages[0])
        self.outbox = RecordingOutbox()
        testcase.addCleanup(lambda: testcase.assertEqual(self.clock.getDelayedCalls(), []))

    def deliver(self, body: bytes, outbox: RecordingOutbox | None = None, handler: Callable | None = None) -> Deferred:
        """
        Hand C{body} to the stage as the consumer would.

        @return: fires when the delivery would be acked; fails when it
            would stay unacked.
        """
        delivery = Delivery(body=body, routing_key=self.stage.stage_config.consumer_queue, delivery_tag=1, redelivered=False)
        handler = handler or self.stage._on_delivery
        return Deferred.fromCoroutine(handler(delivery, outbox if outbox is not None else self.outbox))

    def submit(self, data: bytes = b"MZ sample", **fields: str) -> int:
        """
        Create a Cuckoo task in the simulator, as an upload would.
        """
        from cuckoodist.cuckoo import CuckooClient

        d = Deferred.fromCoroutine(CuckooClient(self.http, CUCKOO).submit("sample.exe", data, fields))
        results: list = []
        d.addBoth(results.append)
        (task_id,) = results
        if isinstance(task_id, Failure):
            task_id.raiseException()
        self.agent.sent.clear()
        return task_id

    def task_message(self, task_id: int, **changes: Any) -> TaskMessage:
        """
        A task message for task C{task_id} on the simulated Cuckoo.
        """
        crits = CritsData(analysis_id="analysis-1", object_type="Sample", object_id="0123456789abcdef01234567",
                          md5="d41d8cd98f00b204e9800998ecf8427e", source="cuckoodist-test")
        return attrs.evolve(TaskMessage(task_id=task_id, cuckoo_url=CUCKOO, crits=crits, submitted_at=self.clock.seconds()), **changes)

    def analysis(self, analysis_id: str = "analysis-1") -> dict | None:
        """
        The CRITs simulator's view of one analysis.
        """
        return self.crits.state()["analyses"].get(analysis_id)


class Steps:
    """
    A step that fails with the given errors, then answers C{"done"}.
    """

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"
