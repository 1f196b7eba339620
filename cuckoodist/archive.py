# -*- test-case-name: tests.test_archive -*-
"""
Unpack the dropped-files archive Cuckoo returns, treating it as hostile.

C{GET /tasks/report/<id>/dropped} answers with a tar (bzip2 by default, gzip
or plain with Cuckoo 2.0's C{?tar=}) whose members are C{files/...}.  The
files in it were written by malware, and the archive itself crossed a
network, so nothing in it is trusted:

  - Member names are never used as paths.  Each regular file is written
    under a name we generate inside a private (0700) temporary directory;
    the member name is kept only for display and logs, cleaned of control
    characters.
  - Only regular, non-empty files are written.  Directories, links, devices,
    fifos, empty files and names that are absolute or climb with C{..} are
    skipped with a reason: Cuckoo never produces them.
  - The archive is read as a stream, one member at a time, and every byte is
    counted as it is decompressed and as it is written, so a compression
    bomb stops at the caller's limit instead of filling memory or the disk.
  - A truncated or corrupt archive is an L{ArchiveError}, never a partial
    success, and the temporary directory is removed whatever happens.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import unicodedata
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional

import attrs

from cuckoodist.errors import PermanentError

__all__ = ["ArchiveError", "ExtractedFile", "unpacked"]

_CHUNK = 64 * 1024
_NAME_LIMIT = 255
_MEMBER_LIMIT = 1024
# Decompressed bytes allowed per member on top of file contents: the header
# block, padding, and long-name or pax headers.
_PER_ENTRY_ALLOWANCE = 4096
# Decompressed bytes allowed per archive on top of that: end-of-archive
# blocks and record padding, with room to spare.
_ARCHIVE_ALLOWANCE = 1024 * 1024

_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class ArchiveError(PermanentError):
    """
    The archive is corrupt, truncated or over a limit; fetching it again
    will not help.
    """


@attrs.frozen
class ExtractedFile:
    """
    One file unpacked from an archive.

    @ivar name: a safe display name: the member's base name without control
        characters, never empty, at most 255 characters.
    @ivar member: the member's full name as it was in the archive, with
        control and undecodable characters escaped, for logs.
    @ivar path: where the contents are, inside the private directory, under a
        name we generated.
    @ivar size: the size in bytes.
    @ivar md5: the hex MD5 of the contents (CRITs identifies samples by it).
    @ivar sha256: the hex SHA-256 of the contents.
    """

    name: str
    member: str
    path: str
    size: int
    md5: str
    sha256: str


@contextmanager
def unpacked(
    archive_path: str,
    *,
    max_files: int,
    max_total_bytes: int,
    tmp_root: Optional[str] = None,
) -> Iterator[tuple[list[ExtractedFile], list[str]]]:
    """
    Unpack a dropped-files archive into a private temporary directory for
    the duration of a C{with} block.

    The compression (bzip2, gzip, xz or none) is recognised from the content,
    not the name.  An empty archive, or an empty file, holds no files.

    @param archive_path: the archive, as downloaded.
    @param max_files: the most regular files to accept.  The number of
        entries of any kind is also bounded, at C{4 * max_files + 64}, so
        that an archive of millions of empty directories cannot keep us busy.
    @param max_total_bytes: the most bytes of file contents to write.
    @param tmp_root: the directory to create the private directory in; the
        system default if C{None}.
    @return: a context manager yielding C{(files, skipped)}: the files in
        archive order, and one printable reason per skipped member.  The
        directory and everything in it is removed when the block ends, by
        return, exception or generator close.
    @raise ArchiveError: the archive is corrupt or truncated, or holds more
        than C{max_files} files, more than C{max_total_bytes} of contents or
        too many entries.
    @raise OSError: the archive cannot be opened, or writing fails (such as
        a full disk) -- conditions of this machine, not of the archive.
    """
    if max_files < 0 or max_total_bytes < 0:
        raise ValueError("limits must not be negative")
    workdir = tempfile.mkdtemp(prefix="cuckoodist-dropped-", dir=tmp_root)
    try:
        os.chmod(workdir, 0o700)
        with open(archive_path, "rb") as raw:
            found = _extract(raw, workdir, max_files, max_total_bytes)
        yield found
    finally:
        shutil.rmtree(workdir)


class _Empty(Exception):
    """
    The (decompressed) archive has no bytes at all.
    """


class _StrictTarInfo(tarfile.TarInfo):
    """
    A L{tarfile.TarInfo} that tells a proper end of archive from a
    truncated or corrupt one.

    L{tarfile.TarFile.next} treats a missing, short or garbled header after
    the first member as the end of the archive, so an archive cut short at a
    header boundary would silently lose its remaining members.  Only an
    all-zero block (C{EOFHeaderError}) is a real end here.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        position = tar.fileobj.tell()
        try:
            return super().fromtarfile(tar)
        except tarfile.EmptyHeaderError:
            if position == 0:
                raise _Empty() from None
            raise ArchiveError(
                "archive is truncated: no end-of-archive marker") from None
        except tarfile.TruncatedHeaderError:
            raise ArchiveError("archive is truncated inside a header") from None
        except tarfile.InvalidHeaderError:
            if position == 0:
                raise ArchiveError("not a tar archive") from None
            raise ArchiveError(
                f"corrupt member header at offset {position}") from None


