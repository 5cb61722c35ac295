"""The cluster PKI for real: certificates that Python's ssl (OpenSSL) accepts or refuses."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vmcluster.errors import InputError
from vmcluster.pki import CertificateAuthority, NodeCredentials, ca_hash, make_csr, new_key


def _server_ctx(creds: NodeCredentials, crl: bool = False) -> ssl.SSLContext:
    return creds.server_context(check_crl=crl)


def _client_ctx(creds: NodeCredentials | None, ca: Path) -> ssl.SSLContext:
    if creds is None:  # no certificate of our own
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        return ctx
    return creds.client_context(ca=ca)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> str:
    """One TLS handshake on loopback; "ok" or the side and reason that refused it."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    result: dict[str, str] = {}

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
                result["server"] = "ok"
        except (ssl.SSLError, OSError) as exc:
            result["server"] = f"refused: {exc}"

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"x")
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    t.join(5)
    lsock.close()
    return result.get("server", "refused: no handshake")


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[CertificateAuthority, NodeCredentials, NodeCredentials]:
    ca = CertificateAuthority.create("t")
    n1, n2 = NodeCredentials(tmp_path / "n1"), NodeCredentials(tmp_path / "n2")
    n1.issue(ca, "n1", ["127.0.0.1", "198.18.2.11"])
    n2.issue(ca, "n2", ["127.0.0.1", "198.18.2.12"])
    return ca, n1, n2


