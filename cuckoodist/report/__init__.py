# -*- test-case-name: tests.test_report -*-
"""
Cuckoo report.json -> CRITs result rows.

L{extract_results} streams a report file of any size in flat memory;
L{extract_results_plain} does the same from a decoded document and is the
reference the tests hold the streaming one to.
"""

from cuckoodist.report.extract import extract_results
from cuckoodist.report.plain import extract_results_plain
from cuckoodist.report.rows import PARSERS, ExtractOptions, Extraction

__all__ = ["PARSERS", "ExtractOptions", "Extraction", "extract_results",
           "extract_results_plain"]
