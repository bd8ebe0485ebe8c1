"""STARTTLS, implicit TLS, certificate checks and AUTH against aiosmtpd."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from tests.support.smtpping import interrupt_during_wait, run_smtpping


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], bool]] = []
        self.client_certificates: list[object] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        tls = server.transport.get_extra_info("ssl_object")
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), tls is not None))
        self.client_certificates.append(tls.getpeercert() if tls else None)
        return "250 2.0.0 stored"


def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"meter",
        b"s3cret",
    )
    # handled=False makes aiosmtpd send the 535 itself (handled=True would send nothing).
    return AuthResult(success=ok, handled=False)


class ImplicitTLSController(Controller):
    """aiosmtpd's Controller checks readiness in clear text; ours waits in TLS."""

    def _trigger_server(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection((self.hostname, self.port)) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.recv(1024)


def free_port() -> int:
    """aiosmtpd's Controller must know its port before it listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(certificate_authority: trustme.CA, tmp_path: Path) -> dict[str, str]:
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    return {"ca": str(ca_file)}


def server_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "smtp.example.test").configure_cert(context)
    # Ask for a client certificate without requiring one, to see what smtpping sends.
    context.verify_mode = ssl.CERT_OPTIONAL
    certificate_authority.configure_trust(context)
    return context


@pytest.fixture
def starttls_server(certificate_authority: trustme.CA) -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_context(certificate_authority),
        authenticator=authenticate,
        auth_require_tls=True,
    )
    controller.start()
    yield controller, recorder
    controller.stop()


@pytest.fixture
def implicit_tls_server(
    certificate_authority: trustme.CA,
) -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = ImplicitTLSController(
        recorder,
        hostname="127.0.0.1",
        port=free_port(),
        ssl_context=server_context(certificate_authority),
        authenticator=authenticate,
    )
    controller.start()
    yield controller, recorder
    controller.stop()


def port_of(controller: Controller) -> str:
    return str(controller.port)


def test_starttls_then_auth_plain(ours: list[str], starttls_server, tls_files) -> None:
    controller, recorder = starttls_server
    ran = run_smtpping(
        ours,
        *("--starttls", "--auth", "meter:s3cret", "-c", "2", "-w", "0", "-s", "1"),
        *("u@example.test", "@127.0.0.1", "-p", port_of(controller)),
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    assert ran.stdout.count("seq=") == 2
    assert [secure for _, _, secure in recorder.envelopes] == [True, True]


def test_auth_login_and_wrong_password(ours: list[str], starttls_server) -> None:
    controller, recorder = starttls_server
    common = ("--starttls", "--auth-mech", "LOGIN", "-c", "1", "-s", "0")
    target = ("u@example.test", "@127.0.0.1", "-p", port_of(controller))
    good = run_smtpping(ours, *common, "--auth", "meter:s3cret", *target)
    assert "seq=1," in good.stdout, good.stderr
    bad = run_smtpping(ours, *common, "--auth", "meter:wrong", *target)
    assert bad.stderr == "seq=1: recv: AUTH failed (535)\n"
    assert len(recorder.envelopes) == 1


def test_tls_verify_needs_a_trusted_certificate(
    ours: list[str], starttls_server, tls_files
) -> None:
    controller, _ = starttls_server
    target = ("-c", "1", "-s", "0", "u@example.test", "@127.0.0.1", "-p", port_of(controller))
    untrusted = run_smtpping(ours, "--starttls", "--tls-verify", *target)
    assert untrusted.stderr.startswith("seq=1: tls: handshake failed (")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    trusted = run_smtpping(ours, "--starttls", "--tls-verify", "--cafile", tls_files["ca"], *target)
    assert "seq=1," in trusted.stdout, trusted.stderr


def test_implicit_tls_with_client_certificate(
    ours: list[str], implicit_tls_server, certificate_authority: trustme.CA, tmp_path: Path
) -> None:
    controller, recorder = implicit_tls_server
    client = certificate_authority.issue_cert("meter@example.test")
    cert = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(cert))
    ran = run_smtpping(
        ours,
        *("--tls", "--tls-cert", str(cert), "--rcpts", "3", "-c", "1", "-s", "1"),
        *("u@example.test", "@127.0.0.1", "-p", port_of(controller)),
    )
    assert "seq=1," in ran.stdout, ran.stderr
    assert recorder.envelopes == [
        ("<>", ["u@example.test", "u+2@example.test", "u+3@example.test"], True)
    ]
    assert ("email", "meter@example.test") in recorder.client_certificates[0]["subjectAltName"]


def test_unreadable_client_certificate_stops_before_connecting(ours: list[str]) -> None:
    ran = run_smtpping(ours, "--tls", "--tls-cert", "/nonexistent.pem", "u@e.test", "@127.0.0.1")
    assert ran.returncode == 1
    assert ran.stderr.startswith("tls: ")


# The asyncio driver keeps time with the same Timekeeper as the epoll engine; these
# check its adaptation: the -w pause woken by Ctrl-C, --duration, the -r ticker.


def test_ctrl_c_during_a_wait_ends_a_starttls_run(ours: list[str], starttls_server) -> None:
    controller, recorder = starttls_server
    target = ("u@example.test", "@127.0.0.1", "-p", port_of(controller))
    rest = interrupt_during_wait([*ours, "--starttls", "-w", "60000", "-s", "0", *target])
    assert "1 e-mail messages transmitted" in rest
    assert len(recorder.envelopes) == 1


def test_duration_and_rate_ticks_on_a_starttls_run(ours: list[str], starttls_server) -> None:
    controller, recorder = starttls_server
    ran = run_smtpping(
        ours,
        *("--starttls", "-r", "-P", "2", "--duration", "2.5", "-w", "200", "-s", "0"),
        *("u@example.test", "@127.0.0.1", "-p", port_of(controller)),
    )
    assert ran.returncode == 0, ran.stderr
    counts, _, summary = ran.stdout.partition("\n--- rate summary ---\n")
    ticks = [int(line) for line in counts.splitlines()]
    # Second 0 at once, then one a second until the stop at 2.5 s.
    assert len(ticks) == 3
    assert ticks[0] == 0
    assert f"{len(recorder.envelopes)} messages completed in " in summary
    assert sum(ticks) <= len(recorder.envelopes)
    assert "errors: none" in summary
