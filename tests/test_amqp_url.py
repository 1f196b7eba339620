"""
The amqps:// settings in the RabbitMQ URI query: parsed, validated, and
refused with one-line reasons that never repeat the password.
"""

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.config import parse_amqp_url
from cuckoodist.errors import ConfigError


class AmqpsUrlTests(SynchronousTestCase):
    def setUp(self) -> None:
        fd, self.pem = tempfile.mkstemp(suffix=".pem")
        os.close(fd)
        self.addCleanup(os.remove, self.pem)

    def parse(self, query: str):
        return parse_amqp_url(f"amqps://u:hunter2@rabbit.example/?{query}", ("amqp",))

    def test_defaults_verify(self) -> None:
        """
        Without parameters, amqps verifies against the system store and the
        host name, with no client certificate.
        """
        amqp = parse_amqp_url("amqps://u:p@rabbit.example/", ("amqp",))
        self.assertEqual((amqp.verify, amqp.ca_file, amqp.cert_file, amqp.key_file, amqp.server_name),
                         (True, None, None, None, None))

    def test_all_parameters(self) -> None:
        """
        Every supported parameter lands in its field.
        """
        amqp = self.parse(f"cacertfile={self.pem}&certfile={self.pem}&keyfile={self.pem}"
                          "&verify=verify_none&server_name_indication=broker.internal&heartbeat=5")
        self.assertEqual((amqp.ca_file, amqp.cert_file, amqp.key_file), (self.pem,) * 3)
        self.assertFalse(amqp.verify)
        self.assertEqual((amqp.server_name, amqp.heartbeat), ("broker.internal", 5))

    def test_refused(self) -> None:
        """
        Bad values are refused in one line without the password.
        """
        for url, reason in [
            (f"amqp://u:hunter2@h/?cacertfile={self.pem}", "cacertfile needs an amqps:// URL"),
            ("amqps://u:hunter2@h/?verify=maybe", "verify must be verify_peer or verify_none"),
            ("amqps://u:hunter2@h/?cacertfile=/no/such/file", "cacertfile is not a readable file"),
            (f"amqps://u:hunter2@h/?certfile={self.pem}", "give both certfile and keyfile, or neither"),
            ("amqps://u:hunter2@h/?verify=verify_none&verify=verify_peer", "verify is given more than once"),
            ("amqps://u:hunter2@h/?server_name_indication=a%20b", "server_name_indication must be a host name"),
        ]:
            e = self.assertRaises(ConfigError, parse_amqp_url, url, ("amqp",))
            self.assertEqual(e.reason, reason)
            self.assertNotIn("hunter2", str(e))
            self.assertNotIn("\n", str(e))
