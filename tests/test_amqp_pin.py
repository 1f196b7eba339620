"""
The two txAMQP internals L{cuckoodist.amqp.protocol.AMQPClient} overrides.

txAMQP has no public hook for framing: its protocol packs and unpacks every
frame in the private methods C{_pack_frame} and C{_unpack_frame}, and our
client replaces both (RabbitMQ's full field-table grammar in, lengths
counted in bytes out).  A private method can change in any release, so the
dependency is pinned exactly, and these tests fail loudly, naming what to
check, the moment an upgrade moves either hook.
"""

import importlib.metadata
import inspect
import os
import re

from twisted.trial.unittest import SynchronousTestCase
from txamqp.protocol import AMQClient, FrameReceiver

from cuckoodist.amqp.protocol import AMQPClient

REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements.txt")


class TxAMQPHookTests(SynchronousTestCase):
    def test_exact_pin(self) -> None:
        """
        requirements.txt pins txAMQP to one release, and that release is
        the one installed.
        """
        with open(REQUIREMENTS, encoding="utf-8") as fp:
            pins = re.findall(r"^txAMQP==(\S+)\s*$", fp.read(), re.MULTILINE | re.IGNORECASE)
        self.assertEqual(len(pins), 1, "txAMQP must be pinned with == in requirements.txt")
        self.assertEqual(
            importlib.metadata.version("txAMQP"), pins[0],
            "the installed txAMQP is not the pinned one: re-check AMQPClient._pack_frame/_unpack_frame against it",
        )

    def test_hooks_still_called(self) -> None:
        """
        txAMQP still frames through the two methods we override: reading
        goes through C{_unpack_frame}, writing through C{_pack_frame}.
        """
        reading = inspect.getsource(FrameReceiver.dataReceived)
        writing = inspect.getsource(FrameReceiver.send_frame)
        self.assertIn("self._unpack_frame(", reading, "txAMQP no longer unpacks frames in _unpack_frame")
        self.assertIn("self._pack_frame(", writing, "txAMQP no longer packs frames in _pack_frame")
        for name in ("_pack_frame", "_unpack_frame"):
            ours = inspect.signature(getattr(AMQPClient, name))
            theirs = inspect.signature(getattr(AMQClient, name))
            self.assertEqual(list(ours.parameters), list(theirs.parameters), f"txAMQP changed {name}'s signature")
            self.assertIsNot(getattr(AMQPClient, name), getattr(AMQClient, name), f"{name} is no longer overridden")
