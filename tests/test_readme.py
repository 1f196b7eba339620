"""
The README's shell commands work as the README shows them.

Every C{```sh} block of README.md is preceded by a comment that says what
this test does with it:

    <!-- tests/test_readme.py runs this -->
    <!-- tests/test_readme.py runs this with ARGS appended -->
    <!-- tests/test_readme.py checks that .ci/run runs exactly this -->

Each line of a block is one command. It is run with bash, from the top of
the checkout, with a time limit, and must exit 0. "with ARGS appended" bounds
a command that would otherwise run for long (C{--help}, a small sample
count, C{--simulate} for apt-get). A block without such a comment fails the
test, so a new command in the README cannot go untested.

The test needs the checkout (README.md, scripts/) and its C{.venv}, as
C{bash scripts/test} sets them up: elsewhere, e.g. in the Debian package
build, which copies only C{tests/}, it is skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

_MARKER = "tests/test_readme.py"
_BLOCK = re.compile(r"^```sh\n(?P<body>.*?)^```", re.S | re.M)
_COMMENT = re.compile(r"<!--\s*(?P<text>.*?)\s*-->\s*\Z", re.S)
_RUNS = re.compile(re.escape(_MARKER) + r" runs this(?: with (?P<args>.+) appended)?")
_CI = _MARKER + " checks that .ci/run runs exactly this"

#: Seconds a command may take, by the start of its line; the default is 120.
_LIMITS = {"bash scripts/demo": 300, "bash scripts/test": 600}

_SKIP = None
if not (os.path.isfile(README) and os.path.isdir(os.path.join(ROOT, "scripts"))):
    _SKIP = "not in a checkout: no README.md or scripts/ next to tests/"
elif not os.access(os.path.join(ROOT, ".venv", "bin", "python"), os.X_OK):
    _SKIP = "no .venv in the checkout (bash scripts/test makes it)"


def sh_blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """
    The C{```sh} blocks of C{text}: for each, the text of the HTML comment
    on the line just before it (or C{None}) and its non-blank lines.
    """
    blocks = []
    for match in _BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n")
        last_line = before.rsplit("\n", 1)[-1]
        comment = _COMMENT.search(last_line)
        lines = [line for line in match.group("body").splitlines() if line.strip()]
        blocks.append((comment.group("text") if comment else None, lines))
    return blocks


def command_argv(line: str, appended: str | None) -> list[str]:
    """
    The words of one README line, its trailing comment dropped, with
    C{appended} (shell words) added at the end.
    """
    argv = shlex.split(line, comments=True)
    if appended:
        argv += shlex.split(appended)
    return argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(workdir: str) -> dict[str, str]:
    """
    The caller's environment without what would make a command work that
    fails for a user: no PYTHONPATH, no virtualenv of the caller's. The demo
    gets free ports and a directory of its own, so that it runs beside
    another demo.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "CUCKOODIST_VENV")}
    path = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if not p.startswith(os.path.join(ROOT, ".venv")))
    env["CUCKOO_PORT"] = str(_free_port())
    env["CRITS_PORT"] = str(_free_port())
    env["CUCKOODIST_DEMO_DIR"] = os.path.join(workdir, "demo-run")
    return env


class ReadmeBlocksTests(unittest.TestCase):
    """
    The README's blocks are all marked, and parsed as intended.
    """

    def test_every_block_is_marked(self) -> None:
        if _SKIP:
            raise unittest.SkipTest(_SKIP)
        with open(README, encoding="utf-8") as f:
            blocks = sh_blocks(f.read())
        self.assertTrue(blocks, "README.md shows no ```sh block")
        for comment, lines in blocks:
            self.assertTrue(
                comment is not None and (_RUNS.fullmatch(comment) or comment == _CI),
                f"the ```sh block {lines} has no '<!-- {_MARKER} runs this -->' comment "
                f"(or '... with ARGS appended', or '{_CI}') on the line before it")

    def test_parsing(self) -> None:
        text = ("x\n<!-- tests/test_readme.py runs this with --help appended -->\n```sh\n"
                "a b   # note\n\nc\n```\n```sh\nd\n```\n")
        self.assertEqual(sh_blocks(text), [
            ("tests/test_readme.py runs this with --help appended", ["a b   # note", "c"]),
            (None, ["d"]),
        ])
        self.assertEqual(command_argv("bash scripts/demo   # optional: count", "2"),
                         ["bash", "scripts/demo", "2"])


class ReadmeCommandsTests(unittest.TestCase):
    """
    Each command of the README, run as shown (with the marked bound).
    """

    def setUp(self) -> None:
        if _SKIP:
            raise unittest.SkipTest(_SKIP)
        with open(README, encoding="utf-8") as f:
            self.blocks = sh_blocks(f.read())

    def run_command(self, argv: list[str], cwd: str = ROOT, limit: float = 120) -> str:
        with tempfile.TemporaryDirectory(prefix="cuckoodist-readme-") as workdir:
            shown = shlex.join(argv)
            try:
                done = subprocess.run(
                    argv, cwd=cwd, env=_environment(workdir), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=limit,
                    start_new_session=True)
            except subprocess.TimeoutExpired as e:
                self.fail(f"{shown} did not finish within {limit:g} s:\n"
                          f"{(e.output or b'').decode(errors='replace')[-3000:]}")
            output = done.stdout.decode(errors="replace")
            self.assertEqual(done.returncode, 0,
                             f"{shown} (in {cwd}) exited {done.returncode}:\n{output[-3000:]}")
            return output

    def test_commands(self) -> None:
        ran = []
        for comment, lines in self.blocks:
            match = _RUNS.fullmatch(comment or "")
            if not match:
                continue
            for line in lines:
                argv = command_argv(line, match.group("args"))
                limit = next((v for k, v in _LIMITS.items() if line.startswith(k)), 120)
                self.run_command(argv, limit=limit)
                ran.append(line)
        self.assertTrue(ran)

    def test_ci_runs_the_test_command(self) -> None:
        """
        The test command is not run here (it runs this test): .ci/run must
        run exactly it, and it must be the README's.
        """
        ci_blocks = [lines for comment, lines in self.blocks if comment == _CI]
        self.assertEqual(ci_blocks, [["bash scripts/test"]])
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
            code = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        self.assertEqual(code[-1], "exec " + ci_blocks[0][0])

    def test_entry_points_from_any_directory(self) -> None:
        """
        The venv's twistd finds the cuckoodist plugin, and the cuckoodist
        script runs, from outside the checkout: no PYTHONPATH needed.
        """
        venv_bin = os.path.join(ROOT, ".venv", "bin")
        out = self.run_command([os.path.join(venv_bin, "twistd"), "--help"], cwd="/")
        self.assertRegex(out, r"(?m)^ +cuckoodist +")
        out = self.run_command([os.path.join(venv_bin, "twistd"), "-n", "cuckoodist", "--help"], cwd="/")
        self.assertIn("--config", out)
        out = self.run_command([os.path.join(venv_bin, "cuckoodist"), "--help"], cwd="/")
        self.assertIn("simulate", out)
