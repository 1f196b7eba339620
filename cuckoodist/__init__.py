"""
cuckoodist: a fault-tolerant AMQP pipeline between CRITs and Cuckoo sandboxes.

See C{docs/architecture.md} for how a message flows through the stages and
which module owns what.
"""

__version__ = "0.1.0"
