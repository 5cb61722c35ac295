"""The lab's CA, and the certificates of the lab's hosts that are not cluster nodes.

The lab makes the CA (in its ``ca/``, which no host sees) and hands it to
``cluster init`` on the first node as an organisation hands its own CA
(:func:`vmcluster.lab.hosts.bootstrap_hosts`); the nodes then get their
certificates from ``init`` and ``join``. The lab issues from the same CA the
SAN's certificate (it serves the shared LUNs over NBD with TLS) and the admin
side's (its tools read etcd). A lab without a control plane (the substrate
contract suite) has no init: the lab then issues every host's certificate and
the heartbeat key itself. Files that exist are kept, so a host restarted by a
fault keeps the identity its peers know.
"""

from __future__ import annotations

import json

from vmcluster.heartbeat.auth import new_key_file
from vmcluster.model import ClusterSpec
from vmcluster.pki import ADMIN, CertificateAuthority, NodeCredentials, write_file
from vmcluster.substrate.host.layout import LabLayout

__all__ = ["etcd_tls", "issue_credentials", "lab_ca"]



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
                      others: dict[str, list[str]] | None = None, nodes: bool = True) -> None:
    """The admin side's certificate; ``others``: further hosts of the lab (the SAN) by
    name, with their addresses; ``nodes``: every node's certificate (IP SANs: its
    addresses) and heartbeat key too (no ``cluster init`` makes them)."""
    ca = lab_ca(layout)
    for name, addresses in (others or {}).items():
        creds = NodeCredentials(layout.tls_dir(name))
        if not creds.exists():
            creds.issue(ca, name, addresses)
    admin = NodeCredentials(layout.tls_dir(ADMIN))
    if not admin.exists():
        admin.issue(ca, ADMIN, [])
    if not nodes:
        return
    for node in spec.nodes:
        creds = NodeCredentials(layout.tls_dir(node.name))
        if not creds.exists():
            creds.issue(ca, node.name, [str(a) for a in node.interfaces.values()])
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
