# -*- test-case-name: tests.test_config,tests.test_tap -*-
"""
The stage types a daemon can run.

Each stage class owns its settings class (C{config_class}) and its name
(C{kind}, the settings' C{type}), so this list is the one place a stage
type is registered: the configuration reader and the composition root both
read it.  Adding a stage type is its module and one line here.
"""

from cuckoodist.stages.check_results import CheckResults
from cuckoodist.stages.feed_cuckoo import FeedCuckoo
from cuckoodist.stages.overseer import Overseer
from cuckoodist.stages.parse_and_submit import ParseAndSubmit

__all__ = ["STAGES"]

#: Stage classes by type name, in the order the example file lists them.
STAGES = {stage.kind: stage for stage in (FeedCuckoo, CheckResults, ParseAndSubmit, Overseer)}
