# -*- test-case-name: tests.test_tap -*-
"""
Start-up checks of the files and directories a configuration names.

L{cuckoodist.config} checks that a configuration makes sense; it does not
touch the disk, so it can be tested (and fuzzed) as a pure function.  What
the disk says matters just as much, and it matters early: a C{log_file}
in a missing directory used to end the start-up with a long traceback, and
an unwritable C{dump_dir} was only found when the first dump failed, so
the overseer retried that dump (and told CRITs) in a tight loop.  Here the
daemon finds such problems before it consumes anything, and reports each
as one L{ConfigError} line naming the key.
"""

from __future__ import annotations

import os
import tempfile

from cuckoodist.config import Config
from cuckoodist.errors import ConfigError

__all__ = ["preflight"]


def preflight(config: Config) -> None:
    """
    Check that the daemon will be able to write its log and its dumps.

    Opening C{log_file} for append creates it when missing, as the daemon
    would anyway; a missing C{dump_dir} is created with mode 0700, as
    L{cuckoodist.dump.DumpStore} would.

    @raise ConfigError: naming the first key whose path is unusable.
    """
    if config.log_file:
        _check_log_file(config.log_file, ("log_file",))
    for index, stage in enumerate(config.stages):
        dump_dir = getattr(stage, "dump_dir", None)
        if dump_dir is not None:
            _check_dump_dir(dump_dir, ("stages", index, "dump_dir"))


def _why(error: Exception) -> str:
    """
    The operating system's reason, short and on one line.
    """
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return "the name cannot be encoded for this file system"


def _check_log_file(path: str, where: tuple) -> None:
    directory = os.path.dirname(path) or os.curdir
    try:
        if not os.path.isdir(directory):
            raise ConfigError(f"the directory {directory!r} does not exist", where)
        with open(path, "a", encoding="utf-8"):
            pass
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot open {path!r} for appending ({_why(e)})", where) from None


def _check_dump_dir(path: str, where: tuple) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot create the directory {path!r} ({_why(e)})", where) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".preflight-", dir=path)
    except OSError as e:
        raise ConfigError(f"directory {path!r} is not writable ({_why(e)})", where) from None
    os.close(fd)
    os.unlink(probe)
