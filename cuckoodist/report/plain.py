# -*- test-case-name: tests.test_report -*-
"""
The reference extractor: the same rows as L{cuckoodist.report.extract}, from
a report already decoded into Python objects.

It is the readable statement of what the streaming extractor must produce,
and the tests hold the two to equality.  It needs the whole report in memory,
so production code uses the streaming one.
"""

from __future__ import annotations

from typing import Any, Mapping

from cuckoodist.report.rows import ExtractOptions, Extraction, RowCollector

__all__ = ["extract_results_plain"]


def extract_results_plain(doc: Mapping[str, Any], options: ExtractOptions) -> Extraction:
    """
    Extract CRITs rows from a decoded report.

    @param doc: the result of C{json.load} on a report.
    @param options: what to extract.
    @return: the rows, the detected format and the number of calls.
    """
    collector = RowCollector(options)
    if not isinstance(doc, dict):
        return collector.finish()
    for key in doc:
        collector.evidence.top_key(key)
    collector.set_info(doc.get("info"))

    signatures = doc.get("signatures")
    if isinstance(signatures, list):
        for signature in signatures:
            collector.add_signature(signature)

    behavior = doc.get("behavior")
    if isinstance(behavior, dict):
        processes = behavior.get("processes")
        if isinstance(processes, list):
            for process in processes:
                if not isinstance(process, dict):
                    continue
                calls = process.get("calls")
                dict_calls = ([call for call in calls if isinstance(call, dict)]
                              if isinstance(calls, list) else [])
                collector.add_process(process, dict_calls[:collector.call_room],
                                      len(dict_calls))
        summary = behavior.get("summary")
        if isinstance(summary, dict):
            for key, values in summary.items():
                collector.add_summary(key, values)

    network = doc.get("network")
    if isinstance(network, dict):
        for key, add in (("hosts", collector.add_host), ("domains", collector.add_domain),
                         ("http", collector.add_http)):
            entries = network.get(key)
            if isinstance(entries, list):
                for entry in entries:
                    add(entry)
    return collector.finish()
