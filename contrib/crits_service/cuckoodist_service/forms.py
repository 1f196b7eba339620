"""
The service's Django forms: the admin's configuration and the analyst's
per-run choices.  Initial values come from L{request.DEFAULTS}; the rules
beyond a field's type are in L{request.check_config}, which CRITs applies
through the service's C{parse_config}.

Django 1.8 to 1.11 (CRITs) and current Django alike accept these fields.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

from django import forms

from .request import DEFAULTS, INLINE, LABELS, REFERENCE

_PRIORITY_CHOICES = (
    ("", "the workers' default"),
    ("1", "1 (low)"),
    ("2", "2 (medium)"),
    ("3", "3 (high)"),
)

_WIDE = {"size": "60"}


def _priority_field():
    return forms.TypedChoiceField(
        label=LABELS["priority"], choices=_PRIORITY_CHOICES, coerce=int, empty_value=None,
        required=False, initial="" if DEFAULTS["priority"] is None else str(DEFAULTS["priority"]),
        help_text="Queue priority of the request with the workers (1 to 3).")


class _CuckooOptions(forms.Form):
    """
    The Cuckoo submission fields, shared by both forms.
    """

    package = forms.CharField(
        label=LABELS["package"], required=False, initial=DEFAULTS["package"],
        help_text="Analysis package, e.g. exe, dll, pdf; empty lets Cuckoo choose.")
    options = forms.CharField(
        label=LABELS["options"], required=False, initial=DEFAULTS["options"],
        widget=forms.TextInput(attrs=_WIDE),
        help_text="key=value pairs separated by commas, e.g. procmemdump=yes.")
    timeout = forms.IntegerField(
        label=LABELS["timeout"], required=False, min_value=0, initial=DEFAULTS["timeout"],
        help_text="Analysis time in seconds; 0 uses Cuckoo's default.")
    machine = forms.CharField(
        label=LABELS["machine"], required=False, initial=DEFAULTS["machine"],
        help_text="Name of the analysis machine; empty takes any.")
    tags = forms.CharField(
        label=LABELS["tags"], required=False, initial=DEFAULTS["tags"],
        help_text="Machine tags, separated by commas.")


class CuckoodistConfigForm(_CuckooOptions):
    """
    What the CRITs admin sets once: where requests go, how the workers
    reach this CRITs back, and the defaults of each run.
    """

    error_css_class = "errors"
    required_css_class = "required"

    broker_url = forms.CharField(
        label=LABELS["broker_url"], required=True, initial=DEFAULTS["broker_url"],
        widget=forms.TextInput(attrs=_WIDE),
        help_text="amqp://user:password@host:5672/vhost or amqps://... "
                  "(the default vhost / is written //).")
    broker_ca_file = forms.CharField(
        label=LABELS["broker_ca_file"], required=False, initial=DEFAULTS["broker_ca_file"],
        widget=forms.TextInput(attrs=_WIDE),
        help_text="For amqps://: the CA certificates file that signed the broker's "
                  "certificate; empty uses the system's.")
    exchange = forms.CharField(
        label=LABELS["exchange"], required=False, initial=DEFAULTS["exchange"],
        help_text="Empty for the default exchange, where the routing key is the queue name.")
    routing_key = forms.CharField(
        label=LABELS["routing_key"], required=True, initial=DEFAULTS["routing_key"],
        help_text="With the default exchange: the consumer_queue of the feed_cuckoo stages.")
    crits_url = forms.CharField(
        label=LABELS["crits_url"], required=True, initial=DEFAULTS["crits_url"],
        widget=forms.TextInput(attrs=_WIDE),
        help_text="The URL at which the workers reach this CRITs, e.g. https://crits.example.org. "
                  "It must be the workers' crits.url or in their crits.allowed_urls.")
    api_user = forms.CharField(
        label=LABELS["api_user"], required=True, initial=DEFAULTS["api_user"],
        help_text="The CRITs user the workers post results as.")
    api_key = forms.CharField(
        label=LABELS["api_key"], required=True, initial=DEFAULTS["api_key"],
        widget=forms.PasswordInput(render_value=True),
        help_text="That user's API key.")
    submit_mode = forms.ChoiceField(
        label=LABELS["submit_mode"], required=True, initial=DEFAULTS["submit_mode"],
        choices=((INLINE, "inline: the sample travels in the message"),
                 (REFERENCE, "by reference: the workers download it from CRITs by hash")),
        widget=forms.RadioSelect)
    priority = _priority_field()

    field_order = ["broker_url", "broker_ca_file", "exchange", "routing_key", "crits_url",
                   "api_user", "api_key", "submit_mode", "package", "options", "timeout",
                   "machine", "tags", "priority"]

    def __init__(self, *args, **kwargs):
        super(CuckoodistConfigForm, self).__init__(*args, **kwargs)
        # Django before 1.9 ignores field_order; keep the order everywhere.
        self.fields = _ordered(self.fields, self.field_order)


class CuckoodistRunForm(_CuckooOptions):
    """
    What an analyst may change for one run; initial values are the
    configured defaults.
    """

    error_css_class = "errors"
    required_css_class = "required"

    priority = _priority_field()


def _ordered(fields, order):
    ordered = fields.__class__()
    for name in order:
        if name in fields:
            ordered[name] = fields[name]
    for name in fields:
        if name not in ordered:
            ordered[name] = fields[name]
    return ordered
