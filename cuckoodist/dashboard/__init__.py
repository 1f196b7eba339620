# -*- test-case-name: tests.test_dashboard,tests.test_dashboard_history -*-
"""
The web dashboard the daemon serves on its operations listener: its
stages, the analyses in flight, recent failures, the dump directory (with
resubmission), an hour of throughput, latency and queue depths, and what
each Cuckoo node said of itself when last probed.

Everything here is read from what the daemon keeps anyway (its
L{cuckoodist.metrics.Metrics}, its L{cuckoodist.activity.Activity}, the
capacity gates' probes), so looking costs the pipeline nothing it would
not spend otherwise.  The page itself is three static files, with no
build step and nothing fetched from elsewhere.

This package's C{__init__} imports nothing: feed_cuckoo imports
L{cuckoodist.dashboard.nodes}, and the web parts must not be pulled in
with it.  L{cuckoodist.dashboard.install} puts it together.
"""
