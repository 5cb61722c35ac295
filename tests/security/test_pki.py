"""The cluster PKI for real: certificates that Python's ssl (OpenSSL) accepts or refuses."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

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
