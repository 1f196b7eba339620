"""
Stage plumbing that the end-to-end tests do not reach: where credentials
may be sent.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.config import parse_config
from cuckoodist.errors import InvalidMessage
from cuckoodist.http import HTTPClient
from cuckoodist.messages import CritsData
from cuckoodist.stages.base import StageContext
from cuckoodist.stages.overseer import Overseer


def stage(crits=True):
    doc = {"stages": [{"type": "overseer", "dump_dir": "/nonexistent"}],
           "cuckoo": {"main": {"url": "https://cuckoo.example:8090", "token": "TOKEN"}}}
    if crits:
        doc["crits"] = {"url": "https://crits.example", "username": "svc", "api_key": "CONFIGURED-KEY"}
    config = parse_config(doc)
    clock = Clock()
    return Overseer(StageContext(reactor=clock, connection=None, http=HTTPClient(clock, 10), config=config), config.stages[0])


def crits(**changes):
    base = dict(analysis_id="a", object_type="Sample", object_id="o")
    base.update(changes)
    return CritsData(**base)


class CredentialTests(SynchronousTestCase):
    def test_configured_crits(self) -> None:
        """
        A message without crits_url or credentials uses the configured CRITs.
        """
        client = stage().crits_client(crits())
        self.assertEqual(client._url, "https://crits.example")
        self.assertEqual(client._headers["Authorization"], "ApiKey svc:CONFIGURED-KEY")

    def test_message_credentials_win(self) -> None:
        """
        Credentials carried by the message are used for its CRITs.
        """
        client = stage().crits_client(crits(crits_url="https://other.example", username="u", api_key="k"))
        self.assertEqual((client._url, client._headers["Authorization"]), ("https://other.example", "ApiKey u:k"))

    def test_configured_key_stays_home(self) -> None:
        """
        The configured API key is never sent to a CRITs URL named by a
        message; such a message without its own credentials is refused.
        """
        self.assertRaises(InvalidMessage, stage().crits_client, crits(crits_url="https://evil.example"))
        self.assertRaises(InvalidMessage, stage(crits=False).crits_client, crits())

    def test_cuckoo_token_only_to_its_instance(self) -> None:
        """
        A Cuckoo token goes only to the configured instance's URL.
        """
        s = stage()
        self.assertEqual(s.cuckoo_client("https://cuckoo.example:8090/")._headers, {"Authorization": "Bearer TOKEN"})
        self.assertEqual(s.cuckoo_client("https://elsewhere.example:8090")._headers, {})
        self.assertNotIn("TOKEN", repr(s.cuckoo_client("https://cuckoo.example:8090")))
