# -*- test-case-name: tests.test_amqp_names -*-
"""
What makes a string usable as a queue name.

AMQP 0-9-1 frames a queue name as a C{shortstr}: one length byte, then
that many bytes of UTF-8.  A longer name cannot be framed at all, and a
string that is not valid UTF-8 (a lone surrogate from a JSON escape) cannot
be encoded.  RabbitMQ reserves names starting with C{amq.}.  Queue names
reach us from configuration files, dump files and, in failed messages,
from other processes, so every one of them is checked here, before it
gets near the wire.
"""

__all__ = ["MAX_QUEUE_NAME_BYTES", "queue_name_problem"]

#: A C{shortstr} carries at most 255 bytes.
MAX_QUEUE_NAME_BYTES = 255


def queue_name_problem(name: object) -> str | None:
    """
    Say what is wrong with C{name} as a queue name, if anything.

    Control characters are refused too: the broker would take them, but
    they end up in log lines and in operators' terminals.

    @return: a reason (which never quotes the name), or C{None} when the
        name is usable.
    """
    if not isinstance(name, str):
        return "a queue name must be a string"
    if not name:
        return "a queue name cannot be empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "a queue name must be valid Unicode (it holds a lone surrogate)"
    if size > MAX_QUEUE_NAME_BYTES:
        return f"a queue name is at most {MAX_QUEUE_NAME_BYTES} bytes of UTF-8, this one is {size}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a queue name cannot contain control characters"
    if name.startswith("amq."):
        return "queue names starting with 'amq.' are reserved by the broker"
    return None
