"""TLS config checks (each bad file named with its problem) and real handshakes: SNI, ALPN."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from haproxy_py import pki
from haproxy_py.configfile import ConfigError, Table
from haproxy_py.proxy.tls import (
    BackendTls,
    CertificateError,
    ListenerTls,
    ServerTls,
    check_certificate,
    client_context,
    key_mode_problem,
    parse_backend_tls,
    parse_listener_tls,
    server_context,
)
from tests.support.certs import DAY, NOW, make_cert


def now() -> dt.datetime:
    """The clock of a check: read when the check runs, since certificates from the PKI are
    valid from a few minutes before they are issued, which may be long after this module loads."""
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path)
    for name, sans in [
        ("default", ["default.test"]),
        ("alpha", ["alpha.test", "www.alpha.test"]),
        ("wild", ["*.wild.test"]),
        ("alpha2", ["alpha.test"]),
    ]:
        pki.issue(tmp_path, name, sans)
    return tmp_path


def pair(ca: Path, name: str) -> dict[str, str]:
    return {"cert": str(ca / f"{name}.crt"), "key": str(ca / f"{name}.key")}


def listener(tls: object) -> Table:
    return Table({"name": "web", "tls": tls}, "node.toml", "listeners[0]")


def fails(call: object, *fragments: str) -> str:
    assert callable(call)
    with pytest.raises((ConfigError, CertificateError)) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


class TestCheckCertificate:
    def test_good_pair_gives_its_names(self, ca: Path) -> None:
        cert = check_certificate(ca / "alpha.crt", ca / "alpha.key", now())
        assert cert.names == ("alpha.test", "www.alpha.test")
        assert cert.not_after > NOW

    def test_rsa_and_common_name_only(self, tmp_path: Path) -> None:
        cert_path, key_path = make_cert(tmp_path, "legacy.test", rsa_key=True)
        assert check_certificate(cert_path, key_path, now()).names == ("legacy.test",)

    def test_missing_files(self, ca: Path) -> None:
        err = fails(
            lambda: check_certificate(ca / "nope.crt", ca / "alpha.key", now()),
            "nope.crt: no such file",
        )
        assert "alpha.key" not in err
        fails(
            lambda: check_certificate(ca / "alpha.crt", ca / "nope.key", now()),
            "nope.key: no such file",
        )

    def test_unreadable_file(self, ca: Path) -> None:
        (ca / "dir.crt").mkdir()
        fails(
            lambda: check_certificate(ca / "dir.crt", ca / "alpha.key", now()),
            "dir.crt: cannot read",
        )

    def test_not_pem(self, ca: Path) -> None:
        (ca / "junk").write_text("hello\n")
        fails(
            lambda: check_certificate(ca / "junk", ca / "alpha.key", now()),
            "junk: not a PEM certificate",
        )
        fails(
            lambda: check_certificate(ca / "alpha.crt", ca / "junk", now()),
            "junk: not a PEM private key",
        )

    def test_key_readable_by_others(self, ca: Path) -> None:
        (ca / "alpha.key").chmod(0o644)
        fails(
            lambda: check_certificate(ca / "alpha.crt", ca / "alpha.key", now()),
            "alpha.key: mode 0644 lets other users read the key; chmod 0600",
        )

    def test_key_mode_rule(self) -> None:
        def problem(mode: int, uid: int) -> bool:
            st = os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))
            return key_mode_problem(st) is not None

        assert not problem(0o600, 1000) and not problem(0o400, 1000)
        assert not problem(0o640, 0)  # root owns it, the proxy's group reads it
        assert problem(0o640, 1000) and problem(0o644, 0) and problem(0o660, 0)

    def test_no_tls12_session_tickets(self, ca: Path) -> None:
        assert server_context(ca / "alpha.crt", ca / "alpha.key").options & ssl.OP_NO_TICKET

    def test_encrypted_key(self, ca: Path) -> None:
        key = serialization.load_pem_private_key((ca / "alpha.key").read_bytes(), None)
        (ca / "locked.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        fails(
            lambda: check_certificate(ca / "alpha.crt", ca / "locked.key", now()),
            "locked.key: the key is encrypted",
        )

    def test_key_not_matching(self, ca: Path) -> None:
        err = fails(
            lambda: check_certificate(ca / "alpha.crt", ca / "wild.key", now()),
            "wild.key: this key does not belong to the certificate",
            "alpha.crt",
        )
        assert "BEGIN" not in err  # never key material in a message

    def test_expired(self, tmp_path: Path) -> None:
        cert_path, key_path = make_cert(
            tmp_path, "old", not_before=NOW - 90 * DAY, not_after=NOW - DAY
        )
        fails(lambda: check_certificate(cert_path, key_path, now()), "old.crt: expired on ")

    def test_not_yet_valid(self, tmp_path: Path) -> None:
        cert_path, key_path = make_cert(tmp_path, "future", not_before=NOW + DAY)
        fails(lambda: check_certificate(cert_path, key_path, now()), "future.crt: not valid yet")

    def test_expired_certificate_in_the_chain(self, ca: Path, tmp_path: Path) -> None:
        old_cert, _ = make_cert(tmp_path, "oldca", not_before=NOW - 90 * DAY, not_after=NOW - DAY)
        bundle = ca / "bundle.crt"
        bundle.write_bytes((ca / "alpha.crt").read_bytes() + old_cert.read_bytes())
        fails(
            lambda: check_certificate(bundle, ca / "alpha.key", now()),
            "bundle.crt (chain certificate 2): expired",
        )


class TestParseListener:
    def test_absent_means_plain(self) -> None:
        assert parse_listener_tls(Table({"name": "web"}, "node.toml", "listeners[0]")) is None

    def test_one_table(self, ca: Path) -> None:
        parsed = parse_listener_tls(listener(pair(ca, "alpha")))
        assert parsed is not None
        assert [c.cert.name for c in parsed.certificates] == ["alpha.crt"]

    def test_list_keeps_order(self, ca: Path) -> None:
        parsed = parse_listener_tls(listener([pair(ca, "default"), pair(ca, "alpha")]))
        assert parsed is not None
        assert [c.names for c in parsed.certificates] == [
            ("default.test",),
            ("alpha.test", "www.alpha.test"),
        ]

    def test_errors_name_config_file_key_and_cert_file(self, ca: Path, tmp_path: Path) -> None:
        fails(
            lambda: parse_listener_tls(
                listener([pair(ca, "alpha"), {"cert": str(ca / "wild.crt"), "key": "x.key"}])
            ),
            "node.toml: listeners[0].tls[1].key: x.key: no such file",
        )
        cert_path, key_path = make_cert(
            tmp_path, "old", not_before=NOW - 9 * DAY, not_after=NOW - DAY
        )
        fails(
            lambda: parse_listener_tls(listener({"cert": str(cert_path), "key": str(key_path)})),
            "node.toml: listeners[0].tls.cert: ",
            "old.crt: expired on",
        )
        fails(lambda: parse_listener_tls(listener({"cert": "a"})), "listeners[0].tls.key: missing")
        fails(
            lambda: parse_listener_tls(listener({**pair(ca, "alpha"), "ciphers": "x"})),
            "tls.ciphers: unknown key",
        )
        fails(lambda: parse_listener_tls(listener([])), "listeners[0].tls: expected { cert")
        fails(
            lambda: parse_listener_tls(listener("yes")),
            "listeners[0].tls: expected an array of tables",
        )


class TestParseBackend:
    def backend(self, **keys: object) -> Table:
        return Table(dict(keys), "node.toml", "backends.app")

    def test_plain_by_default(self) -> None:
        assert parse_backend_tls(self.backend()) is None

    def test_ca_and_name(self, ca: Path) -> None:
        parsed = parse_backend_tls(
            self.backend(tls=True, tls_ca=str(ca / "ca.crt"), tls_server_name="app")
        )
        assert parsed == BackendTls(ca / "ca.crt", "app")
        assert parse_backend_tls(self.backend(tls=True)) == BackendTls()

    def test_errors(self, ca: Path) -> None:
        fails(
            lambda: parse_backend_tls(self.backend(tls_ca="x")),
            "backends.app.tls_ca: only used with tls = true",
        )
        fails(
            lambda: parse_backend_tls(self.backend(tls="yes")),
            "backends.app.tls: expected true or false",
        )
        fails(
            lambda: parse_backend_tls(self.backend(tls=True, tls_ca=str(ca / "nope.crt"))),
            "backends.app.tls_ca: ",
            "nope.crt: no such file",
        )
        (ca / "junk.crt").write_text("junk")
        fails(
            lambda: parse_backend_tls(self.backend(tls=True, tls_ca=str(ca / "junk.crt"))),
            "junk.crt: not a PEM CA certificate",
        )


@pytest.fixture
async def tls_server(ca: Path) -> AsyncIterator[tuple[ServerTls, int]]:
    """A real TLS server that answers each connection with the negotiated ALPN protocol."""
    config = parse_listener_tls(
        listener([pair(ca, "default"), pair(ca, "alpha"), pair(ca, "wild")])
    )
    assert config is not None
    front = ServerTls(config)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write((ssl_object.selected_alpn_protocol() or "none").encode())
        await writer.drain()
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=front.context)
    try:
        yield front, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def handshake(
    ca: Path, port: int, server_name: str | None, context: ssl.SSLContext | None = None
) -> tuple[str, str, asyncio.StreamWriter]:
    """Connect; return the served certificate's common name, the ALPN answer and the writer."""
    if context is None:
        context = client_context(BackendTls(ca / "ca.crt"))
        context.check_hostname = False
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=context,
            server_hostname=server_name or "",
            ssl_handshake_timeout=30,
        ),
        30,
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    name = (
        x509.load_der_x509_certificate(der)
        .subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
        .value
    )
    alpn = (await asyncio.wait_for(reader.read(100), 30)).decode()
    return str(name), alpn, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 30)


