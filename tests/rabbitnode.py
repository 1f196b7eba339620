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

A L{RabbitCluster} is several such nodes joined into one RabbitMQ cluster
(L{private_cluster} starts one for a test): each node has its own name,
AMQP and distribution ports, and data and log directories under one base
directory; they share one private C{epmd} (nodes find each other through
it) and one Erlang cookie, made for the cluster.  The cookie is not the
user's C{~/.erlang.cookie}: that one may open the shared node to
C{rabbitmqctl}, which a test must never be able to do.
"""

import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from itertools import count
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlencode

__all__ = [
    "RABBITMQ_BIN", "SKIP_REASON", "RabbitCluster", "RabbitNode", "RabbitNodeError", "TestPKI", "private_cluster",
    "private_node",
]

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
    @param name: the node name's part before C{@localhost}; by default
        C{cdtest-<pid>-<n>}.
    @param base: the directory for the node's files, which must not exist
        yet: it is created, and removed by L{stop}; by default a new
        temporary directory.
    @param epmd_port: the port of an C{epmd} someone else runs and stops
        (a L{RabbitCluster}'s); by default the node runs its own.
    @param cookie: the Erlang cookie; by default a random one.
    @param app_env: settings of the C{rabbit} application that
        C{rabbitmq.conf} cannot express (what C{advanced.config} would
        hold), given to the Erlang VM as C{-rabbit KEY VALUE}; values are
        Erlang terms.

    @ivar node_name: C{cdtest-<pid>-<n>@localhost} unless named.
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
        name: str | None = None,
        base: str | None = None,
        epmd_port: int | None = None,
        cookie: str | None = None,
        app_env: Mapping[str, Any] | None = None,
    ) -> None:
        if SKIP_REASON is not None:
            raise RabbitNodeError(SKIP_REASON)
        self._app_env = dict(app_env or {})
        self.node_name = f"{name or f'cdtest-{os.getpid()}-{next(_serial)}'}@localhost"
        if base is None:
            self.base = tempfile.mkdtemp(prefix=f"{self.node_name.split('@')[0]}-")
        else:
            self.base = base
            os.makedirs(base)
        self.amqp_port = _free_port()
        self.dist_port = _free_port()
        self._owns_epmd = epmd_port is None
        self.epmd_port = _free_port() if epmd_port is None else epmd_port
        self.amqps_port = _free_port() if tls else None
        self.pki = TestPKI(os.path.join(self.base, "pki")) if tls else None
        self.start_timeout = start_timeout
        self.startup_seconds: float | None = None
        self._server: subprocess.Popen | None = None
        self._epmd: subprocess.Popen | None = None
        self._home = os.path.join(self.base, "home")
        os.makedirs(self._home)
        os.makedirs(os.path.join(self.base, "log"))
        with open(os.open(os.path.join(self._home, ".erlang.cookie"), os.O_WRONLY | os.O_CREAT, 0o400), "w") as f:
            f.write(cookie or secrets.token_hex(20).upper())
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
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": " ".join(
                ["-kernel inet_dist_use_interface {127,0,0,1}"]
                + [f"-rabbit {key} {value}" for key, value in self._app_env.items()]
            ),
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
        if not self._owns_epmd:
            return
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
        self.launch()
        return self.wait_started()

    def launch(self) -> None:
        """
        Start the node's processes and return at once; L{wait_started}
        waits for it to listen.  Nodes launched together boot in parallel.
        """
        if self._server is not None:
            raise RabbitNodeError(f"{self.node_name} is already running")
        self._began = time.monotonic()
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

    def wait_started(self) -> "RabbitNode":
        """
        Wait until a L{launch}ed node answers AMQP.

        @raise RabbitNodeError: the node exited or did not listen in time.
        """
        began = self._began
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

    @property
    def running(self) -> bool:
        """
        Whether the node's processes are up (started, not stopped or killed).
        """
        return self._server is not None and self._server.poll() is None

    def kill(self) -> None:
        """
        SIGKILL the node (its whole process group, the Erlang VM included),
        as a machine crash would end it; its files are kept.
        """
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

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


def _in_parallel(calls: Sequence[Callable[[], object]]) -> None:
    """
    Run blocking C{calls} in threads and wait for all of them.

    @raise BaseException: the first error any of them raised.
    """
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as e:  # reported to the caller below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class RabbitCluster:
    """
    A private RabbitMQ cluster of C{size} L{RabbitNode}s under C{base}
    (C{base/node1}, ...), named C{cdq1-<pid>-<n>@localhost}, ...

    The nodes boot in parallel, then every node but the first joins the
    first with C{rabbitmqctl join_cluster}, one after the other.  They share
    one private C{epmd} and a cookie made for the cluster.  Blocking, like
    L{RabbitNode}.

    @ivar nodes: the nodes, the join target first.
    @ivar startup_seconds: how long L{start} took, joins included.
    """

    def __init__(
        self,
        base: str,
        size: int = 3,
        settings: Mapping[str, Any] | None = None,
        start_timeout: float = 90.0,
        app_env: Mapping[str, Any] | None = None,
    ) -> None:
        if SKIP_REASON is not None:
            raise RabbitNodeError(SKIP_REASON)
        self.base = base
        self.epmd_port = _free_port()
        self.startup_seconds: float | None = None
        self._epmd: subprocess.Popen | None = None
        cookie = secrets.token_hex(20).upper()
        serial = f"{os.getpid()}-{next(_serial)}"
        os.makedirs(base, exist_ok=True)
        self.nodes = [
            RabbitNode(
                settings,
                start_timeout=start_timeout,
                name=f"cdq{i}-{serial}",
                base=os.path.join(base, f"node{i}"),
                epmd_port=self.epmd_port,
                cookie=cookie,
                app_env=app_env,
            )
            for i in range(1, size + 1)
        ]

    def start(self) -> "RabbitCluster":
        """
        Boot the nodes and join them into one cluster.

        @raise RabbitNodeError: a node did not start or join; the message
            carries its log.
        """
        began = time.monotonic()
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", RabbitNode.host],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_started()
        seed, joining = self.nodes[0], self.nodes[1:]
        # Stopping the application is safe in parallel; joins and restarts
        # are not (two nodes syncing their schema from the seed at once can
        # fail to start mnesia), so they go one node at a time.
        _in_parallel([node.stop_app for node in joining])
        for node in joining:
            self._join(node, seed)
        running = json.loads(seed.ctl("cluster_status", "--formatter", "json")).get("running_nodes", [])
        missing = [n.node_name for n in self.nodes if n.node_name not in running]
        if missing:
            raise RabbitNodeError(f"{missing} not running in the cluster, which runs {running}")
        self.startup_seconds = time.monotonic() - began
        return self

    @staticmethod
    def _join(node: RabbitNode, seed: RabbitNode) -> None:
        """
        Join C{node}, whose application is stopped, to C{seed}'s cluster.
        A node that just booted for the first time holds nothing, so it
        needs no reset first.
        """
        try:
            node.ctl("join_cluster", seed.node_name)
        except RabbitNodeError as e:
            raise RabbitNodeError(f"{node.node_name} could not join {seed.node_name}: {e}\n{node.log_tail()}") from None
        node.start_app()

    def amqp_urls(self) -> list[str]:
        """
        One C{amqp://} URL per node, in order.
        """
        return [node.amqp_url() for node in self.nodes]

    def node_at(self, port: int) -> RabbitNode:
        """
        The node whose AMQP listener is on C{port}.
        """
        for node in self.nodes:
            if node.amqp_port == port:
                return node
        raise LookupError(f"no node of the cluster listens on port {port}")

    def queue_leaders(self, node: RabbitNode | None = None) -> dict[str, str]:
        """
        Quorum queue name -> the node leading it, as one node (the first
        running one by default) sees it.
        """
        node = node or next(n for n in self.nodes if n.running)
        listing = node.ctl("list_queues", "--no-table-headers", "name", "leader")
        return dict(line.split("\t")[:2] for line in listing.splitlines() if line.count("\t") >= 1)

    def stop(self) -> None:
        """
        Kill every node (their data is thrown away, so a clean shutdown
        would only take longer), stop the cluster's epmd and remove
        C{base}.  Safe to call twice, and after a failed L{start}.
        """
        _in_parallel([node.kill for node in self.nodes])
        for node in self.nodes:
            node.stop(remove=False)
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def private_cluster(testcase: Any, size: int = 3, settings: Mapping[str, Any] | None = None, **kwargs: Any) -> RabbitCluster:
    """
    Start a L{RabbitCluster} under the test's temporary directory, stopped
    and removed when the test is cleaned up, whether it passed or failed
    (also when the start itself fails).

    @param kwargs: passed to L{RabbitCluster} (C{app_env}).
    """
    cluster = RabbitCluster(os.path.abspath(testcase.mktemp()), size, settings, **kwargs)
    testcase.addCleanup(cluster.stop)
    return cluster.start()
