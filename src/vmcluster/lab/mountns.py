"""Each lab host's own mount namespace: what one host's processes cannot see of another.

A host gets a persistent mount namespace, made once and bound onto
``<lab>/mnt/<node>`` (a private mount, so the binding stays in the root
namespace). Inside it:

* ``/sys`` is mounted again from the host's network namespace (so that
  ``/sys/class/net`` shows its own interfaces, as ``ip netns exec`` does);
* every other host's directory (its keys, QEMU records, etcd data, sockets), the
  cluster CA's directory and the admin's credentials are covered by an empty,
  read-only tmpfs.

The lab starts the host's ``vmclusterd`` with ``nsenter --net=... --mount=...``,
so every process of the host (the parts, the watchdog, its QEMUs) lives in both
namespaces. A lab with a control plane hides its own records (``harness/``: which
node owns what, the CSV coordinators of a lab without a store) from its hosts: they
know the cluster from etcd only. What the lab still shares with every host: the
spec file (which they do not read), the file storage of VMs without a shared volume
(their plain disks and quick-migration states), and the guest image and QEMU
binaries (read-only, as packages are).
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from pathlib import Path

from vmcluster.errors import LabError
from vmcluster.lab.layout import LabLayout
from vmcluster.lab.state import read_state

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
    """What a host must not see: the other hosts' directories, the CA, the admin's, and
    (when its lab runs a control plane) the lab's own records."""
    hosts = layout.state_dir / "hosts"
    mine = layout.host_dir(node)
    hidden = [p for p in sorted(hosts.iterdir()) if p.is_dir() and p != mine]
    if layout.ca_dir.is_dir():
        hidden.append(layout.ca_dir)
    if read_state(layout).get("control_plane", False):
        hidden.append(layout.harness_dir)
    return hidden


_LOCK = threading.Lock()


def make_host_namespace(layout: LabLayout, node: str) -> Path:
    """Make ``node``'s mount namespace (once); returns the file it is bound onto."""
    with _LOCK:  # hosts start in parallel; the private mount is made once
        return _make(layout, node)


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
