# -*- test-case-name: tests.test_messages -*-
"""
The failure vocabulary shared by every stage.

A stage never decides on its own whether to retry: it raises one of these and
the consumer machinery routes the message.  L{TransientError} is worth trying
again (the peer may recover); L{PermanentError} is not (the input is bad or
the sandbox gave up), so retrying it would only delay the analyst's answer.
"""

__all__ = [
    "CuckoodistError",
    "TransientError",
    "PermanentError",
    "InvalidMessage",
    "ConfigError",
]


class CuckoodistError(Exception):
    """
    Base of every error this project raises on purpose.

    @ivar reason: a short human-readable reason, safe to log and to show in
        CRITs (it never contains credentials).
    @ivar resume: the message to retry instead of the one received, set by
        a stage that got part of the way and must not repeat that part (the
        CRITs API cannot deduplicate results); C{None} to retry the message
        as received.
    """

    resume: bytes | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(CuckoodistError):
    """
    A failure that may go away by itself: connection refused, a timeout, a
    5xx answer, a report that is still being written.
    """


class PermanentError(CuckoodistError):
    """
    A failure that retrying cannot fix: a 4xx on our input, an analysis that
    Cuckoo marked failed, a report over the size limit.
    """


class InvalidMessage(PermanentError):
    """
    A message that does not follow the wire contract.  It is dumped with this
    reason instead of being retried.
    """


class ConfigError(CuckoodistError):
    """
    A configuration problem, located by the path of keys that leads to it.

    @ivar path: the keys from the document root, e.g. C{("stages", 2, "cuckoo")}.
    """

    def __init__(self, reason: str, path: tuple = ()) -> None:
        super().__init__(reason)
        self.path = tuple(path)

    def __str__(self) -> str:
        if not self.path:
            return f"Error in configuration: {self.reason}"
        where = ".".join(str(p) for p in self.path)
        return f"Error in configuration at '{where}': {self.reason}"
