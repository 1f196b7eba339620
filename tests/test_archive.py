# -*- test-case-name: tests.test_archive -*-
"""
Tests for L{cuckoodist.archive}: a hostile-archive suite.

Every archive is built here, with crafted L{tarfile.TarInfo} headers or raw
blocks.  Each test unpacks into a private sandbox and checks that nothing
appears outside the temporary directory and that the directory is gone
afterwards.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import random
import re
import stat
import tarfile
import time
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.archive import ArchiveError, ExtractedFile, unpacked
from cuckoodist.errors import PermanentError

GENEROUS = dict(max_files=100, max_total_bytes=10**7)


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """
    A crafted member header and its contents.
    """
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def build(members: list[tuple[tarfile.TarInfo, bytes]], compression: str = "bz2",
          tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    """
    An archive of C{members}, compressed with C{compression} (C{"bz2"},
    C{"gz"}, C{"xz"} or C{""}).
    """
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tar_format,
                      encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def raw_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """
    One raw tar header block, for archives too big to build through
    L{tarfile}.
    """
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def snapshot(root: str) -> set[str]:
    """
    Every path under C{root}, relative to it.
    """
    found = set()
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


SAMPLE = b"MZ\x90\x00" + bytes(range(256)) * 40
NOTE = "caf\xe9 \u2603\n".encode("utf-8")


class HostileArchiveTests(SynchronousTestCase):
    """
    Tests for L{unpacked} against crafted archives.
    """

    def setUp(self) -> None:
        self.sandbox = os.path.abspath(self.mktemp())
        self.tmp_root = os.path.join(self.sandbox, "tmp")
        os.makedirs(self.tmp_root)
        self.archive = os.path.join(self.sandbox, "dropped")

    def unpack(self, data: bytes, **limits: int):
        """
        Unpack C{data}; check the private directory while it exists and that
        nothing outside it changed or remains.

        @return: the files, what each held, and the skip reasons.
        """
        limits = {**GENEROUS, **limits}
        with open(self.archive, "wb") as output:
            output.write(data)
        before = snapshot(self.sandbox)
        with unpacked(self.archive, tmp_root=self.tmp_root, **limits) as (files, skipped):
            [workdir] = os.listdir(self.tmp_root)
            workdir = os.path.join(self.tmp_root, workdir)
            self.assertEqual(stat.S_IMODE(os.stat(workdir).st_mode), 0o700)
            self.assertEqual(sorted(os.listdir(workdir)),
                             sorted(os.path.basename(f.path) for f in files))
            contents = []
            for extracted in files:
                self.assertEqual(os.path.dirname(extracted.path), workdir)
                self.assertRegex(os.path.basename(extracted.path), r"^file-\d{6}$")
                self.assertEqual(stat.S_IMODE(os.lstat(extracted.path).st_mode), 0o600)
                with open(extracted.path, "rb") as handle:
                    contents.append(handle.read())
        self.assertEqual(snapshot(self.sandbox), before)
        self.assertEqual(os.listdir(self.tmp_root), [])
        return files, contents, skipped

    def unpack_fails(self, data: bytes, **limits: int) -> ArchiveError:
        """
        Unpack C{data}, expecting L{ArchiveError} before the block runs, and
        check nothing is left behind.
        """
        limits = {**GENEROUS, **limits}
        with open(self.archive, "wb") as output:
            output.write(data)
        before = snapshot(self.sandbox)
        with self.assertRaises(ArchiveError) as caught:
            with unpacked(self.archive, tmp_root=self.tmp_root, **limits):
                self.fail("archive unexpectedly accepted")
        self.assertEqual(snapshot(self.sandbox), before)
        self.assertEqual(os.listdir(self.tmp_root), [])
        self.assertIsInstance(caught.exception, PermanentError)
        return caught.exception

    def assert_files(self, files: list[ExtractedFile], contents: list[bytes],
                     expected: list[tuple[str, bytes]]) -> None:
        """
        Assert the unpacked files are C{expected} (display name, contents),
        in order, with correct sizes and hashes.
        """
        self.assertEqual([(f.name, data) for f, data in zip(files, contents)], expected)
        self.assertEqual(len(files), len(expected))
        for extracted, (_, data) in zip(files, expected):
            self.assertEqual(extracted.size, len(data))
            self.assertEqual(extracted.md5, hashlib.md5(data).hexdigest())
            self.assertEqual(extracted.sha256, hashlib.sha256(data).hexdigest())

    def test_compressions(self) -> None:
        """
        bzip2 (Cuckoo's default), gzip, xz and plain tar are recognised by
        content, whatever the file is called, and give the same files.
        """
        for compression in ("bz2", "gz", "xz", ""):
            files, contents, skipped = self.unpack(build([
                member("files/", kind=tarfile.DIRTYPE),
                member("files/sample.exe", SAMPLE),
                member("files/note.txt", NOTE),
            ], compression))
            self.assert_files(files, contents,
                              [("sample.exe", SAMPLE), ("note.txt", NOTE)])
            self.assertEqual(files[0].member, "files/sample.exe")
            self.assertEqual(skipped, ["files: directory"])

    def test_pax_format(self) -> None:
        """
        A pax archive with a long non-ASCII name unpacks, keeping the name
        for display.
        """
        name = "files/" + "\u00e9" * 150 + ".dll"
        files, contents, _ = self.unpack(build([member(name, NOTE)], "gz",
                                               tarfile.PAX_FORMAT))
        self.assert_files(files, contents, [(name[6:], NOTE)])

    def test_many_files_at_the_limits(self) -> None:
        """
        An honest archive exactly at both limits, with long names in GNU and
        pax headers and tiny files (so headers outweigh contents), unpacks:
        the allowance for header overhead is enough.
        """
        for tar_format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
            members = [member(f"files/{n:04d}-" + "\u00e9" * 300, bytes([n % 256]))
                       for n in range(400)]
            files, contents, _ = self.unpack(build(members, "bz2", tar_format),
                                             max_files=400, max_total_bytes=400)
            self.assertEqual(contents, [bytes([n % 256]) for n in range(400)])

    def test_traversal_and_absolute_names(self) -> None:
        """
        Members whose names climb out (C{../../x}, C{files/../../x},
        backslashes too) or are absolute are skipped, and nothing is written
        where they point.
        """
        outside = os.path.join(self.sandbox, "escaped")
        files, contents, skipped = self.unpack(build([
            member("../../escaped", b"1"),
            member("files/../../escaped", b"2"),
            member("files\\..\\..\\escaped", b"3"),
            member(outside, b"4"),
            member("C:\\escaped", b"5"),
            member("files/ok..name", b"6"),
        ]))
        self.assert_files(files, contents, [("ok..name", b"6")])
        self.assertEqual(skipped, [
            "../../escaped: name climbs out of the archive",
            "files/../../escaped: name climbs out of the archive",
            "files\\..\\..\\escaped: name climbs out of the archive",
            f"{outside}: absolute name",
            "C:\\escaped: absolute name",
        ])

    def test_links_devices_fifos_directories_empty(self) -> None:
        """
        Symbolic links (even to /etc/passwd), hard links, character and
        block devices, fifos, directories and empty files are skipped with
        a reason; the regular files beside them are unpacked.
        """
        files, contents, skipped = self.unpack(build([
            member("files/a.exe", SAMPLE),
            member("files/passwd", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
            member("files/hard", kind=tarfile.LNKTYPE, linkname="files/a.exe"),
            member("files/null", kind=tarfile.CHRTYPE),
            member("files/disk", kind=tarfile.BLKTYPE),
            member("files/pipe", kind=tarfile.FIFOTYPE),
            member("files/sub", kind=tarfile.DIRTYPE),
            member("files/empty", b""),
            member("files/b.txt", NOTE),
        ]))
        self.assert_files(files, contents, [("a.exe", SAMPLE), ("b.txt", NOTE)])
        self.assertEqual(skipped, [
            "files/passwd: symbolic link to /etc/passwd",
            "files/hard: hard link to files/a.exe",
            "files/null: device node",
            "files/disk: device node",
            "files/pipe: fifo",
            "files/sub: directory",
            "files/empty: empty file",
        ])

    def test_unsupported_types(self) -> None:
        """
        Contiguous and unknown member types are skipped, their data passed
        over, and the next member still unpacks.
        """
        data = raw_header("files/odd", 1000, b"Z") + bytes(1024)
        data += raw_header("files/cont", 10, tarfile.CONTTYPE) + b"0123456789".ljust(512, b"\0")
        data += raw_header("files/ok", len(NOTE)) + NOTE.ljust(512, b"\0") + bytes(1024)
        files, contents, skipped = self.unpack(gzip.compress(data))
        self.assert_files(files, contents, [("ok", NOTE)])
        self.assertEqual(skipped, ["files/odd: unsupported member type b'Z'",
                                   "files/cont: unsupported member type b'7'"])

    def test_hostile_display_names(self) -> None:
        """
        Display names lose control, bidirectional-override and undecodable
        characters and are never empty; the member name keeps them, escaped.
        """
        files, _, _ = self.unpack(build([
            member("files/evil\x1b[31m\n.exe", b"1"),
            member("files/invoice\u202eexe.pdf", b"2"),
            member("files/\x01\x02", b"3"),
            member("files/\udcff.bin", b"4"),
            member("files/trailing\\", b"5"),
        ]))
        self.assertEqual([f.name for f in files], [
            "evil[31m.exe", "invoiceexe.pdf", "unnamed", ".bin", "trailing"])
        self.assertEqual([f.member for f in files], [
            "files/evil\\x1b[31m\\n.exe", "files/invoice\\u202eexe.pdf",
            "files/\\x01\\x02", "files/\\udcff.bin", "files/trailing\\"])

    def test_empty_archives(self) -> None:
        """
        A 0-byte body, an empty tar, and compressed empty tars or empty
        streams hold no files.
        """
        for data in [b"", build([], ""), build([], "bz2"), build([], "gz"),
                     bz2.compress(b""), gzip.compress(b"")]:
            self.assertEqual(self.unpack(data), ([], [], []))

    def test_too_many_files(self) -> None:
        """
        More regular files than C{max_files} is an error; exactly
        C{max_files} is fine.
        """
        archive = build([member(f"files/{n}", b"x") for n in range(5)])
        self.assertEqual(len(self.unpack(archive, max_files=5)[0]), 5)
        error = self.unpack_fails(archive, max_files=4)
        self.assertEqual(error.reason, "archive has more than 4 files")

    def test_too_many_entries(self) -> None:
        """
        An archive of endless skipped entries (here directories) is stopped
        too.
        """
        archive = build([member(f"d{n}", kind=tarfile.DIRTYPE) for n in range(200)])
        error = self.unpack_fails(archive, max_files=2)
        self.assertEqual(error.reason, "archive has more than 72 entries")

    def test_total_bytes(self) -> None:
        """
        Contents adding up to exactly C{max_total_bytes} unpack; one byte
        less of allowance is an error.
        """
        archive = build([member("files/a", b"a" * 10), member("files/b", b"b" * 20)])
        self.assertEqual(len(self.unpack(archive, max_total_bytes=30)[0]), 2)
        error = self.unpack_fails(archive, max_total_bytes=29)
        self.assertEqual(error.reason, "archive contents exceed 29 bytes")

    def test_bz2_bomb_single_member(self) -> None:
        """
        A bzip2 bomb declaring one 30 GB file (a few KB on the wire) stops at
        once, without writing it.
        """
        zeros = bz2.compress(bytes(300 * 2**20))
        bomb = bz2.compress(raw_header("files/bomb", 100 * 300 * 2**20)) + zeros * 100
        self.assertLess(len(bomb), 100_000)
        started = time.perf_counter()
        error = self.unpack_fails(bomb, max_total_bytes=5 * 2**20)
        self.assertEqual(error.reason, f"archive contents exceed {5 * 2**20} bytes")
        self.assertLess(time.perf_counter() - started, 30)

    def test_bz2_bomb_many_members(self) -> None:
        """
        A bzip2 bomb of ten thousand 1 MiB members (10 GiB unpacked, under
        1 MB compressed) stops at the byte cap: it would otherwise take
        minutes and fill the disk.
        """
        one = bz2.compress(raw_header("files/bomb", 2**20)) + bz2.compress(bytes(2**20))
        bomb = one * 10_000
        self.assertLess(len(bomb), 2_000_000)
        started = time.perf_counter()
        error = self.unpack_fails(bomb, max_files=100_000, max_total_bytes=5 * 2**20)
        self.assertEqual(error.reason, f"archive contents exceed {5 * 2**20} bytes")
        self.assertLess(time.perf_counter() - started, 30)

    def test_bz2_bomb_in_skipped_member(self) -> None:
        """
        A bomb hidden in a member we skip (an unknown type whose data tar
        readers pass over by decompressing it) is stopped by the cap on
        decompressed bytes, which stays close to C{max_total_bytes} however
        many files the limits would allow.
        """
        zeros = bz2.compress(bytes(300 * 2**20))
        bomb = bz2.compress(raw_header("files/x", 100 * 300 * 2**20, b"Z")) + zeros * 100
        started = time.perf_counter()
        error = self.unpack_fails(bomb, max_files=100_000, max_total_bytes=2**20)
        match = re.match(r"^archive decompresses to more than (\d+) bytes$", error.reason)
        self.assertIsNotNone(match, error.reason)
        self.assertLess(int(match.group(1)), 2**20 + 2 * 2**20)
        self.assertLess(time.perf_counter() - started, 30)

    def test_truncated_compressed(self) -> None:
        """
        bzip2, gzip and xz archives cut short anywhere, even in the last few
        bytes after the tar data, are errors.
        """
        payload = random.Random(7).randbytes(200_000)
        for compression in ("bz2", "gz", "xz"):
            archive = build([member("files/a", payload), member("files/b", NOTE)],
                            compression)
            for cut in (len(archive) // 3, len(archive) - 4):
                self.unpack_fails(archive[:cut])

    def test_truncated_plain(self) -> None:
        """
        A plain tar cut inside a member's data, inside a header, or at a
        header boundary (no end-of-archive marker) is an error, not a short
        list of files.
        """
        archive = build([member("files/a", b"a" * 700), member("files/b", NOTE)], "")
        second_header = 512 + 1024
        error = self.unpack_fails(archive[:600])
        self.assertIn("files/a", error.reason)
        self.assertEqual(self.unpack_fails(archive[:second_header + 100]).reason,
                         "archive is truncated inside a header")
        self.assertEqual(self.unpack_fails(archive[:second_header]).reason,
                         "archive is truncated: no end-of-archive marker")

    def test_corrupt(self) -> None:
        """
        Garbage, a garbled header after the first member, and a corrupted
        compressed stream are errors.
        """
        self.assertEqual(self.unpack_fails(b"this is not a tar archive" * 50).reason,
                         "not a tar archive")
        archive = bytearray(build([member("files/a", b"a"), member("files/b", b"b")], ""))
        archive[1024 + 148:1024 + 156] = b"9999999\0"  # second header's checksum
        self.assertEqual(self.unpack_fails(bytes(archive)).reason,
                         "corrupt member header at offset 1024")
        compressed = bytearray(build([member("files/a", SAMPLE)], "bz2"))
        compressed[len(compressed) // 2] ^= 0xFF
        self.assertRegex(self.unpack_fails(bytes(compressed)).reason, "^corrupt archive")


class LifetimeTests(SynchronousTestCase):
    """
    The private directory lives exactly as long as the C{with} block.
    """

    def setUp(self) -> None:
        self.tmp_root = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp_root)
        self.archive = os.path.join(self.tmp_root, "..", "dropped.tar.bz2")
        with open(self.archive, "wb") as output:
            output.write(build([member("files/a.exe", SAMPLE)]))

    def test_removed_on_exception(self) -> None:
        """
        An exception in the block propagates and the directory is removed.
        """
        class Boom(Exception):
            pass

        path: Optional[str] = None
        with self.assertRaises(Boom):
            with unpacked(self.archive, max_files=5, max_total_bytes=10**6,
                          tmp_root=self.tmp_root) as (files, _):
                path = files[0].path
                self.assertTrue(os.path.exists(path))
                raise Boom()
        self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.tmp_root), [])

    def test_removed_on_generator_close(self) -> None:
        """
        Closing the context manager's generator without leaving the block
        (GeneratorExit) also removes the directory.
        """
        manager = unpacked(self.archive, max_files=5, max_total_bytes=10**6,
                           tmp_root=self.tmp_root)
        files, _ = manager.__enter__()
        self.assertTrue(os.path.exists(files[0].path))
        manager.gen.close()
        self.assertEqual(os.listdir(self.tmp_root), [])

    def test_negative_limits(self) -> None:
        """
        Negative limits are a programming error, caught before anything is
        created.
        """
        with self.assertRaises(ValueError):
            with unpacked(self.archive, max_files=-1, max_total_bytes=1,
                          tmp_root=self.tmp_root):
                pass
        self.assertEqual(os.listdir(self.tmp_root), [])

    def test_default_tmp_root(self) -> None:
        """
        Without C{tmp_root} the system temporary directory is used, and
        cleaned up the same way.
        """
        with unpacked(self.archive, max_files=5, max_total_bytes=10**6) as (files, _):
            workdir = os.path.dirname(files[0].path)
            self.assertTrue(re.search(r"cuckoodist-dropped-", workdir))
        self.assertFalse(os.path.exists(workdir))
