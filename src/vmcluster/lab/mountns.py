"""Each lab host's own mount namespace: what one host's processes cannot see of another.

A host gets a persistent mount namespace, made once and bound onto
``<lab>/mnt/<node>`` (a private mount, so the binding stays in the root
namespace). Inside it:

* ``/sys`` is mounted again from the host's network namespace (so that
  ``/sys/class/net`` shows its own interfaces, as ``ip netns exec`` does);
* a host of a lab with a control plane sees nothing of the lab's directory but its
  own directory (its keys, QEMU records, etcd data, sockets) and, when a VM of the
  spec has no shared volume, the file storage (``files/``: those VMs' plain disks
  and quick-migration states, shared as an NFS mount would be): the lab's
  directory is covered by an empty read-only tmpfs and those two are bound back,
  so the lab's records, the SAN's LUN files, the CA, the other hosts and whatever
  the harness makes later are out of its sight, and so are the lab's network
  namespaces (``/run/netns``). It knows the cluster from etcd only; beyond that,
  only the guest image and the QEMU binaries are shared (read-only, as packages
  are);
* a host of a lab of agents only (the substrate contract tests) reads the lab's
  records in its file; the other hosts' directories and the CA are covered.

The lab starts the host's ``vmclusterd`` with ``nsenter --net=... --mount=...``,
so every process of the host (the parts, the watchdog, its QEMUs) lives in both
namespaces.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from pathlib import Path

from vmcluster.errors import LabError
from vmcluster.substrate.host.layout import LabLayout
from vmcluster.substrate.host.state import read_state

__all__ = ["enter_prefix", "hidden_from", "make_host_namespace", "mount_namespace_file",
           "remove_host_namespaces"]


def mount_namespace_file(layout: LabLayout, node: str) -> Path:
    return layout.state_dir / "mnt" / node


def _mounted(path: Path) -> bool:
    target = str(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4] == target for line in lines)


def _run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise LabError(f"{' '.join(argv[:3])}...: {out.stderr.strip() or out.returncode}")


def hidden_from(layout: LabLayout, node: str) -> list[Path]:
    """What a host of a lab of agents only must not see: the other hosts' directories
    (the admin's among them) and the CA. (A host of a lab with a control plane sees
    nothing of the lab's directory but its own and the file storage.)"""
    hosts = layout.state_dir / "hosts"
    mine = layout.host_dir(node)
    hidden = [p for p in sorted(hosts.iterdir()) if p.is_dir() and p != mine]
    if layout.ca_dir.is_dir():
        hidden.append(layout.ca_dir)
    return hidden


_LOCK = threading.Lock()


def make_host_namespace(layout: LabLayout, node: str) -> Path:
    """Make ``node``'s mount namespace (once); returns the file it is bound onto."""
    with _LOCK:  # hosts start in parallel; the private mount is made once
        return _make(layout, node)


def _cover_script(layout: LabLayout, node: str) -> list[str]:
    """Shell lines that leave a host of a lab with a control plane nothing of the lab's
    directory but its own directory and the file storage (when the lab has one): the
    lab's directory is covered by an empty read-only tmpfs, and those two are bound
    back. What the harness makes there later stays out of sight too."""
    keep = [layout.host_dir(node)]
    if layout.file_storage.is_dir():
        keep.append(layout.file_storage)
    lab = shlex.quote(str(layout.state_dir))
    lines = ["held=$(mktemp -d)"]
    for i, path in enumerate(keep):
        lines += [f"mkdir \"$held/{i}\"", f"mount --bind {shlex.quote(str(path))} \"$held/{i}\""]
    lines.append(f"mount -t tmpfs -o size=64k,mode=0755 vmc-lab {lab}")
    for i, path in enumerate(keep):
        q = shlex.quote(str(path))
        lines += [f"mkdir -p {q}", f"mount --bind \"$held/{i}\" {q}", f"umount \"$held/{i}\""]
    lines += [f"mount -o remount,bind,ro {lab}", "rm -rf \"$held\""]
    # Nor the other hosts' network namespaces: a host learns of another's links from
    # what it publishes, never by looking (a real host has no handle on them either).
    lines.append("mount -t tmpfs -o ro,size=4k,mode=0555 vmc-netns /run/netns")
    return lines


def _make(layout: LabLayout, node: str) -> Path:
    mnt = layout.state_dir / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    if not _mounted(mnt):  # the binding of a namespace must live on a private mount
        _run(["mount", "--bind", str(mnt), str(mnt)])
        _run(["mount", "--make-private", str(mnt)])
    target = mount_namespace_file(layout, node)
    if _mounted(target):
        return target
    target.touch()
    script = ["set -e", "mount -t sysfs sysfs /sys"]
    if read_state(layout).get("control_plane", False):
        script += _cover_script(layout, node)
    else:  # its hosts read the lab's records: only the others' and the CA are hidden
        script += [f"mount -t tmpfs -o ro,size=4k,mode=0555 vmc-hidden {shlex.quote(str(p))}"
                   for p in hidden_from(layout, node)]
    _run(["unshare", f"--mount={target}", "--propagation", "private", "nsenter",
          f"--net=/run/netns/{layout.node_ns(node)}", "sh", "-c", "; ".join(script)])
    return target


def enter_prefix(layout: LabLayout, node: str) -> list[str]:
    """The command prefix that runs something in ``node``'s network and mount namespaces."""
    return ["nsenter", f"--net=/run/netns/{layout.node_ns(node)}",
            f"--mount={mount_namespace_file(layout, node)}", "--"]


def remove_host_namespaces(layout: LabLayout) -> int:
    """Unbind every host's mount namespace and the private mount; the count unbound.
    Safe to repeat (after the processes in them are gone, the namespaces go too)."""
    mnt = layout.state_dir / "mnt"
    if not mnt.is_dir():
        return 0
    count = 0
    for f in sorted(mnt.iterdir()):
        if _mounted(f):
            subprocess.run(["umount", "-l", str(f)], capture_output=True, timeout=30,
                           check=False)
            count += 1
    for _ in range(10):  # bounded: a bind made twice needs two unmounts
        if not _mounted(mnt):
            break
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30, check=False)
    return count
