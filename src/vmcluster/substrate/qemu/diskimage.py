"""Disk images as ``qemu-img`` reads them: what an imported image is, and its raw bytes.

``vmcluster vm import`` is the seed's P2V for Linux: an existing disk (raw, qcow2,
vmdk, vhd, vhdx) goes onto a shared volume as the disk of a new VM. The host that
receives the upload asks ``qemu-img info`` what it is (a file qemu-img cannot read,
or of another format, is refused before anything is created), then
``qemu-img convert -O raw`` makes the bytes the VM's region gets.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmcluster.errors import InputError, SubstrateError

__all__ = ["FORMATS", "ImageInfo", "image_info", "to_raw"]

# qemu-img's names: vpc is VHD
FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")
MIB = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes the file holds

    @property
    def disk_mib(self) -> int:
        """The VM's disk size: the image's, rounded up to whole MiB."""
        return max(1, -(-self.virtual_size // MIB))

    def to_json(self) -> dict[str, object]:
        return {"format": self.format, "virtual_size": self.virtual_size,
                "actual_size": self.actual_size, "disk_mib": self.disk_mib}


def image_info(path: Path, what: str = "the image") -> ImageInfo:
    """What ``qemu-img info`` says of ``path``; InputError when it cannot read it or the
    format is not one a VM disk is imported from."""
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubstrateError(f"qemu-img info {what}: {exc}") from exc
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no reason given"])[-1]
        why = why.replace(str(path), what)
        raise InputError(f"qemu-img cannot read {what}: {why}")
    try:
        data = json.loads(out.stdout)
        info = ImageInfo(str(data["format"]), int(data["virtual-size"]),
                         int(data.get("actual-size", 0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise SubstrateError(f"qemu-img info {what}: unexpected answer: {exc}") from exc
    if info.format not in FORMATS:
        raise InputError(f"{what} is {info.format}; a VM's disk is imported from "
                         f"{', '.join(FORMATS)} (vpc is VHD)")
    if info.virtual_size <= 0:
        raise InputError(f"{what} has no size ({info.virtual_size} bytes)")
    return info


def to_raw(src: Path, info: ImageInfo, dst: Path, what: str = "the image") -> None:
    """``src`` (of ``info.format``) as raw bytes in ``dst``, exactly its virtual size."""
    try:
        out = subprocess.run(["qemu-img", "convert", "-f", info.format, "-O", "raw", str(src),
                              str(dst)], capture_output=True, text=True, timeout=3600,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubstrateError(f"qemu-img convert {what}: {exc}") from exc
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise InputError(f"qemu-img cannot convert {what}: {why.replace(str(src), what)}")
