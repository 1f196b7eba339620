"""
Facts about the source tree that reviews kept finding wrong by hand.
"""

import os
import re

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = re.compile(r"^# -\*- test-case-name: ([\w.,]+) -\*-$")


def _modules():
    for top in ("cuckoodist", os.path.join("twisted", "plugins")):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


class HeaderTests(SynchronousTestCase):
    def test_test_case_names_exist(self) -> None:
        """
        Every C{test-case-name} header names test modules that exist, so
        C{trial --testmodule} (and an editor's "run this module's tests")
        runs something.
        """
        wrong = []
        for path in _modules():
            with open(path, encoding="utf-8") as fp:
                match = HEADER.match(fp.readline().strip())
            for name in (match.group(1).split(",") if match else ()):
                if not os.path.exists(os.path.join(REPO, *name.split(".")) + ".py"):
                    wrong.append(f"{os.path.relpath(path, REPO)} -> {name}")
        self.assertEqual(wrong, [])

    def test_nothing_points_outside_the_repository(self) -> None:
        """
        Nothing shipped cites files that only exist on the team's machines.
        """
        found = []
        for path in _modules():
            with open(path, encoding="utf-8") as fp:
                for number, line in enumerate(fp, 1):
                    if "shared/reference" in line or "/work/" in line:
                        found.append(f"{os.path.relpath(path, REPO)}:{number}")
        self.assertEqual(found, [])
