"""A small disk that boots by itself, made from Debian's packages: what a VM imported
from another machine brings (its own boot loader, kernel and initrd), for trying
firmware boot (``boot = "bios"`` or ``"uefi"``) without downloading an OS image.

The disk is an MBR (syslinux's ``mbr.bin``) with one bootable FAT partition that holds
the kernel and initrd of a :class:`~vmcluster.substrate.qemu.image.GuestImage`, SYSLINUX
for BIOS (``ldlinux.sys``, installed through mtools: no loop device, no mount) and
SYSLINUX's EFI loader as the removable-media path ``/EFI/BOOT/BOOTX64.EFI`` for UEFI,
both with a configuration that boots the kernel with the given command line and prints
on the first serial port.

Tools: ``mkfs.fat`` (dosfstools), ``mcopy``/``mmd`` (mtools), ``syslinux``, ``sfdisk``
(fdisk), and the files of ``syslinux-common`` and ``syslinux-efi``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vmcluster.errors import LabError
from vmcluster.substrate.qemu.image import GuestImage, run_tool

__all__ = ["BIOS_LOADER", "EFI_LOADER", "MBR", "build_boot_disk"]

MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
EFI_LOADER = Path("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")
EFI_LDLINUX = Path("/usr/lib/syslinux/modules/efi64/ldlinux.e64")
BIOS_LOADER = "syslinux"
MIB = 1 << 20
PART_START_MIB = 1


def _config(cmdline: str) -> str:
    return ("SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT vmc\n"
            f"LABEL vmc\n  LINUX /vmlinuz\n  INITRD /initrd\n  APPEND {cmdline}\n")


def build_boot_disk(out: Path, image: GuestImage, cmdline: str, size_mib: int = 48) -> Path:
    """Write a raw disk of ``size_mib`` MiB to ``out`` that boots ``image`` with
    ``cmdline`` under SeaBIOS and under OVMF. Raises LabError naming a missing tool or
    file, or the step that failed."""
    need = image.kernel.stat().st_size + image.initrd.stat().st_size
    if (need + 4 * MIB) > (size_mib - PART_START_MIB) * MIB:
        raise LabError(f"a boot disk of {size_mib} MiB cannot hold the kernel and initrd "
                       f"({need / MIB:.1f} MiB)")
    for tool in ("mkfs.fat", "mcopy", "mmd", "syslinux", "sfdisk"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing: scripts/setup installs it (dosfstools, "
                           "mtools, syslinux, fdisk)")
    for needed in (MBR, EFI_LOADER, EFI_LDLINUX):
        if not needed.is_file():
            raise LabError(f"{needed} is missing: scripts/setup installs it (syslinux-common, "
                           "syslinux-efi)")
    work = Path(tempfile.mkdtemp(prefix="vmc-bootdisk-"))
    try:
        part = work / "part.img"
        part_kib = (size_mib - PART_START_MIB) * 1024
        run_tool(["mkfs.fat", "-F", "16", "-n", "VMCBOOT", "-C", str(part), str(part_kib)],
                 "mkfs.fat")
        cfg = work / "syslinux.cfg"
        cfg.write_text(_config(cmdline))
        img = ["-i", str(part)]
        run_tool(["mmd", *img, "::/EFI", "::/EFI/BOOT"], "mmd")
        for src, dst in ((image.kernel, "::/vmlinuz"), (image.initrd, "::/initrd"),
                         (cfg, "::/syslinux.cfg"), (EFI_LOADER, "::/EFI/BOOT/BOOTX64.EFI"),
                         (EFI_LDLINUX, "::/EFI/BOOT/ldlinux.e64"),
                         (cfg, "::/EFI/BOOT/syslinux.cfg")):
            run_tool(["mcopy", *img, str(src), dst], f"mcopy {dst}")
        run_tool([BIOS_LOADER, "--install", str(part)], "syslinux --install")
        tmp = out.with_name(out.name + ".part")
        with tmp.open("wb") as f:
            f.truncate(size_mib * MIB)
            f.write(MBR.read_bytes()[:440])
        table = f"label: dos\nstart={PART_START_MIB * 2048}, type=c, bootable\n"
        run_tool(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)],
                 "sfdisk", stdin=table)
        with tmp.open("r+b") as f, part.open("rb") as p:
            f.seek(PART_START_MIB * MIB)
            shutil.copyfileobj(p, f, 4 * MIB)
        tmp.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
