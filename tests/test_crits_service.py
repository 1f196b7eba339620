"""
The CRITs service of contrib/crits_service, under Python 3 against the
stub C{crits} package (tests/crits_stub): the request it builds in both
submit modes, its configuration rules and forms, and the errors it
reports to the analyst.
"""

import base64
import json
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.messages import AnalysisRequest
from tests.crits_stub import support

service_module = support.load()
request_module = service_module.request
ServiceConfigError = service_module.ServiceConfigError
Service = service_module.Service

GOOD = {
    "broker_url": "amqp://worker:s3cret-pass@rabbit.example.org:5672/cuckoo",
    "broker_ca_file": "",
    "exchange": "",
    "routing_key": "worker/feed_cuckoo",
    "crits_url": "https://crits.example.org/",
    "api_user": "cuckoo-worker",
    "api_key": "0123456789abcdef-key",
    "submit_mode": "inline",
    "package": "exe",
    "options": "procmemdump=yes,route=none",
    "timeout": 120,
    "machine": "win7-1",
    "tags": "x64,office",
    "priority": 2,
}


def config(**changes):
    doc = dict(GOOD)
    doc.update(changes)
    return doc


class RecordingConnector(object):
    """
    CRITs' C{Connector} interface, recording instead of connecting.
    """

    made = []

    def __init__(self, connector, uri, **kwargs):
        self.connector, self.uri, self.kwargs = connector, uri, kwargs
        self.sent, self.released = [], False
        RecordingConnector.made.append(self)

    def send_msg(self, msg, exch, routing_key):
        json.dumps(msg)  # what kombu's default serializer does
        self.sent.append((msg, exch, routing_key))

    def release(self):
        self.released = True


class FailingConnector(RecordingConnector):
    def send_msg(self, msg, exch, routing_key):
        raise IOError("NOT_FOUND - no exchange 'cuckoo' in vhost 'cuckoo'")


def _run(obj, cfg, connector=RecordingConnector):
    RecordingConnector.made = []
    return support.run_service(service_module, obj, cfg, connector)


class ClassTests(SynchronousTestCase):
    def test_declaration(self):
        """
        A distributed service for Samples, with a template, a version CRITs
        can parse, and the config hooks CRITs calls.
        """
        cls = service_module.CuckoodistService
        self.assertTrue(issubclass(cls, Service))
        self.assertEqual(cls.name, "cuckoodist")
        self.assertTrue(cls.distributed)
        self.assertEqual(cls.supported_types, ["Sample"])
        self.assertEqual(cls.template, "cuckoodist_service_template.html")
        self.assertTrue(all(part.isdigit() for part in cls.version.split(".")))
        from django.template.loader import render_to_string

        html = render_to_string(cls.template, {"analysis": {"results": [1, 2]}})
        self.assertIn("<div id='default-results'>2</div>", html)

    def test_valid_for(self):
        """
        Samples without file data are refused before a task is made.
        """
        service_module.CuckoodistService.valid_for(support.Sample())
        with self.assertRaises(ServiceConfigError) as caught:
            service_module.CuckoodistService.valid_for(support.Sample(data=None))
        self.assertIn("no file data", str(caught.exception))
        sample = support.Sample()
        del sample.filedata
        self.assertRaises(ServiceConfigError, service_module.CuckoodistService.valid_for, sample)


