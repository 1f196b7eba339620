# -*- test-case-name: tests.test_amqp_tls -*-
"""
TLS settings for C{amqps://} connections.

The defaults are the safe ones: the broker's certificate must chain to a
trusted CA (the system store unless C{cacertfile} names one) and must be
issued for the host we dialled (or for C{server_name_indication}).  Only
C{verify=verify_none} turns both checks off, for brokers with self-signed
certificates on a trusted network.  The files are read once, when the
connection service is built, so that a bad file stops the daemon at start
rather than failing every reconnect.
"""

import re
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl

from cuckoodist.errors import ConfigError

__all__ = ["client_tls_options"]

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} file: {e.strerror}", ("amqp",)) from None


def _trust_root(ca_file: str | None) -> Any:
    if ca_file is None:
        return ssl.platformTrust()
    blocks = _PEM_CERTIFICATE.findall(_read(ca_file, "cacertfile"))
    if not blocks:
        raise ConfigError("cacertfile holds no PEM certificate", ("amqp",))
    try:
        return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
    except SSL.Error:
        raise ConfigError("cacertfile holds a certificate that cannot be parsed", ("amqp",)) from None


def _client_certificate(cert_file: str | None, key_file: str | None) -> Any:
    if cert_file is None or key_file is None:
        return None
    try:
        return ssl.PrivateCertificate.loadPEM(_read(cert_file, "certfile") + b"\n" + _read(key_file, "keyfile"))
    except (SSL.Error, ValueError):
        raise ConfigError("certfile and keyfile do not hold a matching PEM certificate and key", ("amqp",)) from None


def client_tls_options(amqp: Any) -> Any:
    """
    Build the client TLS policy for the C{amqp} configuration section.

    @return: an C{IOpenSSLClientConnectionCreator}.
    @raise ConfigError: a file cannot be read or parsed.
    """
    client_certificate = _client_certificate(amqp.cert_file, amqp.key_file)
    if not amqp.verify:
        # CertificateOptions sends no SNI; without verification there is no
        # name to check either.
        extra = {}
        if client_certificate is not None:
            extra = {"privateKey": client_certificate.privateKey.original,
                     "certificate": client_certificate.original}
        return ssl.CertificateOptions(verify=False, **extra)
    return ssl.optionsForClientTLS(
        amqp.server_name or amqp.host,
        trustRoot=_trust_root(amqp.ca_file),
        clientCertificate=client_certificate,
    )
