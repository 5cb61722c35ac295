"""The lab plays the cluster's init: a CA, each host's certificate, the heartbeat key.

On real hosts ``cluster init`` makes the CA on the first host and each joining
host makes its own key and has its request signed; the lab does the same in
one step for every namespace host: the CA's files stay in the lab's ``ca/``
(no host sees them), revocation lists go into the store, and each host's key,
certificate and copy of the heartbeat key go to its own ``hosts/<node>/etc/``
(keys mode 0600). Files that exist are kept, so a host
restarted by a fault keeps the identity its peers know.
"""

from __future__ import annotations

import json

from vmcluster.heartbeat.auth import new_key_file
from vmcluster.lab.layout import LabLayout
from vmcluster.model import ClusterSpec
from vmcluster.pki import CertificateAuthority, NodeCredentials, write_file

__all__ = ["ADMIN", "etcd_tls", "issue_credentials", "lab_ca", "revoke"]

ADMIN = "admin"  # the operator's own certificate (the CLI, from the admin side)


def lab_ca(layout: LabLayout) -> CertificateAuthority:
    """The lab cluster's CA, created on first use."""
    key, cert = layout.ca_dir / "ca-key.pem", layout.ca_dir / "ca.pem"
    revoked = layout.ca_dir / "revoked.json"
    if key.is_file() and cert.is_file():
        serials = tuple(json.loads(revoked.read_text())) if revoked.is_file() else ()
        return CertificateAuthority(key.read_bytes(), cert.read_bytes(), serials)
    ca = CertificateAuthority.create(layout.name)
    write_file(key, ca.key_pem)
    write_file(cert, ca.cert_pem, secret=False)
    return ca


def issue_credentials(layout: LabLayout, spec: ClusterSpec,
                      others: dict[str, list[str]] | None = None) -> None:
    """Every node's certificate (IP SANs: its cluster-network addresses) and heartbeat key;
    ``others``: further hosts of the lab (the SAN) by name, with their addresses."""
    ca = lab_ca(layout)
    for name, addresses in (others or {}).items():
        creds = NodeCredentials(layout.tls_dir(name))
        if not creds.exists():
            creds.issue(ca, name, addresses)
    for node in spec.nodes:
        creds = NodeCredentials(layout.tls_dir(node.name))
        if not creds.exists():
            creds.issue(ca, node.name, [str(a) for a in node.interfaces.values()])
    admin = NodeCredentials(layout.tls_dir(ADMIN))
    if not admin.exists():
        admin.issue(ca, ADMIN, [])
    first = layout.heartbeat_key(spec.nodes[0].name)
    if not first.exists():
        new_key_file(first)
    for node in spec.nodes[1:]:
        path = layout.heartbeat_key(node.name)
        if not path.exists():
            write_file(path, first.read_bytes())


def etcd_tls(layout: LabLayout, node: str | None = None) -> NodeCredentials | None:
    """``node``'s certificate files for etcd (the admin's when None); None when the lab
    has none (a lab brought up before TLS)."""
    creds = NodeCredentials(layout.tls_dir(node or ADMIN))
    return creds if creds.exists() else None


def revoke(layout: LabLayout, spec: ClusterSpec, cert_pem: bytes) -> bytes:
    """Revoke a certificate of the lab's CA; returns the new revocation list. It travels
    through the store (``crl``): each host's API part writes it into its own
    ``tls/crl.pem`` (see vmcluster.node.api). A lab without a control plane gets it in
    its hosts' files from here instead."""
    from vmcluster.lab.services import lab_store, services_file

    ca = lab_ca(layout).revoke(cert_pem)
    (layout.ca_dir / "revoked.json").write_text(json.dumps(list(ca.revoked)))
    crl = ca.crl_pem()
    if services_file(layout).exists():
        with lab_store(layout) as store:
            store.call(store.state.client.put, store.state.key("crl"), crl)
        return crl
    for node in spec.nodes:
        path = NodeCredentials(layout.tls_dir(node.name)).crl
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(crl)
        tmp.replace(path)
    return crl
