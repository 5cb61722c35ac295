"""``vmcluster cluster backup FILE`` and ``cluster restore FILE``: the store, saved and
brought back (see :mod:`vmcluster.store.backup`).

On a host, both read its ``vmclusterd.toml`` (``--config``): the backup talks to the
store with the host's certificate; the restore rewrites this host's etcd member while
its vmclusterd is stopped (do it on every host that runs a member, then start them
all). With ``--lab LAB`` the backup is taken from the lab's admin side and the restore
does the whole drill for every lab host: power them off, restore each member, boot
them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from vmcluster.cli.common import lab_option
from vmcluster.errors import InputError, UsageError
from vmcluster.lab.credentials import etcd_tls
from vmcluster.lab.faults import crash_node, start_nodes, stop_daemon
from vmcluster.lab.hosts import daemon_pids, start_daemon, vmcluster_in
from vmcluster.lab.lab import resolve_lab
from vmcluster.lab.services import lab_hosts, lab_store, read_services
from vmcluster.node.config import DEFAULT_CONFIG, load_config
from vmcluster.node.recover import recover as recover_host
from vmcluster.node.recover import report_lines
from vmcluster.pki import NodeCredentials
from vmcluster.store.backup import restore_member, save_backup
from vmcluster.store.etcd import EtcdClient
from vmcluster.substrate.procs import pid_in_file

__all__ = ["backup", "recover", "restore"]

_CONFIG = click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                       default=DEFAULT_CONFIG, show_default=True, help="This host's "
                       "vmclusterd.toml.")
_LAB = lab_option("lab_name")
_JSON = click.option("--json", "as_json", is_flag=True, help="print one JSON object")


@click.command("backup")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@_CONFIG
@_LAB
@_JSON
def backup(path: Path, config: Path, lab_name: str | None, as_json: bool) -> None:
    """Save the cluster's store (an etcd snapshot, its members and checksum) to FILE."""
    if path.exists() and path.is_dir():
        raise InputError(f"{path} is a directory; name the backup file")
    if lab_name is not None:

        layout = resolve_lab(lab_name)
        svc = read_services(layout)
        with lab_store(layout) as store:
            client = store.state.client
            assert isinstance(client, EtcdClient)
            members = store.call(client.member_list)
        info = save_backup(path, svc["cluster"], svc["endpoints"], members, etcd_tls(layout),
                           prefix=("ip", "netns", "exec", layout.client_ns))
    else:
        cfg = load_config(config)
        tls = NodeCredentials(cfg.tls_dir)
        members = EtcdClient(list(cfg.endpoints), tls=tls).member_list()
        info = save_backup(path, cfg.cluster, cfg.endpoints, members, tls)
    size = path.stat().st_size
    if as_json:
        click.echo(json.dumps({"file": str(path), "bytes": size, **info.to_json()}))
        return
    click.echo(f"{path}: cluster {info.cluster}, {len(info.members)} members "
               f"({', '.join(n for n, _ in info.members)}), {size} bytes, from {info.endpoint}")


@click.command("restore")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path))
@_CONFIG
@_LAB
@_JSON
def restore(path: Path, config: Path, lab_name: str | None, as_json: bool) -> None:
    """Restore this host's etcd member from a backup FILE (its vmclusterd stopped); with
    --lab, every lab host (powered off, restored, booted)."""
    if lab_name is not None:

        layout = resolve_lab(lab_name)
        hosts = lab_hosts(layout)  # every host, though a recovery may have forgotten some
        restored = []
        for node in hosts:
            crash_node(layout, node)  # a restore starts from hosts that are down
        for node in hosts:
            cfg = load_config(layout.node_config(node))
            if cfg.member is None:
                continue
            info, aside = restore_member(path, node, cfg.etcd_dir, False)
            restored.append({"node": node, "old_data": str(aside) if aside else None})
        start_nodes(layout, hosts)
    else:
        cfg = load_config(config)
        if cfg.member is None:
            raise InputError(f"{cfg.node} runs no etcd member; restore the hosts that do")
        running = pid_in_file(cfg.pidfile, str(cfg.path)) is not None
        info, aside = restore_member(path, cfg.node, cfg.etcd_dir, running)
        restored = [{"node": cfg.node, "old_data": str(aside) if aside else None}]
    if as_json:
        click.echo(json.dumps({"file": str(path), "restored": restored, **info.to_json()}))
        return
    for r in restored:
        click.echo(f"{r['node']}: etcd member restored from {path} (cluster {info.cluster})"
                   + (f"; its old data is in {r['old_data']}" if r["old_data"] else ""))
    if lab_name is None:
        click.echo("restore every host that runs a member, then start vmclusterd on each")


@click.command("recover")
@click.option("--forget", "forgotten", multiple=True, required=True, metavar="NODE",
              help="a host given up for good (repeat for each; every host but this one)")
@_CONFIG
@_LAB
@_JSON
def recover(forgotten: tuple[str, ...], config: Path, lab_name: str | None,
            as_json: bool) -> None:
    """When most hosts are gone for good and the store has no quorum: make this host's
    etcd member a cluster of one from its own data, and forget the hosts given up (their
    VMs start here, their certificates are revoked). Its vmclusterd stopped; start it
    afterwards. With --lab: the one lab host not forgotten, stopped and started for you."""
    if lab_name is not None:
        layout = resolve_lab(lab_name)
        hosts = lab_hosts(layout)
        unknown = [n for n in forgotten if n not in hosts]
        if unknown:
            raise UsageError(f"no host {unknown[0]!r} in lab {layout.name}; its hosts: "
                             f"{', '.join(hosts)}")
        left = [n for n in hosts if n not in forgotten]
        if len(left) != 1:
            raise UsageError(f"a recovery leaves one host; forget all but one of "
                             f"{', '.join(hosts)}")
        alive = [n for n in forgotten if any(daemon_pids(layout, n).values())]
        if alive:
            raise UsageError(f"{alive[0]} still runs: a host given up is down (`vmcluster lab "
                             f"node crash {alive[0]}`)")
        node = left[0]
        stop_daemon(layout, node)  # as `systemctl stop vmclusterd` would
        doc = vmcluster_in(layout, node, ["cluster", "recover", "--config",
                                          str(layout.node_config(node)),
                                          *[a for n in forgotten for a in ("--forget", n)]],
                           timeout_s=120)
        start_daemon(layout, node, timeout_s=60)
    else:
        doc = recover_host(load_config(config), list(forgotten),
                           say=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(doc))
        return
    for line in report_lines(doc, started=lab_name is not None):
        click.echo(line)