class MessageTests(SynchronousTestCase):
    def _sent(self, obj, cfg):
        task = _run(obj, cfg)
        self.assertEqual(task.status, "completed", task.log)
        [connector] = RecordingConnector.made
        self.assertTrue(connector.released)
        [(msg, exchange, routing_key)] = connector.sent
        return task, connector, msg, exchange, routing_key

    def test_inline(self):
        """
        Inline mode: the sample's bytes in base64, every crits_data field,
        the Cuckoo options as strings, and the priority; published to the
        configured exchange and routing key, persistently (kombu's default)
        with publisher confirms, and the analyst is told where it went.
        """
        obj = support.Sample()
        task, connector, msg, exchange, routing_key = self._sent(obj, config())
        self.assertEqual((connector.connector, connector.uri), ("amqp", GOOD["broker_url"]))
        self.assertEqual(connector.kwargs["transport_options"], {"confirm_publish": True})
        self.assertNotIn("ssl", connector.kwargs)
        self.assertEqual((exchange, routing_key), ("", "worker/feed_cuckoo"))
        self.assertEqual(sorted(msg), ["crits_data", "file", "payload", "priority", "requested_at"])
        self.assertLess(abs(msg["requested_at"] - time.time()), 600)
        self.assertEqual(msg["payload"], {"package": "exe", "options": "procmemdump=yes,route=none",
                                          "timeout": "120", "machine": "win7-1", "tags": "x64,office"})
        self.assertEqual(msg["file"], {"name": "evil.exe",
                                       "data": base64.b64encode(b"MZ\x90\x00sample").decode("ascii")})
        self.assertEqual(msg["crits_data"], {
            "crits_url": "https://crits.example.org",
            "analysis_id": task.task_id,
            "object_type": "Sample",
            "object_id": "5f00000000000000000000aa",
            "username": "cuckoo-worker",
            "api_key": "0123456789abcdef-key",
            "md5": "0" * 32,
            "source": "first-source",
        })
        self.assertEqual(msg["priority"], 2)
        for value in msg["crits_data"].values():
            self.assertIsInstance(value, str)
        [entry] = task.log
        self.assertEqual(entry["level"], "info")
        self.assertIn("rabbit.example.org", entry["message"])
        self.assertIn("worker/feed_cuckoo", entry["message"])
        self.assertNotIn("s3cret-pass", entry["message"])
        decoded = AnalysisRequest.decode(json.dumps(msg).encode())
        self.assertEqual(decoded.file_data, b"MZ\x90\x00sample")
        self.assertEqual(decoded.crits.crits_url, "https://crits.example.org")
        self.assertEqual(decoded.crits.username, "cuckoo-worker")

    def test_by_reference(self):
        """
        By-reference mode: the file is named by md5 and sha256 and its data
        is neither read nor sent.
        """
        obj = support.Sample(md5="A" * 32, sha256="B" * 64)
        task, _, msg, _, _ = self._sent(obj, config(submit_mode="reference"))
        self.assertEqual(msg["file"], {"name": "evil.exe", "md5": "a" * 32, "sha256": "b" * 64})
        self.assertEqual(obj.filedata.reads, 0)
        self.assertEqual(msg["crits_data"]["md5"], "a" * 32)
        self.assertEqual(msg["crits_data"]["analysis_id"], task.task_id)
        self.assertEqual(msg["priority"], 2)

    def test_defaults_left_out(self):
        """
        Empty Cuckoo options, a timeout of 0 and no priority are left out,
        so Cuckoo's and the workers' defaults apply; a sample without a
        file name is named by its md5.
        """
        cfg = config(package="", options="", timeout=0, machine="", tags="", priority=None)
        _, _, msg, _, _ = self._sent(support.Sample(filename=""), cfg)
        self.assertEqual(msg["payload"], {})
        self.assertNotIn("priority", msg)
        self.assertEqual(msg["file"]["name"], "0" * 32)

    def test_stored_values(self):
        """
        Values as CRITs reads them back from its database or a form (text
        numbers, empty priority) give the same message.
        """
        _, _, msg, _, _ = self._sent(support.Sample(), config(timeout="120", priority="3"))
        self.assertEqual(msg["payload"]["timeout"], "120")
        self.assertEqual(msg["priority"], 3)
        _, _, msg, _, _ = self._sent(support.Sample(), config(priority=""))
        self.assertNotIn("priority", msg)

    def test_exchange(self):
        """
        A named exchange and routing key are passed to the connector as
        configured.
        """
        _, _, _, exchange, routing_key = self._sent(
            support.Sample(), config(exchange="cuckoo", routing_key="samples.new"))
        self.assertEqual((exchange, routing_key), ("cuckoo", "samples.new"))


