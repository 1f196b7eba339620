"""
The zip CRITs sends, opened as hostile input: only the archive CRITs makes
is accepted, and every other one is refused with its reason, in bounded
time and memory.
"""

import hashlib
import io
import shutil
import time

from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.sample_zip import (
    BadArchive, DigestMismatch, SampleMissing, SampleRefused, SampleTooLarge, WrongPassword, extract_sample,
)
from cuckoodist.simulators.crits import make_zip, zipcrypto_archive

DATA = b"MZ\x90\x00" + b"sample body " * 1000
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()


class ExtractTests(SynchronousTestCase):
    def _write(self, body: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as fp:
            fp.write(body)
        return path

    def _extract(self, body: bytes, md5: str = MD5, password: str = "infected", max_size: int = 1 << 20,
                 sha256: str = "") -> bytes:
        sink = io.BytesIO()
        extract_sample(self._write(body), sink, md5, password, max_size, sha256)
        return sink.getvalue()

    def _refused(self, kind: type, words: str, body: bytes, **kwargs) -> None:
        started = time.monotonic()
        with self.assertRaises(kind) as caught:
            self._extract(body, **kwargs)
        self.assertIn(words, caught.exception.reason)
        self.assertLess(time.monotonic() - started, 5)

    def test_python_archive(self) -> None:
        """
        A ZipCrypto archive in CRITs' format yields the sample, checked
        against md5 and sha256.
        """
        self.assertEqual(self._extract(zipcrypto_archive([(MD5, DATA)], "infected"), sha256=SHA256), DATA)

    def test_zip_command(self) -> None:
        """
        The archive C{zip -r -j -P} writes (what CRITs runs) opens the same.
        """
        if shutil.which("zip") is None:
            raise self.skipTest("zip is not installed")
        out = self.mktemp()
        make_zip(out, [(MD5, DATA)], "s3cret")
        with open(out, "rb") as fp:
            self.assertEqual(self._extract(fp.read(), password="s3cret"), DATA)

    def test_not_found(self) -> None:
        """
        CRITs' C{No files found!} means the sample is missing.
        """
        self._refused(SampleMissing, "No files found", b"No files found!")

    def test_wrong_password(self) -> None:
        """
        An archive that does not open with the password says so.
        """
        self._refused(WrongPassword, "wrong password", zipcrypto_archive([(MD5, DATA)], "other"))

    def test_digest_mismatch(self) -> None:
        """
        A member named by the md5 whose bytes have another md5, or another
        sha256 than the request gave, is refused.
        """
        self._refused(DigestMismatch, "not the requested", zipcrypto_archive([(MD5, b"other bytes")], "infected"))
        self._refused(DigestMismatch, "sha256", zipcrypto_archive([(MD5, DATA)], "infected"), sha256="0" * 64)

    def test_oversize(self) -> None:
        """
        A member declared larger than max_sample_size is refused before
        any decryption.
        """
        self._refused(SampleTooLarge, "max_sample_size", zipcrypto_archive([(MD5, DATA)], "infected"), max_size=100)

    def test_bomb_with_lying_header(self) -> None:
        """
        A member that inflates past the size its header declares (a zip
        bomb) is stopped, in bounded time.
        """
        zeros = bytes(50 * 1024 * 1024)
        md5 = hashlib.md5(zeros).hexdigest()
        body = zipcrypto_archive([(md5, zeros)], None, declared_sizes={md5: 1000})
        self.assertLess(len(body), 1024 * 1024)
        self._refused(SampleRefused, "", body, md5=md5)

    def test_hostile_shapes(self) -> None:
        """
        More than one member, a member not named by the md5, AES
        encryption, another compression method, truncation and a body that
        is no zip are each refused with their reason.
        """
        good = zipcrypto_archive([(MD5, DATA)], "infected")
        cases = [
            ("2 members", zipcrypto_archive([(MD5, DATA), ("other", b"x")], "infected")),
            ("not the md5", zipcrypto_archive([("../../etc/passwd", DATA)], "infected")),
            ("AES", zipcrypto_archive([(MD5, DATA)], None, method=99)),
            ("compression method 12", zipcrypto_archive([(MD5, DATA)], None, method=12)),
            ("truncated", good[: len(good) // 2]),
            ("truncated", good[:-30]),
            ("no zip archive", b"<html>Server Error</html>"),
        ]
        for words, body in cases:
            self._refused(BadArchive, words, body)

    def test_unencrypted(self) -> None:
        """
        An unencrypted archive of the right shape is accepted: the digests,
        not the encryption, vouch for the sample.
        """
        self.assertEqual(self._extract(zipcrypto_archive([(MD5, DATA)], None, method=0)), DATA)
