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
        doc["crits"] = {"url": "https://crits.example", "username": "svc", "api_key": "CONFIGURED-KEY",
                        "allowed_urls": ["https://other.example/crits"]}
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
        Credentials carried by the message are used for its CRITs, an
        allowed one, which is reached at its configured URL whatever case
        and trailing slash the message used.
        """
        client = stage().crits_client(crits(crits_url="HTTPS://OTHER.example:443/crits/", username="u", api_key="k"))
        self.assertEqual((client._url, client._headers["Authorization"]), ("https://other.example/crits", "ApiKey u:k"))

    def test_unlisted_crits_refused(self) -> None:
        """
        A message naming a CRITs that is neither configured nor allowed is
        refused before any request, even with credentials of its own; so is
        an allowed one spelt with a query, a fragment or another path.
        """
        for url in ("https://evil.example", "https://other.example/crits?x=/api", "https://other.example/crits#f",
                    "https://other.example/elsewhere", "http://other.example/crits", "https://u:p@other.example/crits",
                    "https://other.example:8443/crits", "gopher://other.example/crits", "not a url"):
            with self.assertRaises(InvalidMessage, msg=url) as caught:
                stage().crits_client(crits(crits_url=url, username="u", api_key="k"))
            self.assertIn("crits_url", caught.exception.reason)

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
        self.assertNotIn("TOKEN", repr(s.cuckoo_client("https://cuckoo.example:8090")))

    def test_unconfigured_cuckoo_refused(self) -> None:
        """
        A task naming any Cuckoo but a configured one is refused before any
        request: another host, port, scheme, or the right one with a path
        or query of its own.  The configured URL is what gets used.
        """
        s = stage()
        self.assertEqual(s.cuckoo_client("HTTPS://Cuckoo.Example:8090//").url, "https://cuckoo.example:8090")
        for url in ("https://elsewhere.example:8090", "https://cuckoo.example:8091", "http://cuckoo.example:8090",
                    "https://cuckoo.example:8090/secret", "https://cuckoo.example:8090/?x=/tasks/view/1",
                    "https://cuckoo.example:8090#x", "https://a:b@cuckoo.example:8090"):
            with self.assertRaises(InvalidMessage, msg=url) as caught:
                s.cuckoo_client(url)
            self.assertIn("not a Cuckoo in this configuration", caught.exception.reason)