class TestServerTls:
    @pytest.mark.parametrize(
        ("server_name", "expected"),
        [
            ("alpha.test", "alpha"),
            ("WWW.Alpha.Test.", "alpha"),
            ("x.wild.test", "wild"),
            ("a.b.wild.test", "default"),
            ("wild.test", "default"),
            ("other.test", "default"),
            (None, "default"),
        ],
    )
    async def test_sni_picks_the_certificate(
        self, ca: Path, tls_server: tuple[ServerTls, int], server_name: str | None, expected: str
    ) -> None:
        name, alpn, writer = await handshake(ca, tls_server[1], server_name)
        assert name == expected
        assert alpn == "http/1.1"
        await close(writer)

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    async def test_tls_1_1_is_refused(self, ca: Path, tls_server: tuple[ServerTls, int]) -> None:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        # Control: this client does speak TLS 1.1 to a server that allows it.
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.load_cert_chain(ca / "alpha.crt", ca / "alpha.key")
        permissive.minimum_version = ssl.TLSVersion.TLSv1
        permissive.set_ciphers("ALL:@SECLEVEL=0")

        async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"-")
            writer.close()

        control = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=permissive)
        try:
            port = control.sockets[0].getsockname()[1]
            _, _, writer = await handshake(ca, port, "alpha.test", old)
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
            await close(writer)
        finally:
            control.close()
            await control.wait_closed()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(ca, tls_server[1], "alpha.test", old)

    async def test_verified_client_and_wrong_name(
        self, ca: Path, tls_server: tuple[ServerTls, int]
    ) -> None:
        verifying = client_context(BackendTls(ca / "ca.crt"))
        name, _, writer = await handshake(ca, tls_server[1], "alpha.test", verifying)
        assert name == "alpha"
        await close(writer)
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(
                ca, tls_server[1], "nobody.test", client_context(BackendTls(ca / "ca.crt"))
            )

    async def test_update_swaps_certificates_for_new_handshakes_only(
        self, ca: Path, tls_server: tuple[ServerTls, int]
    ) -> None:
        front, port = tls_server
        name, _, before = await handshake(ca, port, "alpha.test")
        assert name == "alpha"
        replacement = parse_listener_tls(listener([pair(ca, "alpha2")]))
        assert isinstance(replacement, ListenerTls)
        front.update(replacement)
        name, _, after = await handshake(ca, port, "alpha.test")
        assert name == "alpha2"
        # The connection made before the swap is still open and working.
        before.write(b"x")
        await before.drain()
        assert not before.is_closing()
        await close(before)
        await close(after)
