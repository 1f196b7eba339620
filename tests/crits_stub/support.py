"""
Loading the CRITs service under Python 3 for the tests: the stub C{crits}
package and C{contrib/crits_service} on C{sys.path}, Django configured with
the two CRITs templates the service renders, and stand-ins for a CRITs
Sample.
"""

import os
import sys

STUB = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(STUB))
CONTRIB = os.path.join(REPO, "contrib", "crits_service")
SERVICE_TEMPLATES = os.path.join(CONTRIB, "cuckoodist_service", "templates")

#: CRITs' own templates, reduced to what shows the form was rendered.
CRITS_TEMPLATES = {
    "services_config_form.html": "<h1>{{ name }}</h1><table>{{ form.as_table }}</table>",
    "services_run_form.html": "<h1>{{ name }} {{ crits_type }} {{ identifier }}</h1>{{ form.as_table }}",
    "services_results_default.html": "<div id='default-results'>{{ analysis.results|length }}</div>",
}


def load():
    """
    @return: the C{cuckoodist_service} package, imported against the stub.
    """
    for path in (STUB, CONTRIB):
        if path not in sys.path:
            sys.path.insert(0, path)
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            USE_I18N=False,
            TEMPLATES=[{
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [SERVICE_TEMPLATES],
                "OPTIONS": {"loaders": [
                    ("django.template.loaders.locmem.Loader", CRITS_TEMPLATES),
                    "django.template.loaders.filesystem.Loader",
                ]},
            }],
        )
        django.setup()
    import cuckoodist_service

    return cuckoodist_service


class FileData(object):
    """
    A sample's C{filedata} (mongoengine's GridFS proxy): C{grid_id} is
    L{None} when no file is stored.
    """

    def __init__(self, data):
        self.data = data
        self.grid_id = None if data is None else "5f0000000000000000000001"
        self.reads = 0

    def read(self):
        self.reads += 1
        if isinstance(self.data, Exception):
            raise self.data
        return self.data


class Source(object):
    def __init__(self, name):
        self.name = name


class Sample(object):
    """
    The fields of a CRITs Sample the service reads.
    """

    def __init__(self, data=b"MZ\x90\x00sample", filename="evil.exe", md5="0" * 32,
                 sha256="1" * 64, sources=("first-source", "second-source"),
                 object_id="5f00000000000000000000aa"):
        self.id = object_id
        self.filename = filename
        self.md5 = md5
        self.sha256 = sha256
        self.source = [Source(name) for name in sources]
        self.filedata = FileData(data)


def run_service(module, obj, config, connector=None):
    """
    Run the service on C{obj} as CRITs does for one analysis: a task,
    C{valid_for} checked beforehand by the caller, then C{execute}.

    @param connector: replaces the module's C{Connector} for this run.
    @return: the finished task.
    """
    from crits.services.core import AnalysisTask

    service = module.CuckoodistService()
    task = AnalysisTask(obj, service, "analyst")
    task.start()
    service.set_task(task)
    saved = module.Connector
    if connector is not None:
        module.Connector = connector
    try:
        service.execute(config)
    finally:
        module.Connector = saved
    return task
