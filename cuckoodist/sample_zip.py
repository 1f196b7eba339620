# -*- test-case-name: tests.test_sample_zip -*-
"""
Samples fetched by reference: the zip CRITs sends, opened as hostile input.

CRITs answers C{GET /api/v1/samples/?c-md5=MD5&file=1} with a zip made by
C{zip -P} (legacy ZipCrypto, password C{infected} unless configured
otherwise), holding one member named by the md5, or with the plain text
C{No files found!} (see C{docs/peers.md#crits-samples-download}).

The standard library decrypts ZipCrypto in pure Python, at a few MB/s; here
libarchive (through C{libarchive-c}, in C, in a worker thread: ctypes
releases the GIL) decrypts and inflates at the speed of the disk, block by
block, so memory stays at one block whatever the sample's size.  The
password never leaves the process (no command line shows it).

Before any byte is decrypted, the archive's directory is read with bounds of
our own: exactly one member, named by the md5, ZipCrypto or no encryption
(never WinZip AES), stored or deflated, declared no larger than
C{max_size}.  While extracting, the bytes are counted, so a member that
inflates past what its header declares (a zip bomb with a lying header) is
stopped at once.  Every refusal is a L{SampleRefused}, a permanent error
whose reason says what was wrong.
"""

import hashlib
import os
import struct
import threading
import zipfile
from typing import BinaryIO

import attrs
import libarchive
from libarchive.exception import ArchiveError

from cuckoodist.errors import PermanentError

__all__ = [
    "SampleRefused",
    "SampleMissing",
    "WrongPassword",
    "DigestMismatch",
    "SampleTooLarge",
    "BadArchive",
    "Extracted",
    "NOT_FOUND",
    "check_archive",
    "extract_sample",
]

#: CRITs' whole answer when no sample matches (or none the user may see).
NOT_FOUND = b"No files found!"

_LOCAL = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 65535
#: One member's central directory entry: its header, name, extra and comment.
_MAX_DIRECTORY = 3 * 65536
_BLOCK = 1024 * 1024
_AES = 99
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class SampleRefused(PermanentError):
    """
    The sample CRITs sent cannot be analysed; C{reason} says why.
    """


class SampleMissing(SampleRefused):
    """
    CRITs has no sample with that md5 (or none the API user may see).
    """


class WrongPassword(SampleRefused):
    """
    The archive does not open with the configured C{zip_password}.
    """


class DigestMismatch(SampleRefused):
    """
    The extracted sample is not the one the request named.
    """


class SampleTooLarge(SampleRefused):
    """
    The sample is larger than C{max_sample_size}.
    """


class BadArchive(SampleRefused):
    """
    The archive is not what CRITs makes: truncated, corrupt, more than one
    member, a wrong name, another encryption or compression.
    """


@attrs.frozen
class Extracted:
    """
    A sample that passed every check.
    """

    size: int
    md5: str
    sha256: str


def _shown(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("latin-1")
    return "".join(c if c.isprintable() and ord(c) < 127 else "?" for c in text)


def check_archive(path: str, md5: str, max_size: int) -> zipfile.ZipInfo:
    """
    Read the archive's directory, within bounds, and check that it is what
    CRITs makes for the sample C{md5}.  Nothing is decrypted.

    @return: the one member's entry.
    @raise SampleRefused: why not.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        head = fp.read(64)
        if head.strip() == NOT_FOUND:
            raise SampleMissing(f"CRITs has no sample with md5 {md5} (it answered 'No files found!')")
        if not head.startswith(_LOCAL):
            raise BadArchive(f"CRITs sent no zip archive for md5 {md5}: its answer begins {_shown(head)!r}")
        tail_size = min(size, _EOCD_SIZE + _MAX_COMMENT)
        fp.seek(size - tail_size)
        tail = fp.read(tail_size)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise BadArchive("the sample archive is truncated or corrupt: it has no end-of-directory record")
    _, _, _, on_disk, total, directory_size, _, _ = struct.unpack("<4s4H2LH", tail[at : at + _EOCD_SIZE])
    if total != 1 or on_disk != 1:
        raise BadArchive(f"the sample archive holds {total} members; CRITs sends exactly one, named by the md5")
    if directory_size > _MAX_DIRECTORY:
        raise BadArchive(f"the sample archive's directory is {directory_size} bytes, too large for one member")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, struct.error) as e:
        raise BadArchive(f"the sample archive is truncated or corrupt: {_shown(str(e).encode(), 200)}") from None
    if len(members) != 1:
        raise BadArchive(f"the sample archive holds {len(members)} members; CRITs sends exactly one, named by the md5")
    member = members[0]
    if member.filename != md5:
        raise BadArchive(f"the sample archive's member is named {_shown(member.filename.encode('utf-8', 'replace'))!r}, not the md5 {md5}")
    if member.compress_type == _AES or member.flag_bits & 0x40:
        raise BadArchive("the sample archive is encrypted with AES (or strong encryption), not the ZipCrypto of CRITs' zip -P")
    if member.compress_type not in _METHODS:
        raise BadArchive(f"the sample archive uses compression method {member.compress_type}; only stored and deflated are accepted")
    if member.file_size > max_size:
        raise SampleTooLarge(f"the sample is {member.file_size} bytes, over max_sample_size ({max_size} bytes)")
    return member


def extract_sample(
    path: str,
    sink: BinaryIO,
    md5: str,
    password: str,
    max_size: int,
    sha256: str = "",
    stop: threading.Event | None = None,
) -> Extracted:
    """
    Check the archive at C{path}, then decrypt and inflate its member into
    C{sink}, counting and hashing as it goes.  Blocking: run it in a thread.

    @param md5: the sample's md5 (lower-case hex), which names the member.
    @param sha256: checked too when given.
    @param stop: set it to abandon the extraction at the next block.
    @raise SampleRefused: the archive or the sample is not acceptable.
    """
    member = check_archive(path, md5, max_size)
    declared = member.file_size
    md5_hash, sha256_hash = hashlib.md5(), hashlib.sha256()
    written = 0
    try:
        with libarchive.file_reader(path, format_name="zip", passphrase=password or None) as archive:
            entry = next(iter(archive), None)
            if entry is None or entry.pathname != md5:
                raise BadArchive("the sample archive's first entry is not the member its directory names")
            for block in entry.get_blocks(_BLOCK):
                written += len(block)
                if written > declared:
                    raise BadArchive(f"the sample archive's member inflates past the {declared} bytes its header declares")
                if stop is not None and stop.is_set():
                    raise SampleRefused("extraction abandoned: the stage is stopping")
                sink.write(block)
                md5_hash.update(block)
                sha256_hash.update(block)
    except ArchiveError as e:
        message = _shown(str(getattr(e, "msg", e)).encode("utf-8", "replace"), 200)
        if "passphrase" in message.lower():
            raise WrongPassword("the sample archive does not open with the configured zip_password (wrong password)") from None
        raise BadArchive(f"the sample archive is truncated or corrupt (or the zip_password is wrong): {message}") from None
    if written != declared:
        raise BadArchive(f"the sample archive's member holds {written} bytes, its header declares {declared}")
    got = Extracted(size=written, md5=md5_hash.hexdigest(), sha256=sha256_hash.hexdigest())
    if got.md5 != md5:
        raise DigestMismatch(f"the sample CRITs sent has md5 {got.md5}, not the requested {md5}")
    if sha256 and got.sha256 != sha256:
        raise DigestMismatch(f"the sample CRITs sent has sha256 {got.sha256}, not the requested {sha256}")
    return got
