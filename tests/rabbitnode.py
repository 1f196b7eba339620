"""
A private RabbitMQ node for tests that must not touch the shared broker.

Some tests change broker settings (C{consumer_timeout}), need a TLS
listener, or stop and restart the broker.  None of that may happen to the
broker on 127.0.0.1:5672, which other engineers and CI jobs share.  A
L{RabbitNode} is a throw-away broker: its own node name, its own AMQP,
distribution and epmd ports, its own Erlang cookie, and its data, logs and
configuration under one temporary directory that is removed on stop.

It runs its own C{epmd} on a private port (as a child process it can stop
by pid), so it never registers with, nor depends on, the shared epmd.  It
runs as the current user, root included: the Debian wrapper in
C{/usr/sbin} would switch to the C{rabbitmq} user and read the shared
node's C{rabbitmq-env.conf}, so the scripts under C{/usr/lib/rabbitmq/bin}
are called directly, with C{RABBITMQ_CONF_ENV_FILE} pointing at an empty
file.

All calls block (a start takes a few seconds; see L{RabbitNode.start}).
Call them from C{setUp}, or wrap them in C{deferToThread} when the reactor
must keep running (for instance to watch a client reconnect while the node
is down).

Usage::

    from twisted.trial.unittest import TestCase
    from tests.rabbitnode import SKIP_REASON, private_node

    class ConsumerTimeoutTests(TestCase):
        skip = SKIP_REASON          # None when rabbitmq-server is installed

        def setUp(self):
            # started now, stopped and deleted when the test ends
            self.node = private_node(self, settings={"consumer_timeout": 2000})

        def test_something(self):
            url = self.node.amqp_url()          # amqp://guest:guest@127.0.0.1:PORT/
            ...
            self.node.stop_app()                # broker down, node (and data) kept
            self.node.start_app()
            self.node.restart()                 # full stop and start, same data and ports

With C{tls=True} the node also listens for AMQPS with certificates made
for the test (L{TestPKI}); C{node.amqps_url(...)} builds a URL with the
C{cacertfile}/C{certfile}/C{keyfile} query parameters, and
C{require_client_cert=True} makes the node refuse clients without one.
"""

import datetime
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from itertools import count
from typing import Any, Mapping
from urllib.parse import quote, urlencode

__all__ = ["RABBITMQ_BIN", "SKIP_REASON", "RabbitNode", "RabbitNodeError", "TestPKI", "private_node"]

#: Where the real (unwrapped) RabbitMQ scripts live on Debian and Ubuntu.
RABBITMQ_BIN = os.environ.get("CUCKOODIST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin")


def _skip_reason() -> str | None:
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not os.access(os.path.join(RABBITMQ_BIN, tool), os.X_OK):
            return f"rabbitmq-server is not installed ({RABBITMQ_BIN}/{tool} not found)"
    if shutil.which("epmd") is None:
        return "epmd (Erlang) is not on PATH"
    return None


#: Why tests needing a private node cannot run here, or C{None}.
SKIP_REASON = _skip_reason()

_serial = count(1)