class _CappedReader:
    """
    A file-like reader that counts the bytes it passes on and fails once
    they exceed a cap, so decompression never runs past it.

    @ivar total: bytes read so far.
    @ivar cap: the most bytes that may be read; L{_extract} raises it by a
        small allowance per member seen, so that header overhead is paid for
        by members actually present rather than by the largest number the
        limits would allow.
    """

    def __init__(self, source: BinaryIO, cap: int) -> None:
        self._source = source
        self.cap = cap
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        """
        Read at most C{size} bytes; everything (up to the cap) if negative.

        @raise ArchiveError: the data is corrupt, or the cap is exceeded.
        """
        if size is None or size < 0:
            size = self.cap - self.total + 1
        try:
            data = self._source.read(size)
        except _READ_ERRORS as error:
            raise ArchiveError(f"corrupt archive: {_describe(error)}") from None
        self.total += len(data)
        if self.total > self.cap:
            raise ArchiveError(
                f"archive decompresses to more than {self.cap} bytes")
        return data


def _describe(error: BaseException) -> str:
    """
    A one-line description of a decoding error, safe to log.
    """
    return _printable(f"{type(error).__name__}: {error}")


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """
    Wrap C{raw} in the decompressor its first bytes call for.
    """
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _extract(
    raw: BinaryIO, workdir: str, max_files: int, max_total_bytes: int
) -> tuple[list[ExtractedFile], list[str]]:
    """
    Unpack every acceptable member of the archive in C{raw} into
    C{workdir}.
    """
    if os.fstat(raw.fileno()).st_size == 0:
        return [], []
    max_entries = 4 * max_files + 64
    source = _decompressed(raw)
    reader = _CappedReader(source, max_total_bytes + _ARCHIVE_ALLOWANCE)
    try:
        try:
            tar = tarfile.open(fileobj=reader, mode="r|", tarinfo=_StrictTarInfo,
                               encoding="utf-8", errors="surrogateescape")
        except _Empty:
            return [], []
        except _READ_ERRORS as error:
            raise ArchiveError(f"corrupt archive: {_describe(error)}") from None
        files: list[ExtractedFile] = []
        skipped: list[str] = []
        written = entries = 0
        with tar:
            while (member := _next_member(tar)) is not None:
                # Stream mode keeps every header it has read; we need none.
                tar.members.clear()
                entries += 1
                reader.cap += _PER_ENTRY_ALLOWANCE
                if entries > max_entries:
                    raise ArchiveError(f"archive has more than {max_entries} entries")
                printable = _printable(member.name, _MEMBER_LIMIT)
                reason = _skip_reason(member)
                if reason is not None:
                    skipped.append(f"{printable}: {reason}")
                    continue
                if len(files) >= max_files:
                    raise ArchiveError(f"archive has more than {max_files} files")
                if member.size > max_total_bytes - written:
                    raise ArchiveError(
                        f"archive contents exceed {max_total_bytes} bytes")
                extracted = _write_member(
                    tar, member, printable,
                    os.path.join(workdir, f"file-{len(files):06d}"),
                    max_total_bytes - written, max_total_bytes)
                written += extracted.size
                files.append(extracted)
        if source is not raw:
            # Read to the end so a truncated compressed stream is noticed
            # even when the tar inside looked complete.
            while reader.read(_CHUNK):
                pass
        return files, skipped
    finally:
        if source is not raw:
            source.close()


