"""
Stand-in for C{crits.services.core}: what a service sees of CRITs.

L{Service.execute} behaves as CRITs' does for a distributed service: it
runs C{run}, turns an exception into an error entry, and in every case
ends the task, as C{completed} unless it was set to C{error}.
"""

import uuid


class ServiceConfigError(Exception):
    pass


class AnalysisTask(object):
    STATUS_CREATED = "created"
    STATUS_STARTED = "started"
    STATUS_ERROR = "error"
    STATUS_COMPLETED = "completed"

    def __init__(self, obj, service, username):
        self.obj = obj
        self.service = service
        self.username = username
        self.task_id = str(uuid.uuid4())
        self.status = self.STATUS_CREATED
        self.log = []
        self.results = []
        self.finished = False

    def start(self):
        self.status = self.STATUS_STARTED


class Service(object):
    name = None
    version = None
    description = None
    supported_types = []
    required_fields = []
    template = None
    distributed = False

    def __init__(self, notify=None, complete=None):
        self.notify = notify
        self.complete = complete
        self.current_task = None

    def set_task(self, task):
        self.current_task = task

    def execute(self, config):
        task = self.current_task
        try:
            self.run(task.obj, config)
            if not self.distributed and task.status != AnalysisTask.STATUS_ERROR:
                task.status = AnalysisTask.STATUS_COMPLETED
        except Exception as e:
            self._error("Error running service: %s" % (e,))
        finally:
            if task.status != AnalysisTask.STATUS_ERROR:
                task.status = AnalysisTask.STATUS_COMPLETED
            task.finished = True

    def _log(self, level, message):
        self.current_task.log.append({"level": level, "message": message})

    def _debug(self, message):
        self._log("debug", message)

    def _info(self, message):
        self._log("info", message)

    def _warning(self, message):
        self._log("warning", message)

    def _error(self, message):
        self._log("error", message)
        self.current_task.status = AnalysisTask.STATUS_ERROR

    def _critical(self, message):
        self._log("critical", message)
        self.current_task.status = AnalysisTask.STATUS_ERROR

    @staticmethod
    def valid_for(obj):
        pass

    @staticmethod
    def get_config(existing_config):
        return existing_config

    @staticmethod
    def parse_config(config):
        pass

    @staticmethod
    def get_config_details(config):
        return config

    @classmethod
    def generate_config_form(cls, config):
        return None, None

    @staticmethod
    def save_runtime_config(config):
        pass
