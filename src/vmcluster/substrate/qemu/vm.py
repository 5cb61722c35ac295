"""One VM as a QEMU process: its configuration and its command line.

The same :class:`VmConfig` produces the source's and the target's command
lines, so both sides of a migration have identical devices: the machine type
is the VM's pinned one (``pc-q35-7.2``, never the bare ``q35`` alias, which
resolves to a different machine on every QEMU version), and the NIC carries
no option ROM (the guests boot with ``-kernel``; a ROM's size differs between
QEMU builds and would break a 7.2 -> 10 migration). Each host runs its own
QEMU (:class:`~vmcluster.substrate.qemu.facts.QemuInstall`): the config never
names a binary. TCG with ``thread=single`` by default, KVM when the node says
``accel = "kvm"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmcluster.substrate.qemu.facts import QemuInstall, machine_version

__all__ = [
    "DISK_NODE",
    "FV_SIGNATURE",
    "FV_SIGNATURE_AT",
    "LUN_NODE_PREFIX",
    "NBD_TLS",
    "OVMF_CODE",
    "OVMF_VARS",
    "PATH_NODE",
    "VmConfig",
    "boot_args",
    "disk_args",
    "mac_for",
    "qemu_argv",
    "ram_arg",
    "tls_object",
]

def ram_arg(memory_mib: int, accel: str = "tcg", machine: str = "q35") -> str:
    """QEMU's ``-m`` value for a VM of ``memory_mib`` pinned to ``machine``.

    A TCG VM that may run on a QEMU 7.2 host (machine type older than
    pc-q35-8.0, or the unpinned alias) gets one 4 KiB page more than asked.
    QEMU 7.2 syncs the dirty bitmap of a RAM block whose size is a multiple of
    64 pages through a fast path that does not reset TCG's TLB dirty state, so
    pages the vCPU keeps writing through a cached TLB entry are not sent again:
    at exactly 256 MiB the migrated guest's kernel died in 12 of 12 migrations
    on 7.2.22 (5 of 13 corrupt on an earlier 7.2 build), and in 0 of 10 with one
    page more. QEMU 10.0 lost nothing at exactly 256 MiB (0 of 16), and the odd
    size costs it 200-700 ms of migration setup, so VMs pinned to a newer
    machine (which can never run on 7.2) get exactly what they ask. The size is
    the machine type's, not the host's: both ends of a migration must agree.
    """
    version = machine_version(machine)
    if accel == "kvm" or (version is not None and version >= (8, 0)):
        return str(memory_mib)
    return f"{memory_mib * 1024 + 4}k"


def mac_for(vm: str) -> str:
    """A stable, locally administered MAC (QEMU's 52:54:00 prefix) for ``vm``."""
    h = hashlib.sha1(vm.encode()).digest()
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*h[:3])


@dataclass(frozen=True)
class VmConfig:
    """Everything an agent needs to run one VM (sent as JSON)."""

    name: str
    memory_mib: int
    vcpus: int
    mac: str
    tap: str
    bridge: str
    kernel: str
    initrd: str
    append: str
    disk: str
    accel: str = "tcg"
    # The pinned machine type ("pc-q35-7.2"); "q35" only for a VM defined before pinning.
    machine: str = "q35"
    # A disk on a cluster shared volume: {"host", "port", "export", "offset", "size",
    # "volume"}; the region [offset, offset + size) of the LUN served over NBD.
    csv: dict[str, Any] | None = None
    # "kernel": -kernel/-initrd/-append above; "bios": SeaBIOS boots the disk (kernel,
    # initrd and append unused); "uefi": OVMF (firmware: its code and variables files).
    boot: str = "kernel"
    # For "uefi": {"code": OVMF's code file on this host, and its variables: "vars_file"
    # (a file of the VM's own) or "vars_offset" and "vars_size" (a region of the VM's
    # shared volume, beside its disk)}.
    firmware: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmConfig:
        return cls(**data)


DISK_NODE = "disk0"
LUN_NODE_PREFIX = "lun-"
PATH_NODE = "csvpath"


NBD_TLS = "vmc-nbd"  # the tls-creds-x509 object a CSV disk's NBD connections use


def tls_object(obj_id: str, endpoint: str, directory: str | Path) -> str:
    """A ``tls-creds-x509`` object for ``-object`` (QEMU) or ``--object``
    (qemu-storage-daemon): the host's own certificate in ``directory``, the peer's
    checked against the cluster CA there."""
    return f"tls-creds-x509,id={obj_id},endpoint={endpoint},dir={directory},verify-peer=on"


