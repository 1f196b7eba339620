# -*- test-case-name: tests.test_sim_crits -*-
"""
Tests for L{cuckoodist.simulators.crits}.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlencode

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cuckoodist.simulators.crits import DEFAULT_API_KEY, CritsSimulator
from cuckoodist.simulators.server import SimulatorServer
from tests.test_sim_cuckoo import Client, multipart_body

KEY = "k3y-for-tests"
AUTH = {"Authorization": f"ApiKey analyst:{KEY}"}
FORM = "application/x-www-form-urlencoded"
CANNED_500 = {"error_message": "Sorry, this request could not be processed. Please try again later."}
SERVICES = "/api/v1/services/"


class CritsTestCase(SynchronousTestCase):
    """
    A simulator on a L{Clock} and a client for it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1574853981)
        self.sim = CritsSimulator(self.clock, users={"analyst": KEY})
        self.client = Client(self, self.sim.resource)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def state(self) -> dict[str, Any]:
        return self.client.json("GET", "/_sim/state")[1]

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None,
                  ctype: str = FORM) -> tuple[int, bytes]:
        code, _, body = self.client.request(
            "POST", path, body=urlencode(fields).encode(),
            headers={"Content-Type": ctype, **(AUTH if headers is None else headers)})
        return code, body

    def service(self, **fields: str) -> tuple[int, Any]:
        base = {"object_type": "Sample", "object_id": "5dde0000000000000000aaaa",
                "analysis_id": "a-1"}
        base.update(fields)
        code, body = self.post_form(SERVICES, base)
        return code, (json.loads(body) if body else None)

    def upload(self, content: bytes = b"dropped file", headers: dict[str, str] | None = None,
               **fields: str) -> tuple[int, Any]:
        fields = {"upload_type": "file", "source": "cuckoo", "file_format": "raw", **fields}
        body, ctype = multipart_body(fields, {"filedata": ("drop.bin", content)})
        code, _, answer = self.client.request(
            "POST", "/api/v1/samples/", body=body,
            headers={"Content-Type": ctype, **(AUTH if headers is None else headers)})
        return code, (json.loads(answer) if answer else None)

    def patch(self, sample_id: str, fields: dict[str, str], json_body: bool = False,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if json_body:
            body, ctype = json.dumps(fields).encode(), "application/json"
        else:
            body, ctype = urlencode(fields).encode(), FORM
        code, _, answer = self.client.request(
            "PATCH", f"/api/v1/samples/{sample_id}/", body=body,
            headers={"Content-Type": ctype, **(AUTH if headers is None else headers)})
        return code, (json.loads(answer) if answer else None)


class AuthTests(CritsTestCase):
    """
    tastypie API key authentication.
    """

    def test_header(self) -> None:
        """
        The C{ApiKey} scheme is matched in any case.
        """
        for scheme in ("ApiKey", "apikey", "APIKEY"):
            code, body = self.post_form(SERVICES, {"a": "b"},
                                        headers={"Authorization": f"{scheme} analyst:{KEY}"})
            self.assertEqual(code, 200, scheme)

    def test_failures(self) -> None:
        """
        A wrong key, an unknown user, no credentials or a header without a
        colon are a 401 with an empty body.
        """
        for headers in ({"Authorization": "ApiKey analyst:wrong"},
                        {"Authorization": f"ApiKey nobody:{KEY}"},
                        {"Authorization": f"ApiKey analyst{KEY}"}, {}):
            code, body = self.post_form(SERVICES, {"a": "b"}, headers=headers)
            self.assertEqual((code, body), (401, b""), headers)

    def test_query_and_form(self) -> None:
        """
        Without a header, credentials are read from the query string or a
        POSTed form.
        """
        code, _ = self.post_form(SERVICES + f"?username=analyst&api_key={KEY}", {}, headers={})
        self.assertEqual(code, 200)
        code, _ = self.post_form(SERVICES, {"username": "analyst", "api_key": KEY}, headers={})
        self.assertEqual(code, 200)

    def test_patch_body_credentials(self) -> None:
        """
        A PATCH cannot authenticate with credentials in its body.
        """
        sample_id = self.upload()[1]["id"]
        code, body = self.patch(sample_id, {"username": "analyst", "api_key": KEY,
                                            "action": "forge_relationship"}, headers={})
        self.assertEqual((code, body), (401, None))

    def test_key_not_in_repr(self) -> None:
        """
        API keys never show in the simulator's repr.
        """
        self.assertNotIn(KEY, repr(self.sim))
        self.assertNotIn(DEFAULT_API_KEY, repr(CritsSimulator(self.clock)))


class ContentTypeTests(CritsTestCase):
    """
    C{CRITsAPIResource.deserialize}.
    """

    def test_charset_suffix(self) -> None:
        """
        C{application/x-www-form-urlencoded; charset=utf-8} is a 415.
        """
        code, _ = self.post_form(SERVICES, {"object_type": "Sample"},
                                 ctype=FORM + "; charset=utf-8")
        self.assertEqual(code, 415)

    def test_other_types(self) -> None:
        """
        text/plain is a 415; JSON and multipart are accepted.
        """
        self.assertEqual(self.post_form(SERVICES, {}, ctype="text/plain")[0], 415)
        fields = {"object_type": "Sample", "object_id": "x", "analysis_id": "a-9"}
        code, _, body = self.client.request(
            "POST", SERVICES, body=json.dumps({**fields, "finish": True}).encode(),
            headers={"Content-Type": "application/json", **AUTH})
        self.assertEqual(json.loads(body)["return_code"], 0)
        body, ctype = multipart_body(fields, {})
        code, _, answer = self.client.request("POST", SERVICES, body=body,
                                              headers={"Content-Type": ctype, **AUTH})
        self.assertEqual(json.loads(answer)["return_code"], 0)
        self.assertEqual(self.state()["analyses"]["a-9"]["status"], "completed")


class ServicesTests(CritsTestCase):
    """
    C{POST /api/v1/services/}.
    """

    def test_required(self) -> None:
        """
        Missing ids are a C{return_code} 1 answer with HTTP 200.
        """
        code, body = self.post_form(SERVICES, {"object_type": "Sample", "object_id": "x"})
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {
            "return_code": 1, "type": "Sample",
            "message": "Need an object type, object id, and analysis id."})

    def test_result_needs_type(self) -> None:
        """
        A result without type or subtype is refused.
        """
        code, body = self.service(result="r", result_subtype="info")
        self.assertEqual(body["message"], "When adding a result, also need type and subtype")

    def test_single_result(self) -> None:
        """
        A single result is stored as C{{subtype, result, **literal}} and the
        answer carries the object's URL; the analysis and its Sample are
        created on first touch, unfinished.
        """
        code, body = self.service(result="cuckoo1", result_subtype="info",
                                  result_type="{'started': 1.5, 'ok': True, 'n': None}")
        self.assertEqual((code, body), (200, {
            "return_code": 0, "type": "Sample", "message": "",
            "id": "5dde0000000000000000aaaa", "url": "/api/v1/samples/5dde0000000000000000aaaa/"}))
        analysis = self.state()["analyses"]["a-1"]
        self.assertEqual(analysis["results"], [
            {"subtype": "info", "result": "cuckoo1", "started": 1.5, "ok": True, "n": None}])
        self.assertEqual((analysis["status"], analysis["finish_date"]), ("started", None))
        self.assertIn("5dde0000000000000000aaaa", self.state()["samples"])

    def test_literal_eval_rejections(self) -> None:
        """
        JSON literals, bare strings, non-dicts and broken syntax in
        C{result_type} are tastypie's canned 500, and nothing is stored.
        """
        for literal in ('{"a": true}', '{"a": null}', "info", "[1, 2]", "{'a': ", "{1: 2}"):
            code, body = self.service(result="r", result_subtype="s", result_type=literal)
            self.assertEqual((code, body), (500, CANNED_500), literal)
        self.assertEqual(self.state()["analyses"], {})

    def test_batch(self) -> None:
        """
        C{result_is_batch=0} is a non-empty string and so true: the lists
        are JSON-decoded and each type literal merged.
        """
        code, body = self.service(result_is_batch="0", result=json.dumps(["a", {"k": 1}]),
                                  result_type=json.dumps(["{}", "{'md5': 'x'}"]),
                                  result_subtype=json.dumps(["file", "file"]))
        self.assertEqual(body["return_code"], 0)
        self.assertEqual(self.state()["analyses"]["a-1"]["results"], [
            {"subtype": "file", "result": "a"},
            {"subtype": "file", "result": {"k": 1}, "md5": "x"}])

    def test_batch_errors(self) -> None:
        """
        Unequal lengths are a C{return_code} 1; bad JSON or a list of
        objects instead of literal strings are a 500.
        """
        code, body = self.service(result_is_batch="1", result='["a", "b"]',
                                  result_type='["{}"]', result_subtype='["x", "y"]')
        self.assertEqual(code, 200)
        self.assertEqual(body["message"], "When adding results in batch result, result_type, "
                                          "and result_subtype must have the same length!")
        self.assertEqual(self.service(result_is_batch="1", result="[", result_type="[]",
                                      result_subtype="[]"), (500, CANNED_500))
        self.assertEqual(self.service(result_is_batch="1", result='["a"]',
                                      result_type='[{"md5": "x"}]', result_subtype='["f"]'),
                         (500, CANNED_500))

    def test_log_and_finish(self) -> None:
        """
        A log message is appended; C{finish} with C{status=error} ends the
        analysis in error, any other status as completed.
        """
        self.service(log_message="hello", log_level="warning")
        log = self.state()["analyses"]["a-1"]["log"]
        self.assertEqual([(e["message"], e["level"]) for e in log], [("hello", "warning")])
        self.assertEqual(log[0]["datetime"], "2019-11-27 11:26:21")
        self.service(finish="1", status="error")
        analysis = self.state()["analyses"]["a-1"]
        self.assertEqual(analysis["status"], "error")
        self.assertIsNotNone(analysis["finish_date"])
        self.service(analysis_id="a-2", finish="0", status="running")
        self.assertEqual(self.state()["analyses"]["a-2"]["status"], "completed")

    def test_unknown_type(self) -> None:
        """
        An object type CRITs does not know is a 500.
        """
        self.assertEqual(self.service(object_type="sample"), (500, CANNED_500))

    def test_body_limit(self) -> None:
        """
        A body over 2.5 MB (Django's limit) is a 500 and nothing is stored.
        """
        big = "x" * 2621440
        code, body = self.service(result=big, result_type="{}", result_subtype="s")
        self.assertEqual((code, body), (500, CANNED_500))
        self.assertEqual(self.state()["analyses"], {})
        code, body = self.service(result="x" * 2_000_000, result_type="{}", result_subtype="s")
        self.assertEqual(code, 200)

    def test_routing(self) -> None:
        """
        GET on services is a 405, a path without its slash a 301, an
        unknown path Django's 404.
        """
        self.assertEqual(self.client.get(SERVICES, headers=AUTH)[0], 405)
        code, headers, _ = self.client.request("POST", "/api/v1/services", body=b"",
                                               headers={**AUTH, "Content-Type": FORM},
                                               allow_redirects=False)
        self.assertEqual(code, 301)
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/api/v1/services/"])
        self.assertEqual(self.client.get("/api/v2/")[0], 404)


