# -*- test-case-name: tests.test_dashboard -*-
"""
The document behind the dashboard's page, C{/dashboard/api/state}.

It is built on each poll from what the daemon keeps anyway: the stages'
counters and gauges (L{cuckoodist.metrics.Metrics}), their consumers,
the deliveries in flight and recent failures
(L{cuckoodist.activity.Activity}), the history's rates, the queue
sampler's last depths, the node board and the dump listing.  Its cost is
O(stages + nodes + deliveries in hand + the rows it shows): the
in-flight list is cut to the L{IN_FLIGHT_SHOWN} oldest analyses (those
in a stage's hands, L{cuckoodist.activity.Activity}, and those waiting
between stages, L{cuckoodist.analyses.AnalysisBoard}), the dump
to L{cuckoodist.dashboard.dumps.SHOWN} entries, and every text it quotes
to L{_REASON_CHARS}.  The dump directory is listed (names only) on each
poll; a file is read once, the first time it is shown.

It never holds a secret.  It names no URL, no credential and no message
body; and since a failure's reason quotes peers and exceptions, every
configured secret (CRITs key, Cuckoo tokens, AMQP passwords, the
dashboard token) is masked in the texts it quotes, should one ever slip
into an error message.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred

from cuckoodist.analyses import UNSEEN_STALL, analysis_board

__all__ = ["DashboardState", "IN_FLIGHT_SHOWN", "stall_after", "secrets_of", "masker"]

#: Deliveries in flight the page lists, the oldest first.
IN_FLIGHT_SHOWN = 200
#: The longest text (a failure's reason) the page shows.
_REASON_CHARS = 500
#: Seconds added to every stall threshold, for the work between requests.
_MARGIN = 60.0


def stall_after(kind: str, http_timeout: float) -> float:
    """
    Seconds after which a delivery still in a stage's hands is stalled
    (an analysis waiting between stages is stalled when no stage has seen
    it for L{UNSEEN_STALL}).

    No stage holds a delivery for the length of an analysis: check_results
    waits through delay queues, not with a delivery in hand.  What a
    delivery waits for is HTTP calls, each bounded by C{http_timeout}, so
    the thresholds are counted in those: two for feed_cuckoo (a fetch
    from CRITs, an upload), check_results (a list or a view) and the
    overseer (telling CRITs), five for parse_and_submit (report, dropped
    files, several result posts, the finish and the clean-up), plus a
    margin.  With the default C{http_timeout} of 120 s: 300 s, and 660 s
    for parse_and_submit.
    """
    calls = 5 if kind == "parse_and_submit" else 2
    return calls * http_timeout + _MARGIN


def secrets_of(config: Any, token: str = "") -> list[str]:
    """
    Every secret a configuration holds: what the page must never show.
    """
    found = [token]
    if getattr(config, "crits", None) is not None:
        found.append(config.crits.api_key)
    found.extend(cuckoo.token for cuckoo in getattr(config, "cuckoo", {}).values())
    found.extend(node.password for node in getattr(config, "amqp_nodes", ()))
    # Longest first, so that a secret containing another is masked whole.
    return sorted({s for s in found if s and len(s) >= 4}, key=len, reverse=True)


def masker(secrets: Sequence[str]) -> Callable[[str], str]:
    """
    A function that clips a text to L{_REASON_CHARS} and masks each of
    C{secrets} in it.
    """

    def mask(text: str) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS] + "..."

    return mask


def _gauge_by_queue(gauge: Any) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in gauge.collect():
        for sample in family.samples:
            queue = sample.labels.get("queue", "")
            values[queue] = values.get(queue, 0.0) + sample.value
    return values


def consuming_state(consumer: Any) -> str:
    """
    C{consuming}, C{paused} (its stage stopped it, as feed_cuckoo does
    while Cuckoo is full) or C{stopped} (no channel: the broker is away,
    or the queue refused the consumer).
    """
    if not getattr(consumer, "consuming", False):
        return "stopped"
    if getattr(consumer, "paused", False):
        return "paused"
    return "consuming"


class DashboardState:
    """
    Builds the state document of one daemon.

    @param context: the daemon's L{cuckoodist.stages.base.StageContext}.
    @param stages: the daemon's L{cuckoodist.stages.base.Stage}s.
    @param history: its L{cuckoodist.dashboard.history.History}.
    @param sampler: its L{cuckoodist.dashboard.queues.QueueSampler}.
    @param nodes: its L{cuckoodist.dashboard.nodes.NodeBoard}.
    @param dumps: its L{cuckoodist.dashboard.dumps.DumpListing}.
    @param resubmit_enabled: whether a dashboard token is configured.
    """

    def __init__(
        self,
        context: Any,
        stages: Iterable[Any],
        history: Any,
        sampler: Any,
        nodes: Any,
        dumps: Any,
        resubmit_enabled: bool,
        secrets: Sequence[str] = (),
        in_flight_shown: int = IN_FLIGHT_SHOWN,
    ) -> None:
        self._context = context
        self._stages = list(stages)
        self._history = history
        self._sampler = sampler
        self._nodes = nodes
        self._dumps = dumps
        self._resubmit_enabled = resubmit_enabled
        self._mask = masker(secrets)
        self._shown = in_flight_shown
        http_timeout = context.config.http_timeout
        self._stall_after = {stage.stage_config.consumer_queue: stall_after(stage.kind, http_timeout) for stage in self._stages}
        self._default_stall = stall_after("", http_timeout)
        self._board = analysis_board(context)

    def current(self) -> Deferred:
        """
        The state, as C{/dashboard/api/state} answers it, once the dump
        files not read yet are (in the thread pool).
        """

        async def build() -> dict[str, Any]:
            await self._dumps.read_new(self._context.reactor)
            return self.document()

        return Deferred.fromCoroutine(build())

    def document(self) -> dict[str, Any]:
        """
        The state from what is known now; L{current} reads new dump files
        first.
        """
        now = self._context.reactor.seconds()
        activity = self._context.activity
        in_flight, in_flight_total = self._in_flight(now)
        dump_count, dump_entries = self._dumps.snapshot()
        return {
            "stages": self._stage_rows(),
            "in_flight": in_flight,
            "in_flight_total": in_flight_total,
            "failures": [
                {
                    "at": failure.at,
                    "stage": failure.stage,
                    "queue": failure.queue,
                    "analysis_id": failure.analysis_id,
                    "task_id": failure.task_id,
                    "reason": self._mask(failure.reason),
                    "final": failure.final,
                }
                for failure in activity.recent_failures()
            ],
            "dump": {
                "count": dump_count,
                "entries": [{**entry, "reason": self._mask(entry["reason"])} for entry in dump_entries],
            },
            "nodes": self._nodes.rows(self._context.config.cuckoo),
            "resubmit_enabled": self._resubmit_enabled,
            "now": now,
        }

    def _stage_rows(self) -> list[dict[str, Any]]:
        in_flight = _gauge_by_queue(self._context.metrics.in_flight)
        depths = self._sampler.latest if self._sampler is not None else {}
        rows = []
        for stage in self._stages:
            queue = stage.stage_config.consumer_queue
            depth = depths.get(queue)
            processed, failed = self._history.rates(queue)
            rows.append({
                "stage": stage.kind,
                "queue": queue,
                "depth": depth.messages if depth is not None else None,
                "consumers": depth.consumers if depth is not None else None,
                "in_flight": int(in_flight.get(queue, 0)),
                "processed_rate": processed,
                "failed_rate": failed,
                "consuming": consuming_state(stage.consumer),
            })
        return rows

    def _in_flight(self, now: float) -> tuple[list[dict[str, Any]], int]:
        """
        The analyses in flight, oldest first, at most C{in_flight_shown}:
        those a stage holds now (L{Activity}) and those waiting between
        stages (L{AnalysisBoard}), one row per analysis; and how many
        there are in all.  A delivery not yet named (its body not decoded
        yet) has no row.
        """
        board = self._board
        in_hand = {sample.analysis_id: sample for sample in self._context.activity.in_flight() if sample.analysis_id}
        candidates: dict[str, tuple[float, dict[str, Any]]] = {}
        for seen in board.oldest(self._shown):
            sample = in_hand.get(seen.analysis_id)
            if sample is None:
                candidates[seen.analysis_id] = (seen.first_seen, {
                    "analysis_id": seen.analysis_id,
                    "sample_name": seen.sample_name,
                    "cuckoo": seen.cuckoo,
                    "task_id": seen.task_id,
                    "stage": seen.stage,
                    "age": max(0.0, now - seen.first_seen),
                    "stalled": now - seen.last_seen > UNSEEN_STALL,
                })
        for analysis_id, sample in in_hand.items():
            seen = board.get(analysis_id)
            first = min(seen.first_seen, sample.started) if seen is not None else sample.started
            candidates[analysis_id] = (first, {
                "analysis_id": analysis_id,
                "sample_name": sample.sample_name or (seen.sample_name if seen else ""),
                "cuckoo": sample.cuckoo or (seen.cuckoo if seen else ""),
                "task_id": sample.task_id if sample.task_id is not None else (seen.task_id if seen else None),
                "stage": sample.stage,
                "age": max(0.0, now - first),
                "stalled": now - sample.started > self._stall_after.get(sample.queue, self._default_stall),
            })
        ordered = sorted(candidates.values(), key=lambda candidate: candidate[0])[: self._shown]
        total = len(board) + sum(1 for analysis_id in in_hand if board.get(analysis_id) is None)
        return [row for _, row in ordered], total
