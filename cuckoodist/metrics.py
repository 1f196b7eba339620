# -*- test-case-name: tests.test_metrics -*-
"""
The daemon's Prometheus metrics: one L{Metrics} per daemon, holding its
own L{CollectorRegistry}.

Not prometheus_client's global registry: two daemons (or two tests) in one
process must never count into each other, and a test must be able to read
exactly what its daemon did.  The listener (L{cuckoodist.ops_server})
serves this registry.

Labels are bounded by the configuration, never by the traffic: a stage's
type and queue, a Cuckoo's configured name, a peer kind, a status class.
No analysis id, task id or URL with an id in it ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "STAGE_LABELS", "status_class"]

#: Every per-stage metric is labelled by the stage's type (C{feed_cuckoo},
#: ...) and its consumer queue, which tells chained instances apart.
STAGE_LABELS = ("stage", "queue")

#: Seconds, for calls to a peer: from a fast local API to a slow upload.
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Seconds, for an analysis or a whole sample: minutes to hours.
_LONG_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
#: Bytes, for reports: a few kilobytes to hundreds of megabytes.
_SIZE_BUCKETS = tuple(float(1 << n) for n in range(10, 32, 2))


def status_class(code: int | None) -> str:
    """
    The C{code} label of an HTTP answer: C{2xx} .. C{5xx}, or C{error} when
    no answer came (refused, timed out, reset).
    """
    if code is None or not 100 <= code <= 599:
        return "error"
    return f"{code // 100}xx"


class Metrics:
    """
    Every metric a daemon exports.

    @ivar registry: what C{/metrics} serves.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, labels: tuple[str, ...] = STAGE_LABELS) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        # Per stage.
        self.received = counter("cuckoodist_messages_received_total", "Messages delivered to a stage.")
        self.succeeded = counter("cuckoodist_messages_succeeded_total", "Messages a stage finished and acked.")
        self.failed = counter(
            "cuckoodist_messages_failed_total",
            "Messages a stage handed to the overseer, by kind (transient or permanent).",
            STAGE_LABELS + ("kind",),
        )
        self.retried = counter(
            "cuckoodist_messages_retried_total", "Failed messages the overseer sent back to the stage that failed them."
        )
        self.dumped = counter(
            "cuckoodist_messages_dumped_total", "Failed messages the overseer wrote to the dump directory, by failed stage."
        )
        self.in_flight = Gauge(
            "cuckoodist_messages_in_flight", "Messages a stage holds unacked right now.", STAGE_LABELS, registry=registry
        )
        self.consuming = Gauge(
            "cuckoodist_stage_consuming",
            "Consumers of a stage's queue registered with the broker (0 while paused or down).",
            STAGE_LABELS,
            registry=registry,
        )

        # Timings and sizes.
        self.upload_seconds = histogram(
            "cuckoodist_cuckoo_upload_seconds", "Time to upload a sample to Cuckoo.", _CALL_BUCKETS, ("cuckoo",)
        )
        self.analysis_seconds = histogram(
            "cuckoodist_analysis_seconds", "Wall time from upload to Cuckoo to its report being seen.", _LONG_BUCKETS, ("cuckoo",)
        )
        self.report_fetch_seconds = histogram(
            "cuckoodist_report_fetch_seconds", "Time to download a Cuckoo report.", _CALL_BUCKETS, ("cuckoo",)
        )
        self.report_parse_seconds = histogram(
            "cuckoodist_report_parse_seconds", "Time to turn a Cuckoo report into CRITs results.", _CALL_BUCKETS
        )
        self.report_bytes = histogram("cuckoodist_report_bytes", "Size of the Cuckoo reports read.", _SIZE_BUCKETS)
        self.crits_submit_seconds = histogram(
            "cuckoodist_crits_submit_seconds",
            "Time to post one report's results (and the step's notes) to CRITs, retries included.",
            _CALL_BUCKETS,
        )
        self.end_to_end_seconds = histogram(
            "cuckoodist_end_to_end_seconds",
            "Time from the analysis request (its requested_at; else the upload to Cuckoo) to its CRITs analysis finished.",
            _LONG_BUCKETS,
        )

        # Peers.
        self.http_requests = counter(
            "cuckoodist_http_requests_total",
            "HTTP requests to a peer, by peer kind (cuckoo, crits), configured node and status class.",
            ("peer", "node", "code"),
        )

        # AMQP.
        self.amqp_connected = Gauge("cuckoodist_amqp_connected", "1 while the broker connection is up.", registry=registry)
        self.amqp_reconnects = Counter(
            "cuckoodist_amqp_reconnects_total", "Broker connections made after the first.", registry=registry
        )
        self.amqp_confirms_pending = Gauge(
            "cuckoodist_amqp_confirms_pending", "Publishes the broker has not confirmed yet.", registry=registry
        )
