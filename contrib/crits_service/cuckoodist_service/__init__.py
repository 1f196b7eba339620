"""
cuckoodist: send CRITs samples to Cuckoo sandboxes through the cuckoodist
workers.

A distributed CRITs service: C{run} publishes one analysis request to
RabbitMQ and returns; the workers post the results, the log and the end of
the analysis to CRITs' services API later.  See README.md beside this
package for installing it.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import logging

from crits.services.connector import Connector
from crits.services.core import Service, ServiceConfigError

from . import request as _request

logger = logging.getLogger(__name__)


def _sample_description(obj, with_data):
    """
    What the request needs to know of a CRITs Sample.
    """
    sources = getattr(obj, "source", None) or []
    description = {
        "name": getattr(obj, "filename", None),
        "md5": getattr(obj, "md5", None),
        "sha256": getattr(obj, "sha256", None),
        "object_id": "%s" % (getattr(obj, "id", ""),),
        "source": getattr(sources[0], "name", None) if sources else None,
    }
    if with_data:
        description["data"] = obj.filedata.read()
    return description


class CuckoodistService(Service):
    """
    Publishes a sample's analysis request for the cuckoodist workers.
    """

    name = "cuckoodist"
    version = "1.0.0"
    description = ("Analyse samples in Cuckoo sandboxes through the cuckoodist workers "
                   "(RabbitMQ); results arrive as the workers post them.")
    supported_types = ["Sample"]
    required_fields = []
    template = "cuckoodist_service_template.html"
    distributed = True

    # -- configuration (the admin's) ----------------------------------------

    @staticmethod
    def get_config(existing_config):
        return _request.with_defaults(existing_config)

    @staticmethod
    def parse_config(config):
        try:
            _request.check_config(config)
        except _request.ConfigProblem as e:
            raise ServiceConfigError("%s" % (e,))

    @staticmethod
    def get_config_details(config):
        return _request.details(config)

    @classmethod
    def generate_config_form(cls, config):
        from django.template.loader import render_to_string

        from . import forms

        html = render_to_string("services_config_form.html", {
            "name": cls.name,
            "form": forms.CuckoodistConfigForm(initial=_request.with_defaults(config)),
            "config_error": None,
        })
        return forms.CuckoodistConfigForm, html

    @staticmethod
    def save_runtime_config(config):
        _request.strip_secrets(config)

    # -- a run (the analyst's) ----------------------------------------------

    @classmethod
    def generate_runtime_form(cls, analyst, config, crits_type, identifier):
        from django.template.loader import render_to_string

        from . import forms

        initial = dict((key, config.get(key, _request.DEFAULTS[key])) for key in _request.RUNTIME_KEYS)
        return render_to_string("services_run_form.html", {
            "name": cls.name,
            "form": forms.CuckoodistRunForm(initial=initial),
            "crits_type": crits_type,
            "identifier": identifier,
        })

    @staticmethod
    def bind_runtime_form(analyst, config):
        from . import forms

        data = {}
        for key in _request.RUNTIME_KEYS:
            value = config.get(key, _request.DEFAULTS[key])
            data[key] = "" if value is None else value
        return forms.CuckoodistRunForm(data=data)

    @staticmethod
    def valid_for(obj):
        filedata = getattr(obj, "filedata", None)
        if filedata is None or getattr(filedata, "grid_id", None) is None:
            raise ServiceConfigError("This sample has no file data to analyse.")

    def run(self, obj, config):
        try:
            checked = _request.check_config(config)
            options = _request.connection_options(checked)
        except _request.ConfigProblem as e:
            self._error("The cuckoodist service is misconfigured: %s. An administrator must fix "
                        "its configuration." % (e,))
            return
        inline = checked["submit_mode"] == _request.INLINE
        try:
            sample = _sample_description(obj, with_data=inline)
            message = _request.build_request(checked, sample, self.current_task.task_id)
        except _request.SampleProblem as e:
            self._error("Not sent to Cuckoo: %s." % (e,))
            return
        except Exception as e:
            logger.exception("cuckoodist: reading sample %s failed", getattr(obj, "id", "?"))
            self._error("Not sent to Cuckoo: the sample could not be read: %s" % (e,))
            return

        where = "%s (exchange '%s', routing key '%s')" % (
            _request.redacted_url(checked["broker_url"]), checked["exchange"], checked["routing_key"])
        try:
            self._publish(checked, options, message)
        except Exception as e:
            # Whatever kombu or the broker raised: the analyst sees it, and
            # CRITs ends the analysis as an error instead of leaving it
            # "started" with nothing coming.
            logger.exception("cuckoodist: publishing to %s failed", where)
            self._error("Not sent to Cuckoo: publishing to %s failed: %s: %s"
                        % (where, e.__class__.__name__, e))
            return
        self._info("Sent to the cuckoodist workers at %s in %s mode%s. Results will be added as "
                   "the workers post them." % (where, checked["submit_mode"],
                                               "" if checked["priority"] is None
                                               else ", priority %d" % checked["priority"]))

    @staticmethod
    def _publish(checked, options, message):
        """
        Publish C{message} persistently (kombu's default delivery mode)
        through CRITs' connector, with publisher confirms, and close the
        connection whatever happens.
        """
        connector = Connector("amqp", checked["broker_url"], **options)
        try:
            connector.send_msg(message, checked["exchange"], checked["routing_key"])
        finally:
            connector.release()
