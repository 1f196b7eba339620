"""
The CRITs service runs on CRITs' Python 2.7: every Python file of
contrib/crits_service must be valid 2.7 syntax.  parso 0.7 still ships the
2.7 grammar, so this runs wherever the suite does; where a Python 2.7
interpreter is installed, the message builder is also run under it.
"""

import json
import os
import shutil
import subprocess

import parso
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.crits_stub.support import CONTRIB


def _python_files():
    for folder, _, files in os.walk(CONTRIB):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _errors(source, version):
    grammar = parso.load_grammar(version=version)
    module = grammar.parse(source)
    return ["%d:%d %s" % (e.start_pos[0], e.start_pos[1], e.message) for e in grammar.iter_errors(module)]


class SyntaxTests(SynchronousTestCase):
    def test_files_found(self):
        names = sorted(os.path.relpath(p, CONTRIB) for p in _python_files())
        self.assertEqual(names, [os.path.join("cuckoodist_service", n)
                                 for n in ("__init__.py", "forms.py", "request.py")])

    def test_python_27(self):
        """
        Every file parses with the Python 2.7 grammar without errors.
        """
        found = {}
        for path in _python_files():
            with open(path, encoding="utf-8") as fp:
                errors = _errors(fp.read(), "2.7")
            if errors:
                found[os.path.relpath(path, CONTRIB)] = errors
        self.assertEqual(found, {})

    def test_checker_catches_python_3_only_syntax(self):
        """
        The check would see what Python 2.7 refuses.
        """
        for source in ('x = f"{y}"\n', "def f(a: int) -> int:\n    return a\n",
                       "print(*a, sep='')\n", "async def f():\n    pass\n",
                       "x = 1_000\n", "a, *b = c\n", "def f(*, a):\n    pass\n"):
            self.assertNotEqual(_errors(source, "2.7"), [], source)
            self.assertEqual(_errors(source, "3.8"), [], source)

    def test_python_27_interpreter(self):
        """
        Where a Python 2.7 is installed: the request module imports and
        builds a by-reference and an inline request under it.
        """
        python = shutil.which("python2.7") or shutil.which("python2")
        if python is None:
            raise SkipTest("no python2.7 on PATH (the parso check above covers the syntax)")
        try:
            version = subprocess.run([python, "-c", "import sys; print(sys.version_info[0])"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        if version != "2":
            raise SkipTest("%s does not run a Python 2 (pyenv shim without a version?)" % python)
        script = (
            "import json, sys\n"
            "sys.path.insert(0, %r)\n"
            "from cuckoodist_service import request as r\n"
            "c = r.check_config({'crits_url': u'https://crits/', 'api_user': u'u', 'api_key': u'k',"
            " 'priority': u'2', 'timeout': 60, 'package': u'exe'})\n"
            "s = {'name': u'a.exe', 'md5': u'%s', 'sha256': None, 'object_id': u'oid',"
            " 'source': u'src', 'data': b'MZ\\x00'}\n"
            "out = [r.build_request(c, s, u'aid', now=1796191602.5)]\n"
            "c['submit_mode'] = 'reference'\n"
            "out.append(r.build_request(c, s, u'aid'))\n"
            "print(json.dumps(out, sort_keys=True))\n"
        ) % (os.path.join(CONTRIB, "cuckoodist_service"), "a" * 32)
        # request.py alone: the package's __init__ needs CRITs and Django.
        script = script.replace("from cuckoodist_service import request as r", "import request as r")
        done = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        inline, reference = json.loads(done.stdout)
        self.assertEqual(inline["file"], {"name": "a.exe", "data": "TVoA"})
        self.assertEqual(inline["payload"], {"package": "exe", "timeout": "60"})
        self.assertEqual(inline["priority"], 2)
        self.assertEqual(inline["requested_at"], 1796191602.5)
        self.assertEqual(inline["crits_data"]["crits_url"], "https://crits")
        self.assertEqual(reference["file"], {"name": "a.exe", "md5": "a" * 32})
