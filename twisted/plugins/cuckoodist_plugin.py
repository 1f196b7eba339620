"""
The twistd plugin: C{twistd -n cuckoodist -c etc/cuckoodist.yaml}.

Kept to one declaration, so that twistd's plugin scan imports nothing
heavy; the daemon is built in L{cuckoodist.tap}.
"""

from twisted.application.service import ServiceMaker

cuckoodist = ServiceMaker(
    "cuckoodist",
    "cuckoodist.tap",
    "Run cuckoodist pipeline stages (feed_cuckoo, check_results, parse_and_submit, overseer).",
    "cuckoodist",
)
