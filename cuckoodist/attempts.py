# -*- test-case-name: tests.test_overseer -*-
"""
Counting a message's failures when the message itself cannot say.

Two places need such a count:

  - The overseer.  Our stages carry the count in the message (C{Retry},
    then C{Attempts} on the failed envelope).  The Go workers do not: their
    envelope has no count, and their check_results and parse_and_submit
    re-marshal the message from their own struct, which drops the C{Retry}
    field we added.  Counting from the envelope alone, an overseer would see
    every Go failure as the first and retry it forever.  So it also
    remembers, per message L{identity}, how many failures it has seen, and
    takes the larger of the two counts.
  - L{QueueConsumer}, which spaces out the requeues of a message its
    handler could not settle, longer each time the same body comes back.

The memory is bounded in size and age, and the overseer forgets a message
once it is dumped, so a resubmitted dump starts afresh.  It is per process:
with several overseers, or across a restart, a Go worker's message can get
a few more tries than C{max_retries}, never an endless number.
"""

import collections
import hashlib
import json
from typing import Any, Mapping

__all__ = ["AttemptMemory", "identity"]

#: Enough for every message in flight in a large fleet.
MAX_REMEMBERED = 100_000
#: A message not seen failing for a week is treated as new.
MAX_AGE = 7 * 86400.0

#: Fields our stages add or update along the way; the Go workers drop
#: them, so they are no part of a message's identity.
_VOLATILE = frozenset({"Retry", "SubmittedAt", "Deadline"})


def identity(queue: str, doc: Mapping[str, Any] | None, text: str) -> str:
    """
    A key naming one message on one queue, stable across the Go workers'
    re-marshalling.

    @param doc: the decoded message, or C{None} if it does not decode.
    @param text: the message as received, for messages that do not decode.
    """
    if doc is None:
        basis: Any = text
    else:
        crits = doc.get("crits_data", doc.get("CritsData"))
        analysis = crits.get("analysis_id") if isinstance(crits, dict) else None
        if isinstance(analysis, str) and analysis:
            basis = [analysis, doc.get("TaskId"), doc.get("CuckooURL")]
        else:
            basis = {k: v for k, v in doc.items() if k not in _VOLATILE}
    canonical = json.dumps([queue, basis], sort_keys=True, default=repr)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class AttemptMemory:
    """
    Failures seen per message identity, oldest forgotten first.

    @param clock: provides C{seconds()}.
    """

    def __init__(self, clock: Any, max_entries: int = MAX_REMEMBERED, max_age: float = MAX_AGE) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._max_age = max_age
        self._seen: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def failed(self, key: str, carried: int) -> int:
        """
        Record one more failure of the message C{key}.

        @param carried: the count the message itself carries, counting
            this failure (C{1} when it carries none).
        @return: the failure count to act on.
        """
        now = self._clock.seconds()
        remembered, when = self._seen.pop(key, (0, now))
        if now - when > self._max_age:
            remembered = 0
        count = max(carried, remembered + 1)
        self._seen[key] = (count, now)
        while len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)
        return count

    def forget(self, key: str) -> None:
        """
        The message is dealt with for good (dumped): a resubmitted copy
        starts with a clean count.
        """
        self._seen.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)
