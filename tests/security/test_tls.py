"""TLS settings reach the wire: a worker talks AMQP over TLS with its CA, client certificate and
key (through a TLS-terminating proxy in front of the local broker), refuses a broker whose
certificate it cannot verify, and refuses a database that offers no TLS when TLS is asked for.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.faults import WorkerPool, wait_until
from helpers.rabbit import RabbitProbe
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from chimp_worker.broker import HEADER_REASON, BrokerOptions, Publisher
from chimp_worker.config import load_settings
from chimp_worker.errors import BrokerUnavailableError
from chimp_worker.events import InspectionCompleted
from chimp_worker.ispyb.database import make_engine, make_session_factory
from chimp_worker.ispyb.schema import create_all
from chimp_worker.wiring import make_pipeline

AMQP = ("127.0.0.1", 5672)


@dataclass
class TlsFiles:
    ca: Path
    server_cert: trustme.LeafCert
    client_cert: Path  # certificate and key, PEM
    client_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(directory / "ca.pem")
    client = authority.issue_cert("chimp-worker@test")
    client.cert_chain_pems[0].write_to_path(directory / "client.pem")
    client.private_key_pem.write_to_path(directory / "client.key")
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=authority.issue_cert("localhost"),
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


@dataclass
class TlsTerminator:
    """Accepts TLS on 127.0.0.1 (client certificate required), forwards plain TCP to target."""

    context: ssl.SSLContext
    target: tuple[str, int]
    listener: socket.socket = field(init=False)
    client_subjects: list[str] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)
    _stopping: bool = False

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            secure = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.handshake_errors.append(str(error))
            raw.close()
            return
        subject = dict(item[0] for item in secure.getpeercert()["subject"] or ())
        alt = secure.getpeercert().get("subjectAltName", ())
        self.client_subjects.append(subject.get("commonName") or str(alt))
        upstream = socket.create_connection(self.target)
        secure.settimeout(None)
        for source, sink in ((secure, upstream), (upstream, secure)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def terminator(tls_files: TlsFiles) -> Iterator[TlsTerminator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls_files.ca))
    context.verify_mode = ssl.CERT_REQUIRED  # the worker must present its certificate
    tls_files.server_cert.configure_cert(context)
    proxy = TlsTerminator(context, AMQP)
    yield proxy
    proxy.stop()


def test_a_worker_speaks_amqp_over_tls_with_its_ca_certificate_and_key(
    queue_env: dict[str, str],
    workers: WorkerPool,
    terminator: TlsTerminator,
    tls_files: TlsFiles,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    env = {
        **queue_env,
        "CHIMP_AMQP_URL": f"amqps://guest:guest@localhost:{terminator.port}/%2F",
        "CHIMP_AMQP_TLS_CA_FILE": str(tls_files.ca),
        "CHIMP_AMQP_TLS_CERT_FILE": str(tls_files.client_cert),
        "CHIMP_AMQP_TLS_KEY_FILE": str(tls_files.client_key),
        "CHIMP_DATABASE_URL": f"sqlite:///{tmp_path / 'ispyb.sqlite'}",
    }
    create_all(env["CHIMP_DATABASE_URL"])  # the worker checks its tables before consuming
    worker = workers.start(env, name="tls")
    worker.wait_for_log("broker_session_open", timeout_s=60)
    assert terminator.client_subjects, "the worker presented its client certificate"
    assert not terminator.handshake_errors
    probe = RabbitProbe(amqp_url)
    try:  # a message consumed and dead-lettered (a confirmed publish) over the TLS connection
        probe.publish_raw(env["CHIMP_EVENTS_QUEUE"], b"{not json")
        dlq = f"dlq.{env['CHIMP_EVENTS_QUEUE']}"
        wait_until(lambda: probe.count(dlq) == 1, 30, "the dead-lettered message")
        [dead] = probe.take_all(dlq)
        assert dead.headers[HEADER_REASON] == "event_not_json"
    finally:
        probe.close()
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("host", "with_ca", "why"),
    [
        ("127.0.0.1", True, "IP address mismatch"),  # the certificate names localhost only
        ("localhost", False, "unable to get local issuer certificate"),  # unknown CA
    ],
)
def test_a_broker_certificate_the_worker_cannot_verify_is_refused(
    host: str, with_ca: bool, why: str, terminator: TlsTerminator, tls_files: TlsFiles
) -> None:
    settings = load_settings(
        amqp_url=f"amqps://guest:guest@{host}:{terminator.port}/%2F",
        amqp_tls_ca_file=tls_files.ca if with_ca else None,
        amqp_tls_cert_file=tls_files.client_cert,
        amqp_tls_key_file=tls_files.client_key,
    )
    with (
        pytest.raises(BrokerUnavailableError) as error,
        Publisher(BrokerOptions.from_settings(settings)) as publisher,
    ):
        publisher.publish(InspectionCompleted(containerInspectionId=1))
    assert why in str(error.value) or "CERTIFICATE_VERIFY_FAILED" in str(error.value)
    assert terminator.client_subjects == [], "no AMQP byte went over an unverified connection"


def test_database_tls_options_reach_the_driver_and_refuse_a_server_without_tls(
    mariadb_url: str, tls_files: TlsFiles
) -> None:
    """The test server has no TLS: a worker told to use TLS must not fall back to plain text
    (mysqlclient over MariaDB Connector/C does, unless ssl_mode verifies)."""
    connect_args = {"ssl": {"ca": str(tls_files.ca)}}
    settings = load_settings(
        database_url=mariadb_url,
        database_connect_args=connect_args,
        analyser="baseline",
        image_roots=[str(tls_files.ca.parent)],
    )
    pipeline = make_pipeline(settings)
    used: dict[str, Any] = {}
    event.listen(
        pipeline.session_factory.kw["bind"],
        "do_connect",
        lambda _dialect, _record, _args, params: used.update(params),
    )
    try:
        with pytest.raises(OperationalError, match="SSL is required"):
            pipeline.plan(1)
    finally:
        pipeline.close()
    assert used["ssl"] == {"ca": str(tls_files.ca)}
    assert used["ssl_mode"] == "VERIFY_IDENTITY"
    plain = make_session_factory(make_engine(mariadb_url))
    with plain() as session:  # the same server without TLS options: it is the TLS that refused
        assert session.execute(text("SELECT 1")).scalar() == 1