def test_node_certificates_carry_both_usages_and_every_address(
    cluster: tuple[CertificateAuthority, NodeCredentials, NodeCredentials],
) -> None:
    _, n1, _ = cluster
    cert = x509.load_pem_x509_certificate(n1.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1", "198.18.2.11"}
    assert san.get_values_for_type(x509.DNSName) == ["n1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in eku} == {"serverAuth", "clientAuth"}
    assert (n1.key.stat().st_mode & 0o777) == 0o600
    assert (n1.qemu_dir / "server-key.pem").read_bytes() == n1.key.read_bytes()


def test_mutual_tls_between_two_nodes_and_refusals(
    cluster: tuple[CertificateAuthority, NodeCredentials, NodeCredentials], tmp_path: Path,
) -> None:
    ca, n1, n2 = cluster
    assert _handshake(_server_ctx(n1), _client_ctx(n2, n2.ca), "n1") == "ok"
    # No client certificate: refused by the server.
    assert _handshake(_server_ctx(n1), _client_ctx(None, n2.ca), "n1").startswith("refused")
    # A certificate from another cluster's CA: refused.
    other = NodeCredentials(tmp_path / "x")
    other.issue(CertificateAuthority.create("other"), "n2", ["127.0.0.1"])
    assert _handshake(_server_ctx(n1), _client_ctx(other, n1.ca), "n1").startswith("refused")
    # Revoked: n1 gets the new revocation list, n2's certificate is then refused.
    revoked = ca.revoke(n2.cert.read_bytes())
    n1.crl.write_bytes(revoked.crl_pem())
    assert _handshake(_server_ctx(n1, crl=True), _client_ctx(n2, n2.ca), "n1").startswith(
        "refused")
    n1.crl.write_bytes(ca.crl_pem())
    assert _handshake(_server_ctx(n1, crl=True), _client_ctx(n2, n2.ca), "n1") == "ok"


def test_ca_hash_pins_the_ca_and_bad_requests_are_one_line() -> None:
    a, b = CertificateAuthority.create("a"), CertificateAuthority.create("a")
    assert ca_hash(a.cert_pem).startswith("sha256:") and len(ca_hash(a.cert_pem)) == 71
    assert ca_hash(a.cert_pem) != ca_hash(b.cert_pem)
    with pytest.raises(InputError, match="not a PEM CSR"):
        a.sign(b"garbage", "n1", [])
    cert = x509.load_pem_x509_certificate(a.sign(make_csr(new_key(), "n9"), "n9", ["::1"]))
    assert cert.issuer == x509.load_pem_x509_certificate(a.cert_pem).subject


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("qemu-storage-daemon") is None, reason="needs QEMU")
def test_qemu_refuses_a_revoked_certificate_from_its_copy_of_the_crl(tmp_path: Path) -> None:
    """QEMU's TLS (a migration's stream, an NBD export) reads ``qemu/ca-crl.pem`` when its
    TLS object is made: a host whose certificate was revoked cannot connect any more."""
    ca = CertificateAuthority.create("crl-test")
    server, good, bad = (NodeCredentials(tmp_path / n) for n in ("server", "good", "bad"))
    for n, creds in (("server", server), ("good", good), ("bad", bad)):
        creds.issue(ca, n, ["127.0.0.1"])
    crl = ca.revoke(bad.cert.read_bytes()).crl_pem()
    assert server.write_crl(crl) and not server.write_crl(crl)  # the same list: unchanged
    assert (server.qemu_dir / "ca-crl.pem").read_bytes() == crl == server.crl.read_bytes()
    lun = tmp_path / "lun.raw"
    lun.write_bytes(b"\0" * 65536)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qsd = subprocess.Popen([
        "qemu-storage-daemon", "--object",
        f"tls-creds-x509,id=t,endpoint=server,dir={server.qemu_dir},verify-peer=on",
        "--blockdev", f"driver=file,node-name=lun,filename={lun}",
        "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=t",
        "--export", "type=nbd,id=e,node-name=lun,name=lun"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def info(creds: NodeCredentials) -> subprocess.CompletedProcess[str]:
            return subprocess.run([
                "qemu-img", "info", "--object",
                f"tls-creds-x509,id=t,endpoint=client,dir={creds.qemu_dir}", "--image-opts",
                f"driver=nbd,host=127.0.0.1,port={port},export=lun,tls-creds=t"],
                capture_output=True, text=True, timeout=20, check=False)

        for _ in range(50):  # bounded: the export is up within a fraction of a second
            got = info(good)
            if "Connection refused" not in got.stderr:
                break
            time.sleep(0.1)
        assert got.returncode == 0, got.stderr
        refused = info(bad)
        assert refused.returncode != 0
    finally:
        qsd.terminate()
        _, err = qsd.communicate(timeout=10)
    assert "revoked" in err


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _peer_subject(server: ssl.SSLContext, client: ssl.SSLContext, name: str | None) -> str:
    """The common name of the certificate a client asking for ``name`` (None: no SNI, as
    when it connects by address) is shown, after the client verified it."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with contextlib.suppress(ssl.SSLError, OSError), \
                server.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
    finally:
        t.join(5)
        lsock.close()
    assert der is not None
    cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        x509.oid.NameOID.COMMON_NAME)
    return str(cn[0].value)


def test_the_api_shows_the_admins_own_certificate_to_named_clients_only(tmp_path: Path) -> None:
    """[api] certificate and key: a browser asking for the name in the admin's certificate
    gets it (and verifies it against the admin's CA, not the cluster's); a host or CLI
    connecting by address keeps the cluster CA's certificate. A key that is not the
    certificate's is refused in one line when the API starts."""
    from vmcluster.node.api import create_app, server_config
    from vmcluster.node.config import NodeConfig

    cluster = CertificateAuthority.create("t")
    cfg = NodeConfig(path=tmp_path / "vmclusterd.toml", node="node1", cluster="t",
                     config_dir=tmp_path / "etc", api_listen=("127.0.0.1",))
    NodeCredentials(cfg.tls_dir).issue(cluster, "node1", ["127.0.0.1"])
    corp = CertificateAuthority.create("corp")
    key = new_key()
    (tmp_path / "own.pem").write_bytes(corp.sign(make_csr(key, "dash.example.test"),
                                                 "dash.example.test", []))
    (tmp_path / "own-key.pem").write_bytes(key_pem(key))
    (tmp_path / "corp-ca.pem").write_bytes(corp.cert_pem)
    (tmp_path / "cluster-ca.pem").write_bytes(cluster.cert_pem)
    own = replace(cfg, api_certificate=tmp_path / "own.pem", api_key=tmp_path / "own-key.pem")
    config = server_config(create_app, own)
    config.load()  # uvicorn builds its SSL context here, as it does when it serves
    assert config.ssl is not None

    def client(ca: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(tmp_path / ca)
        if ca == "cluster-ca.pem":
            ctx.check_hostname = False  # by address: the CA's signature is what counts
        return ctx

    assert _peer_subject(config.ssl, client("corp-ca.pem"), "dash.example.test") == \
        "dash.example.test"
    assert _peer_subject(config.ssl, client("cluster-ca.pem"), None) == "node1"
    assert _peer_subject(config.ssl, client("cluster-ca.pem"), "node1") == "node1"
    assert _peer_subject(config.ssl, client("cluster-ca.pem"), "Node1.") == "node1"
    with pytest.raises(ssl.SSLCertVerificationError):  # the cluster's CA does not vouch for it
        _peer_subject(config.ssl, client("cluster-ca.pem"), "dash.example.test")
    # Without [api] certificate: everyone gets the cluster's.
    plain = server_config(create_app, cfg)
    plain.load()
    assert plain.ssl is not None
    assert _peer_subject(plain.ssl, client("cluster-ca.pem"), "dash.example.test") == "node1"
    (tmp_path / "other-key.pem").write_bytes(key_pem(new_key()))
    with pytest.raises(InputError, match="certificate"):
        server_config(create_app, replace(own, api_key=tmp_path / "other-key.pem"))