class ConfigTests(SynchronousTestCase):
    parse = staticmethod(service_module.CuckoodistService.parse_config)

    def assertRefused(self, fragment, **changes):
        with self.assertRaises(ServiceConfigError) as caught:
            self.parse(config(**changes))
        self.assertIn(fragment, str(caught.exception))

    def test_good(self):
        self.parse(config())
        self.parse(config(broker_url="amqps://rabbit.example.org//", submit_mode="reference",
                          priority=None, timeout=None, exchange="cuckoo"))

    def test_defaults(self):
        """
        C{get_config} starts from the defaults and keeps what CRITs stored;
        the defaults alone still lack the site's CRITs URL and credentials.
        """
        got = service_module.CuckoodistService.get_config({"api_user": "u"})
        self.assertEqual(got["routing_key"], "worker/feed_cuckoo")
        self.assertEqual(got["submit_mode"], "inline")
        self.assertEqual(got["api_user"], "u")
        self.assertEqual(service_module.CuckoodistService.get_config(None), request_module.DEFAULTS)
        self.assertRaises(ServiceConfigError, self.parse, request_module.DEFAULTS)

    def test_broker(self):
        self.assertRefused("Broker URL must start with amqp:// or amqps://", broker_url="http://rabbit/")
        self.assertRefused("Broker URL names no host", broker_url="amqp:///vhost")
        self.assertRefused("Broker URL is required", broker_url="  ")
        self.assertRefused("Broker CA file /nonexistent/ca.pem is not a file", broker_ca_file="/nonexistent/ca.pem")
        self.assertRefused("Routing key is required", routing_key="")
        self.assertRefused("Routing key is longer than 255 bytes", routing_key="é" * 128)
        self.assertRefused("Exchange contains a control character", exchange="a\nb")

    def test_crits(self):
        self.assertRefused("CRITs URL for the workers is required", crits_url="")
        self.assertRefused("must be an http:// or https:// URL", crits_url="ftp://crits")
        self.assertRefused("must be an http:// or https:// URL", crits_url="crits.example.org")
        self.assertRefused("must not carry a query", crits_url="https://crits/?a=1")
        self.assertRefused("must not carry a query", crits_url="https://u:p@crits/")
        self.assertRefused("API user is required", api_user="")
        self.assertRefused("API key is required", api_key=None)
        self.assertRefused("API user must be text", api_user=5)

    def test_options(self):
        self.assertRefused("Submit mode must be one of: inline, reference", submit_mode="url")
        self.assertRefused("Cuckoo timeout must be a whole number", timeout="soon")
        self.assertRefused("Cuckoo timeout must be a whole number", timeout=True)
        self.assertRefused("Cuckoo timeout must be 0", timeout=-5)
        for bad in (0, 4, "9"):
            self.assertRefused("Priority must be 1, 2 or 3", priority=bad)
        self.assertRefused("Priority must be a whole number", priority=2.5)

    def test_details_and_saved_config(self):
        """
        The service page and the analysis record never show the API key
        or the broker password.
        """
        shown = service_module.CuckoodistService.get_config_details(config())
        self.assertEqual(shown["API key"], "(set)")
        self.assertEqual(shown["Broker URL"], "amqp://worker:***@rabbit.example.org:5672/cuckoo")
        self.assertEqual(shown["Routing key"], "worker/feed_cuckoo")
        self.assertNotIn("s3cret-pass", repr(shown))
        saved = config()
        service_module.CuckoodistService.save_runtime_config(saved)
        self.assertNotIn("api_key", saved)
        self.assertEqual(saved["broker_url"], "amqp://worker:***@rabbit.example.org:5672/cuckoo")
        self.assertEqual(saved["package"], "exe")

    def test_amqps_options(self):
        """
        amqps:// connects with the broker's certificate verified.
        """
        import ssl

        ca = self.mktemp()
        with open(ca, "w") as fp:
            fp.write("")
        checked = request_module.check_config(config(broker_url="amqps://rabbit//", broker_ca_file=ca))
        options = request_module.connection_options(checked)
        self.assertEqual(options["ssl"], {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca})