class SamplesTests(CritsTestCase):
    """
    C{POST /api/v1/samples/} and C{PATCH /api/v1/samples/<id>/}.
    """

    def test_upload_idempotent(self) -> None:
        """
        The same content uploaded twice keeps its id: "Added new" then
        "Updated".
        """
        md5 = hashlib.md5(b"dropped file").hexdigest()
        code, first = self.upload()
        self.assertEqual(code, 200)
        self.assertEqual(first["return_code"], 0)
        self.assertEqual(first["message"], f'Success: Added new sample <a href="/samples/details/'
                                           f'{md5}/">{md5}.</a>')
        self.assertEqual(first["url"], f"/api/v1/samples/{first['id']}/")
        code, second = self.upload()
        self.assertEqual(second["id"], first["id"])
        self.assertTrue(second["message"].startswith("Success: Updated sample"))
        sample = self.state()["samples"][first["id"]]
        self.assertEqual((sample["md5"], sample["filename"], sample["size"], sample["source"]),
                         (md5, "drop.bin", 12, "cuckoo"))

    def test_upload_refusals(self) -> None:
        """
        Missing source, missing upload type, a half related pair and
        urlencoded file data are refused; zip is a 500.
        """
        self.assertEqual(self.upload(source="")[1]["message"], "Missing source information.")
        self.assertEqual(self.upload(upload_type="")[1]["message"], "Must provide an upload type.")
        self.assertEqual(self.upload(related_id="abc")[1]["message"],
                         "Must specify related_type and related_id")
        self.assertEqual(self.upload(file_format="zip"), (500, CANNED_500))
        code, body = self.post_form("/api/v1/samples/", {"upload_type": "file", "filedata": "x"})
        self.assertEqual((code, json.loads(body)),
                         (400, {"error": "Filedata only supported in multipart forms."}))
        self.assertEqual(self.state()["samples"], {})

    def test_upload_related(self) -> None:
        """
        C{related_md5} relates the upload to that sample on both sides; an
        unknown one is reported but the sample is saved.
        """
        parent = self.upload(b"parent")[1]["id"]
        child = self.upload(b"child", related_md5=hashlib.md5(b"parent").hexdigest())[1]["id"]
        relationships = self.state()["relationships"]
        self.assertIn({"left_type": "Sample", "left_id": child, "right_type": "Sample",
                       "right_id": parent, "rel_type": "Related To"}, relationships)
        self.assertIn({"left_type": "Sample", "left_id": parent, "right_type": "Sample",
                       "right_id": child, "rel_type": "Related To"}, relationships)
        code, body = self.upload(b"orphan", related_md5="0" * 32)
        self.assertEqual(body["return_code"], 1)
        self.assertIn("not found. Sample not uploaded.", body["message"])
        self.assertIn(body["id"], self.state()["samples"])

    def test_upload_related_id(self) -> None:
        """
        C{related_id} with C{related_type} relates the upload "Related To"
        that object on both sides ("Contained Within" an Email), again
        without a duplicate on a repeated upload; a missing object is
        reported with return_code 1, yet the sample is saved and its id
        returned.
        """
        self.service(object_id="5dde0000000000000000aaaa")  # the analysed Sample, touched
        code, body = self.upload(b"child", related_id="5dde0000000000000000aaaa", related_type="Sample")
        self.assertEqual((code, body["return_code"]), (200, 0))
        self.upload(b"child", related_id="5dde0000000000000000aaaa", related_type="Sample")
        child = body["id"]
        self.assertEqual(self.state()["relationships"], [
            {"left_type": "Sample", "left_id": child, "right_type": "Sample",
             "right_id": "5dde0000000000000000aaaa", "rel_type": "Related To"},
            {"left_type": "Sample", "left_id": "5dde0000000000000000aaaa", "right_type": "Sample",
             "right_id": child, "rel_type": "Related To"}])
        code, body = self.upload(b"orphan", related_id="5dde0000000000000000ffff", related_type="Sample")
        self.assertEqual(body["return_code"], 1)
        self.assertIn("Related 5dde0000000000000000ffff not found. Sample not uploaded.", body["message"])
        self.assertIn(body["id"], self.state()["samples"])
        self.service(object_type="Email", object_id="e" * 24)
        mail = self.upload(b"attachment", related_id="e" * 24, related_type="Email")[1]["id"]
        self.assertIn({"left_type": "Sample", "left_id": mail, "right_type": "Email",
                       "right_id": "e" * 24, "rel_type": "Contained Within"}, self.state()["relationships"])

    def test_actions_counted(self) -> None:
        """
        C{/_sim/state} counts what requests did, beyond their route: a
        services request that adds results, a log line and finishes counts
        for each; uploads with and without a relation, forged
        relationships and standalone log lines are told apart.
        """
        self.service(result="r", result_type="{}", result_subtype="s", log_message="n", finish="1")
        self.service(log_message="alone")
        sample = self.upload(b"one")[1]["id"]
        self.upload(b"two", related_id=sample, related_type="Sample")
        self.patch(sample, {"action": "forge_relationship", "right_type": "Sample",
                            "right_id": "5dde0000000000000000aaaa", "rel_type": "Related To"})
        state = self.state()
        self.assertEqual(state["requests"], {"services POST": 2, "samples POST": 2, "samples/detail PATCH": 1})
        self.assertEqual(state["actions"], {"results": 1, "log": 2, "finish": 1, "log only": 1, "upload": 1,
                                            "upload related": 1, "forge_relationship": 1})

    def test_forge_relationship(self) -> None:
        """
        A new relationship is C{success!}; the same again is "Relationship
        already exists"; form and JSON bodies both work.
        """
        left = self.upload(b"left")[1]["id"]
        right = self.upload(b"right")[1]["id"]
        fields = {"action": "forge_relationship", "right_type": "Sample", "right_id": right,
                  "rel_type": "Dropped"}
        self.assertEqual(self.patch(left, fields), (200, {
            "return_code": 0, "type": "Sample", "message": "success!", "id": left}))
        code, body = self.patch(left, fields, json_body=True)
        self.assertEqual((body["return_code"], body["message"]),
                         (1, "Relationship already exists"))
        self.assertIn({"left_type": "Sample", "left_id": right, "right_type": "Sample",
                       "right_id": left, "rel_type": "Dropped By"},
                      self.state()["relationships"])

    def test_forge_refusals(self) -> None:
        """
        Unknown right object, unknown type, oneself, a bad action and an
        unknown sample id each get their CRITs answer.
        """
        left = self.upload(b"left")[1]["id"]
        base = {"action": "forge_relationship", "right_type": "Sample", "right_id": left,
                "rel_type": "Related To"}
        cases = [({"right_id": "nope"}, "Failed to get right TLO"),
                 ({"right_type": "sample"}, "Failed to get right TLO"),
                 ({}, "Cannot forge relationship to oneself"),
                 ({"action": "run_service"}, "'run_service' is not a valid action.")]
        for change, message in cases:
            code, body = self.patch(left, {**base, **change})
            self.assertEqual((code, body["return_code"], body["message"]), (200, 1, message))
        other = self.upload(b"other")[1]["id"]
        code, body = self.patch(left, {**base, "right_id": other, "rel_type": "Likes"})
        self.assertEqual(body["message"], "Could not find relationship type")
        self.assertEqual(self.patch("ffff", base), (404, CANNED_500))