class RabbitNodeError(Exception):
    """
    The private node did not start or stop; the message carries the tail
    of its log.
    """


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestPKI:
    """
    A certificate authority, a server certificate for C{localhost} and
    C{127.0.0.1}, and a client certificate, written as PEM files into
    C{directory}.

    @ivar ca: path of the CA certificate.
    @ivar server_cert: path of the server certificate; C{server_key} its key.
    @ivar client_cert: path of the client certificate; C{client_key} its key.
    """

    def __init__(self, directory: str, name: str = "cdtest") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        import ipaddress

        os.makedirs(directory, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)

        def name_of(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write_key(key: Any, path: str) -> None:
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(pem)

        def write_cert(cert: Any, path: str) -> None:
            with open(path, "wb") as f:
                f.write(cert.public_bytes(serialization.Encoding.PEM))

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name_of(f"{name} test CA"))
            .issuer_name(name_of(f"{name} test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        def issue(cn: str, usage: Any, sans: list) -> tuple[Any, Any]:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(name_of(cn))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            return key, builder.sign(ca_key, hashes.SHA256())

        server_key, server_cert = issue(
            "localhost",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        client_key, client_cert = issue(f"{name}-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

        self.ca = os.path.join(directory, "ca.pem")
        self.server_cert = os.path.join(directory, "server.pem")
        self.server_key = os.path.join(directory, "server.key")
        self.client_cert = os.path.join(directory, "client.pem")
        self.client_key = os.path.join(directory, "client.key")
        write_cert(ca_cert, self.ca)
        write_cert(server_cert, self.server_cert)
        write_key(server_key, self.server_key)
        write_cert(client_cert, self.client_cert)
        write_key(client_key, self.client_key)


class RabbitNode:
    """
    One private RabbitMQ node.  Nothing runs until L{start}.

    @param settings: extra C{rabbitmq.conf} settings, e.g.
        C{{"consumer_timeout": 2000}}; values are written as given.
    @param tls: also listen for AMQPS on L{amqps_port}, with L{pki}.
    @param require_client_cert: with C{tls}, refuse clients that present
        no certificate signed by the test CA.
    @param start_timeout: seconds to wait for the AMQP listener.

    @ivar node_name: C{cdtest-<pid>-<n>@localhost}.
    @ivar amqp_port: the plain AMQP listener, on 127.0.0.1.
    @ivar amqps_port: the TLS listener, or C{None}.
    @ivar pki: the L{TestPKI}, or C{None}.
    @ivar startup_seconds: how long the last start took.
    """

    host = "127.0.0.1"
    username = "guest"
    password = "guest"

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        *,
        tls: bool = False,
        require_client_cert: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        if SKIP_REASON is not None:
            raise RabbitNodeError(SKIP_REASON)
        self.node_name = f"cdtest-{os.getpid()}-{next(_serial)}@localhost"
        self.base = tempfile.mkdtemp(prefix=f"{self.node_name.split('@')[0]}-")
        self.amqp_port = _free_port()
        self.dist_port = _free_port()
        self.epmd_port = _free_port()
        self.amqps_port = _free_port() if tls else None
        self.pki = TestPKI(os.path.join(self.base, "pki")) if tls else None
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        self._server: subprocess.Popen | None = None
        self._epmd: subprocess.Popen | None = None
        self._home = os.path.join(self.base, "home")
        os.makedirs(self._home)
        os.makedirs(os.path.join(self.base, "log"))
        cookie = os.path.join(self._home, ".erlang.cookie")
        with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o400), "w") as f:
            f.write(secrets.token_hex(20).upper())
        self._write_config(dict(settings or {}), require_client_cert)

    # -- files ----------------------------------------------------------

    def _write_config(self, settings: dict, require_client_cert: bool) -> None:
        lines = {
            "listeners.tcp.1": f"{self.host}:{self.amqp_port}",
            "log.console": "false",
            "log.file.level": "info",
            # A shared CI box may be short of disk or memory; a private test
            # node must not block publishers because of it.
            "disk_free_limit.absolute": "1",
            "vm_memory_high_watermark.relative": "0.9",
        }
        if self.pki is not None:
            lines.update({
                "listeners.ssl.1": f"{self.host}:{self.amqps_port}",
                "ssl_options.cacertfile": self.pki.ca,
                "ssl_options.certfile": self.pki.server_cert,
                "ssl_options.keyfile": self.pki.server_key,
                "ssl_options.verify": "verify_peer" if require_client_cert else "verify_none",
                "ssl_options.fail_if_no_peer_cert": "true" if require_client_cert else "false",
            })
        lines.update({k: str(v) for k, v in settings.items()})
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in lines.items())
        with open(os.path.join(self.base, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(self.base, "rabbitmq-env.conf"), "w").close()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": self._home,
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.base, "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.base, "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.base, "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
            "RABBITMQ_PID_FILE": os.path.join(self.base, "rabbit.pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    @property
    def log_path(self) -> str:
        """
        The node's main log file.
        """
        return os.path.join(self.base, "log", f"{self.node_name}.log")

    def log_tail(self, lines: int = 30) -> str:
        """
        The end of the node's log (and of its console output), for error
        messages.
        """
        out = []
        for path in (self.log_path, os.path.join(self.base, "console.log")):
            try:
                with open(path, errors="replace") as f:
                    out.extend(f.readlines()[-lines:])
            except OSError:
                pass
        return "".join(out)

    # -- URLs -----------------------------------------------------------

    def amqp_url(self, vhost: str = "/", password: str | None = None) -> str:
        """
        An C{amqp://} URL for this node, as guest unless told otherwise.
        """
        pw = self.password if password is None else password
        return f"amqp://{self.username}:{quote(pw, safe='')}@{self.host}:{self.amqp_port}/{quote(vhost, safe='')}"

    def amqps_url(self, host: str = "localhost", **query: str) -> str:
        """
        An C{amqps://} URL for the TLS listener; C{query} becomes the
        RabbitMQ URI query (C{cacertfile=node.pki.ca}, ...).
        """
        if self.amqps_port is None:
            raise RabbitNodeError("this node was made without tls=True")
        q = f"?{urlencode(query)}" if query else ""
        return f"amqps://{self.username}:{self.password}@{host}:{self.amqps_port}/%2F{q}"

    # -- life cycle -----------------------------------------------------

    def _start_epmd(self) -> None:
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", self.host],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self) -> "RabbitNode":
        """
        Start the node and return once its AMQP listener answers an AMQP
        protocol header (about 3-4 s on two cores).

        @raise RabbitNodeError: the node exited or did not listen in time.
        """
        if self._server is not None:
            raise RabbitNodeError(f"{self.node_name} is already running")
        began = time.monotonic()
        self._start_epmd()
        console = open(os.path.join(self.base, "console.log"), "ab")
        try:
            self._server = subprocess.Popen(
                [os.path.join(RABBITMQ_BIN, "rabbitmq-server")],
                env=self._env(), cwd=self.base,
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            console.close()
        deadline = began + self.start_timeout
        while not self._answers_amqp():
            if self._server.poll() is not None:
                self._server = None
                raise RabbitNodeError(f"{self.node_name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(remove=False)
                raise RabbitNodeError(f"{self.node_name} did not listen within {self.start_timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - began
        return self

    def _answers_amqp(self) -> bool:
        """
        Whether the listener accepts a connection and answers the protocol
        header with a method frame (C{connection.start}).
        """
        try:
            with socket.create_connection((self.host, self.amqp_port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(1) == b"\x01"
        except OSError:
            return False

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """
        Run C{rabbitmqctl} against this node and return its output.

        @raise RabbitNodeError: it failed.
        """
        done = subprocess.run(
            [os.path.join(RABBITMQ_BIN, "rabbitmqctl"), "-n", self.node_name, "-q", *args],
            env=self._env(), cwd=self.base, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def stop_app(self) -> None:
        """
        Stop the RabbitMQ application but keep the Erlang node: every
        client connection is closed and the listeners go away.
        """
        self.ctl("stop_app")

    def start_app(self) -> None:
        """
        Start the application again after L{stop_app}; returns once AMQP
        answers.
        """
        self.ctl("start_app")
        deadline = time.monotonic() + self.start_timeout
        while not self._answers_amqp():
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self.node_name} did not listen after start_app:\n{self.log_tail()}")
            time.sleep(0.05)

    def restart(self) -> None:
        """
        Stop the whole node and start it again with the same data
        directory, ports and settings (durable queues survive).
        """
        self.stop(remove=False)
        self.start()

    def stop(self, remove: bool = True, timeout: float = 30.0) -> None:
        """
        Stop the node (SIGTERM, which RabbitMQ handles as a clean
        shutdown; SIGKILL to its own process group if that takes longer
        than C{timeout}) and its private epmd.  Safe to call twice.

        @param remove: also delete the temporary directory.
        """
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        if remove:
            epmd, self._epmd = self._epmd, None
            if epmd is not None and epmd.poll() is None:
                epmd.terminate()
                epmd.wait()
            shutil.rmtree(self.base, ignore_errors=True)


def private_node(testcase: Any, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> RabbitNode:
    """
    Start a L{RabbitNode} for one test and stop it (and delete its files)
    when the test is cleaned up.

    @param testcase: a trial or unittest C{TestCase}; its C{addCleanup} is
        used.
    @param kwargs: passed to L{RabbitNode}.
    """
    node = RabbitNode(settings, **kwargs)
    testcase.addCleanup(node.stop)
    return node.start()