def _next_member(tar: tarfile.TarFile) -> Optional[tarfile.TarInfo]:
    """
    The next member header, or C{None} at a proper end of archive.
    """
    try:
        return tar.next()
    except _READ_ERRORS as error:
        raise ArchiveError(f"corrupt archive: {_describe(error)}") from None


def _skip_reason(member: tarfile.TarInfo) -> Optional[str]:
    """
    Why a member is not unpacked, or C{None} if it is a regular file to
    unpack.
    """
    if member.isdir():
        return "directory"
    if member.issym():
        return f"symbolic link to {_printable(member.linkname, _MEMBER_LIMIT)}"
    if member.islnk():
        return f"hard link to {_printable(member.linkname, _MEMBER_LIMIT)}"
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "fifo"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return f"unsupported member type {member.type!r}"
    name = member.name.replace("\\", "/")
    if name.startswith("/") or name[1:2] == ":":
        return "absolute name"
    if ".." in name.split("/"):
        return "name climbs out of the archive"
    if member.size == 0:
        return "empty file"
    return None


def _write_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    printable: str,
    path: str,
    allowance: int,
    max_total_bytes: int,
) -> ExtractedFile:
    """
    Copy one regular member to C{path}, hashing and counting as it goes.

    @param allowance: how many more bytes may be written in all.
    """
    try:
        contents = tar.extractfile(member)
    except _READ_ERRORS as error:
        raise ArchiveError(f"corrupt archive: {_describe(error)}") from None
    assert contents is not None
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600),
                   "wb") as output:
        while True:
            try:
                chunk = contents.read(_CHUNK)
            except _READ_ERRORS as error:
                raise ArchiveError(
                    f"corrupt archive in {printable}: {_describe(error)}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > allowance:
                raise ArchiveError(f"archive contents exceed {max_total_bytes} bytes")
            md5.update(chunk)
            sha256.update(chunk)
            output.write(chunk)
    if size != member.size:
        raise ArchiveError(f"archive is truncated inside {printable}")
    return ExtractedFile(
        name=_display_name(member.name),
        member=printable,
        path=path,
        size=size,
        md5=md5.hexdigest(),
        sha256=sha256.hexdigest(),
    )


def _unprintable(char: str) -> bool:
    """
    Whether a character could disturb a terminal, a log line or a table
    cell: controls, format characters (such as bidirectional overrides),
    surrogates left by undecodable bytes, private use, unassigned, and line
    and paragraph separators.
    """
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


def _printable(text: str, limit: int = _MEMBER_LIMIT) -> str:
    """
    C{text} with unprintable characters escaped, cut to C{limit}.
    """
    escaped = "".join(
        ascii(char)[1:-1] if _unprintable(char) else char for char in text[:limit])
    return escaped + ("..." if len(text) > limit else "")


def _display_name(member_name: str) -> str:
    """
    A safe display name: the base name, unprintable characters removed.
    """
    base = member_name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = "".join(char for char in base if not _unprintable(char)).strip()
    if base in ("", ".", ".."):
        return "unnamed"
    return base[:_NAME_LIMIT]