class FaultTests(CritsTestCase):
    """
    Failure injection.
    """

    def test_fail_rate(self) -> None:
        """
        C{fail_rate} 1 makes every API call a canned 500 and stores nothing;
        setting it back to 0 restores service.
        """
        self.client.request("POST", "/_sim/control", body=b'{"fail_rate": 1}')
        self.assertEqual(self.service(), (500, CANNED_500))
        self.assertEqual(self.state()["analyses"], {})
        self.client.request("POST", "/_sim/control", body=b'{"fail_rate": 0}')
        self.assertEqual(self.service()[0], 200)
        self.assertEqual(self.state()["requests"]["services POST"], 2)

    def test_control_rejects(self) -> None:
        """
        Unknown keys and bad values are a 400.
        """
        for bad in (b'{"fail_rate": -1}', b'{"what": 1}', b"nope"):
            self.assertEqual(self.client.request("POST", "/_sim/control", body=bad)[0], 400)

    def test_slow_body(self) -> None:
        """
        With C{slow_body_seconds} the answer's body arrives as the clock
        advances.
        """
        self.client.request("POST", "/_sim/control", body=b'{"slow_body_seconds": 2}')
        d = self.client.stub.post("http://crits.test" + SERVICES, data=b"object_type=Sample",
                                  headers={"Content-Type": FORM, **AUTH})
        response = self.successResultOf(d)
        content = self.client.stub.content(response)
        self.assertNoResult(content)
        self.clock.advance(2)
        self.client.stub.flush()
        body = self.successResultOf(content)
        self.assertEqual(json.loads(body)["return_code"], 1)