def disk_args(cfg: VmConfig) -> list[str]:
    """The VM's disk: a local file, or a region of a CSV LUN reached over NBD."""
    if cfg.csv is None:
        # locking=off: the source and the incoming target open the disk at once; the
        # migration hands ownership over, so there is only ever one writer.
        return [
            "-blockdev",
            f"driver=raw,node-name={DISK_NODE},file.driver=file,file.filename={cfg.disk},"
            "file.locking=off,cache.direct=off",
            "-device", f"virtio-blk-pci,drive={DISK_NODE}",
        ]
    c = cfg.csv
    lun = f"{LUN_NODE_PREFIX}0"
    # raw (a window on the LUN) -> quorum (one child, the path in use) -> nbd. A path switch
    # adds the new path's NBD node as a second quorum child and removes the old one
    # (x-blockdev-change): unlike blockdev-reopen it never flushes the old path, which a dead
    # path cannot do. With vote-threshold=1 a write succeeds when one path took it.
    # werror/rerror=stop: an I/O that fails during the switch pauses the VM (and is retried
    # on `cont`) instead of failing in the guest.
    return [
        "-blockdev",
        f"driver=nbd,node-name={lun},server.type=inet,server.host={c['host']},"
        f"server.port={c['port']},export={c['export']},tls-creds={NBD_TLS},"
        f"tls-hostname={c.get('name', 'san')}",
        "-blockdev",
        f"driver=quorum,node-name={PATH_NODE},vote-threshold=1,read-pattern=fifo,"
        f"children.0={lun}",
        "-blockdev",
        f"driver=raw,node-name={DISK_NODE},file={PATH_NODE},offset={c['offset']},"
        f"size={c['size']}",
        # A UEFI VM's variables are a second window on the same path (boot_args): the
        # disk shares writes with it (the two regions never overlap).
        "-device", f"virtio-blk-pci,drive={DISK_NODE},werror=stop,rerror=stop"
        + (",share-rw=on" if cfg.boot == "uefi" else ""),
    ]


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"  # Debian's ovmf package
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"  # the template of a VM's variables
FV_SIGNATURE_AT, FV_SIGNATURE = 40, b"_FVH"  # a firmware volume's header: vars in place
CODE_NODE, VARS_NODE = "ovmf-code", "ovmf-vars"


def boot_args(cfg: VmConfig) -> list[str]:
    """How the VM boots: the host's kernel directly, or its own disk through SeaBIOS
    (QEMU's default firmware) or OVMF (UEFI: its code read-only; its variables the VM's
    own, in a file or in a region of its shared volume, so that they move with it). After
    :func:`disk_args`: the variables' region sits on the disk's path node."""
    if cfg.boot == "kernel":
        return ["-kernel", cfg.kernel, "-initrd", cfg.initrd, "-append", cfg.append]
    if cfg.boot == "bios":
        return ["-boot", "order=c,strict=on"]
    fw = cfg.firmware
    if cfg.boot != "uefi" or not fw:
        raise ValueError(f"{cfg.name}: boot {cfg.boot!r} is unknown, or uefi without firmware")
    out = ["-blockdev", f"driver=file,node-name={CODE_NODE}-file,filename={fw['code']},"
           "read-only=on",
           "-blockdev", f"driver=raw,node-name={CODE_NODE},file={CODE_NODE}-file,read-only=on"]
    if "vars_file" in fw:
        return [*out, "-blockdev", f"driver=file,node-name={VARS_NODE}-file,"
                f"filename={fw['vars_file']},locking=off",
                "-blockdev", f"driver=raw,node-name={VARS_NODE},file={VARS_NODE}-file"]
    if cfg.csv is None:
        raise ValueError(f"{cfg.name}: its UEFI variables are on a volume it has no disk on")
    return [*out, "-blockdev", f"driver=raw,node-name={VARS_NODE},file={PATH_NODE},"
            f"offset={int(fw['vars_offset'])},size={int(fw['vars_size'])}"]


def _machine_arg(cfg: VmConfig) -> str:
    if cfg.boot == "uefi":
        return f"{cfg.machine},pflash0={CODE_NODE},pflash1={VARS_NODE}"
    return cfg.machine


def qemu_argv(
    cfg: VmConfig, qmp_socket: str, serial_log: str, pidfile: str, incoming: bool = False,
    install: QemuInstall | None = None, tls_dir: str | None = None,
) -> list[str]:
    """The QEMU command line on a host running ``install`` (default: the system's QEMU).

    ``incoming``: wait for ``migrate-incoming`` (``-incoming defer``). ``tls_dir``: the
    host's certificates in QEMU's layout, for a CSV disk's NBD connections (needed then).
    """
    nbd_tls: list[str] = []
    if cfg.csv is not None:
        if not tls_dir:
            raise ValueError(f"{cfg.name}'s CSV disk is reached over NBD with TLS: pass tls_dir")
        nbd_tls = ["-object", tls_object(NBD_TLS, "client", tls_dir)]
    accel = "kvm" if cfg.accel == "kvm" else "tcg,thread=single"
    argv = [
        *(install or QemuInstall()).argv0(),
        "-name", f"{cfg.name},debug-threads=on",
        "-machine", _machine_arg(cfg),
        "-accel", accel,
        "-m", ram_arg(cfg.memory_mib, cfg.accel, cfg.machine),
        "-smp", str(cfg.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"file,id=ser0,path={serial_log},append=on",
        "-serial", "chardev:ser0",
        "-netdev", f"tap,id=net0,ifname={cfg.tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={cfg.mac},romfile=",
        *nbd_tls,
        *disk_args(cfg),
        *boot_args(cfg),
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-pidfile", pidfile,
    ]
    if cfg.accel == "kvm":
        argv += ["-cpu", "host"]
    if incoming:
        # -S: a target stays paused once the state is in; it runs only when its agent is
        # told to take over, which the driver does after ownership moved in the store.
        argv += ["-S", "-incoming", "defer"]
    return argv