class FormTests(SynchronousTestCase):
    def _form_data(self, **changes):
        data = dict((k, "" if v is None else v) for k, v in config(**changes).items())
        return data

    def test_config_form(self):
        """
        The config form CRITs shows the admin has every key; its cleaned
        data passes C{parse_config}.
        """
        form_class, html = service_module.CuckoodistService.generate_config_form(config())
        self.assertEqual(list(form_class().fields), [
            "broker_url", "broker_ca_file", "exchange", "routing_key", "crits_url", "api_user",
            "api_key", "submit_mode", "package", "options", "timeout", "machine", "tags", "priority"])
        self.assertEqual(sorted(form_class().fields), sorted(request_module.DEFAULTS))
        self.assertIn("<h1>cuckoodist</h1>", html)
        self.assertIn('value="worker/feed_cuckoo"', html)
        form = form_class(data=self._form_data())
        self.assertTrue(form.is_valid(), form.errors)
        self.assertEqual(form.cleaned_data["priority"], 2)
        service_module.CuckoodistService.parse_config(form.cleaned_data)
        form = form_class(data=self._form_data(priority=""))
        self.assertTrue(form.is_valid(), form.errors)
        self.assertIsNone(form.cleaned_data["priority"])
        form = form_class(data=self._form_data(submit_mode="url", priority="7"))
        self.assertFalse(form.is_valid())
        self.assertEqual(sorted(form.errors), ["priority", "submit_mode"])

    def test_initial_values(self):
        """
        An empty configuration shows the defaults.
        """
        from cuckoodist_service import forms

        form = forms.CuckoodistConfigForm()
        for name, field in form.fields.items():
            default = request_module.DEFAULTS[name]
            self.assertEqual(field.initial, "" if default is None else default, name)

    def test_runtime_form(self):
        """
        The analyst's form starts from the configured defaults; CRITs binds
        it to the merged configuration for runs without the form (triage).
        """
        html = service_module.CuckoodistService.generate_runtime_form("analyst", config(), "Sample", "abc")
        self.assertIn("cuckoodist Sample abc", html)
        self.assertIn('value="procmemdump=yes,route=none"', html)
        form = service_module.CuckoodistService.bind_runtime_form("analyst", config(priority=None))
        self.assertTrue(form.is_valid(), form.errors)
        self.assertEqual(form.cleaned_data, {"package": "exe", "options": "procmemdump=yes,route=none",
                                             "timeout": 120, "machine": "win7-1", "tags": "x64,office",
                                             "priority": None})
        merged = config()
        merged.update(form.cleaned_data)
        service_module.CuckoodistService.parse_config(merged)


class ErrorTests(SynchronousTestCase):
    """
    Every failure is an error entry for the analyst, and the analysis ends
    as an error instead of staying "started".
    """

    def setUp(self):
        # The service logs each traceback for CRITs' log; not needed here.
        self.patch(service_module.logger, "disabled", True)

    def assertFailed(self, task, fragment):
        self.assertEqual(task.status, "error")
        self.assertTrue(task.finished)
        messages = [e["message"] for e in task.log if e["level"] == "error"]
        self.assertEqual(len(messages), 1, task.log)
        self.assertIn(fragment, messages[0])
        for entry in task.log:
            self.assertNotIn("s3cret-pass", entry["message"])
            self.assertNotIn("0123456789abcdef-key", entry["message"])
        return messages[0]

    def test_misconfigured(self):
        task = _run(support.Sample(), config(crits_url=""))
        self.assertFailed(task, "misconfigured: CRITs URL for the workers is required")
        self.assertEqual(RecordingConnector.made, [])

    def test_no_source(self):
        task = _run(support.Sample(sources=()), config())
        self.assertFailed(task, "Not sent to Cuckoo: the sample has no source")
        self.assertEqual(RecordingConnector.made, [])

    def test_no_data(self):
        task = _run(support.Sample(data=b""), config())
        self.assertFailed(task, "the sample has no file data")

    def test_unreadable_data(self):
        task = _run(support.Sample(data=IOError("GridFS chunk missing")), config())
        self.assertFailed(task, "could not be read: GridFS chunk missing")

    def test_no_md5_by_reference(self):
        task = _run(support.Sample(md5=None), config(submit_mode="reference"))
        self.assertFailed(task, "no valid md5")

    def test_too_big_inline(self):
        self.patch(request_module, "MAX_INLINE_BYTES", 4)
        task = _run(support.Sample(), config())
        self.assertFailed(task, "use the by-reference submit mode")

    def test_publish_refused(self):
        """
        A publish the broker refuses is reported, and the connection is
        released.
        """
        task = _run(support.Sample(), config(), FailingConnector)
        message = self.assertFailed(task, "publishing to amqp://worker:***@rabbit.example.org:5672/cuckoo")
        self.assertIn("no exchange 'cuckoo'", message)
        self.assertTrue(RecordingConnector.made[0].released)

    def test_broker_down(self):
        """
        With CRITs' real connector (kombu): a broker that refuses the
        connection is reported, naming it without its password.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        url = "amqp://worker:s3cret-pass@127.0.0.1:%d//" % port
        task = _run(support.Sample(), config(broker_url=url), connector=None)
        self.assertFailed(task, "publishing to amqp://worker:***@127.0.0.1:%d//" % port)