class RealSocketTests(TestCase):
    """
    The simulator over a real loopback socket.
    """

    async def test_round_trip(self) -> None:
        """
        A form POST over TCP is stored; after C{stop_listening} the port
        refuses connections.
        """
        from treq.client import HTTPClient
        from twisted.internet import reactor
        from twisted.internet.error import ConnectionRefusedError
        from twisted.web.client import Agent, HTTPConnectionPool

        sim = CritsSimulator(reactor, users={"analyst": KEY})
        server = SimulatorServer(reactor, sim.resource)
        server.start_listening()
        self.addCleanup(server.close)
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.post(
            server.url + SERVICES,
            data=b"object_type=Sample&object_id=s1&analysis_id=a1&log_message=hi",
            headers={"Content-Type": FORM, **AUTH})
        self.assertEqual(json.loads(await response.content())["return_code"], 0)
        self.assertEqual(sim.state()["analyses"]["a1"]["log"][0]["message"], "hi")
        await server.stop_listening()
        with self.assertRaises(ConnectionRefusedError):
            await http.get(server.url + "/_sim/state")


class HostileInputTests(CritsTestCase):
    """
    Odd JSON types and broken bodies get CRITs answers, never a crash.
    """

    def post_json(self, path: str, data: Any, method: str = "POST") -> tuple[int, Any]:
        code, _, body = self.client.request(method, path, body=json.dumps(data).encode(),
                                            headers={"Content-Type": "application/json", **AUTH})
        return code, json.loads(body)

    def test_services_types(self) -> None:
        """
        A list where a string belongs is the canned 500; a JSON array body
        too.
        """
        self.assertEqual(self.post_json(SERVICES, {"object_type": ["Sample"], "object_id": "x",
                                                   "analysis_id": "a"}), (500, CANNED_500))
        self.assertEqual(self.post_json(SERVICES, [1, 2]), (500, CANNED_500))
        code, _, body = self.client.request("POST", SERVICES, body=b"{not json",
                                            headers={"Content-Type": "application/json", **AUTH})
        self.assertEqual(code, 400)

    def test_patch_types(self) -> None:
        """
        Unhashable relationship fields are refused like unknown ones.
        """
        left = self.upload(b"left")[1]["id"]
        code, body = self.post_json(f"/api/v1/samples/{left}/",
                                    {"action": "forge_relationship", "right_type": ["Sample"],
                                     "right_id": {"a": 1}, "rel_type": ["x"]}, method="PATCH")
        self.assertEqual((code, body["message"]), (200, "Failed to get right TLO"))

    def test_broken_multipart(self) -> None:
        """
        A multipart body that does not parse is the canned 500.
        """
        code, _, body = self.client.request(
            "POST", "/api/v1/samples/", body=b"--b\r\ngarbage",
            headers={"Content-Type": "multipart/form-data; boundary=b", **AUTH})
        self.assertEqual((code, json.loads(body)), (500, CANNED_500))
