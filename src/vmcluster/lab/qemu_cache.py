"""QEMU 7.2 for one lab host: Debian 12 main's packages, extracted into a cache.

A cluster being upgraded host by host runs two QEMUs at once. The lab shows
that on one machine by giving one host Debian 12 main's QEMU 7.2 while the
others run the installed QEMU 10 from bookworm-backports: ``apt-get download``
of ``qemu-system-x86``, ``qemu-system-common`` (its accelerator and block
modules) and ``qemu-system-data`` (its firmware blobs) at the version the
``bookworm`` suite carries, ``dpkg-deb -x`` into a cache directory named by
those versions, as the guest kernel is. The binary runs with its own data
directory (``-L``) and module directory (``QEMU_MODULE_DIR``); the BIOS comes
from the installed ``seabios``, and the NIC has no option ROM at all (the
guests boot with ``-kernel``; see :func:`vmcluster.substrate.qemu.vm.qemu_argv`).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from vmcluster.errors import LabError
from vmcluster.substrate.qemu.facts import QemuInstall
from vmcluster.substrate.qemu.image import cache_workdir, default_cache_dir, run_tool

__all__ = ["LAB_QEMUS", "ensure_qemu", "suite_version"]

PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data")
# The QEMUs a lab host can be given besides the installed one: name -> apt suite.
LAB_QEMUS = {"debian-7.2": "bookworm"}
_MODULES = "usr/lib/x86_64-linux-gnu/qemu"


def suite_version(madison: str, package: str, suite: str) -> str | None:
    """The version of ``package`` that ``suite``'s main component carries, from
    ``apt-cache madison`` output (``pkg | version | URI suite/main arch Packages``)."""
    for line in madison.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or parts[0] != package:
            continue
        fields = parts[2].split()
        if len(fields) >= 2 and fields[1] == f"{suite}/main":
            return parts[1]
    return None


def ensure_qemu(name: str, cache_dir: Path | None = None,
                progress: Callable[[str], None] | None = None) -> QemuInstall:
    """The lab QEMU called ``name`` (see :data:`LAB_QEMUS`), extracted once into the cache."""
    say = progress or (lambda _m: None)
    if name not in LAB_QEMUS:
        raise LabError(f"unknown lab QEMU {name!r}; use one of {', '.join(LAB_QEMUS)} "
                       "(or leave it out for the installed QEMU)")
    suite = LAB_QEMUS[name]
    versions: dict[str, str] = {}
    for pkg in PACKAGES:
        madison = run_tool(["apt-cache", "madison", pkg], f"apt-cache madison {pkg}")
        v = suite_version(madison, pkg, suite)
        if v is None:
            raise LabError(f"apt knows no {pkg} in {suite}/main; run apt-get update "
                           "(scripts/setup)")
        versions[pkg] = v
    key = hashlib.sha256(repr(sorted(versions.items())).encode()).hexdigest()[:12]
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    final = cache / f"qemu-{name}-{key}"
    install = QemuInstall(
        binary=str(final / "usr/bin/qemu-system-x86_64"), datadir=str(final / "usr/share/qemu"),
        moduledir=str(final / _MODULES), label=name)
    if (final / ".complete").is_file():
        say(f"QEMU {name}: cached in {final}")
        return install
    work = cache_workdir(cache, ".qemu-", "QEMU")
    try:
        dl, root = work / "download", work / "root"
        dl.mkdir()
        say(f"QEMU {name}: downloading {', '.join(f'{p}={v}' for p, v in versions.items())}")
        run_tool(["apt-get", "download", *(f"{p}={v}" for p, v in versions.items())],
                 "apt-get download (QEMU 7.2)", cwd=dl, timeout=600)
        for deb in sorted(dl.glob("*.deb")):
            run_tool(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}",
                     timeout=300)
        _check_libraries(root / "usr/bin/qemu-system-x86_64")
        (root / ".complete").write_text("\n".join(f"{p}={v}" for p, v in versions.items()))
        try:
            root.rename(final)
        except OSError:
            if not (final / ".complete").is_file():
                raise
    except OSError as exc:
        raise LabError(f"extracting QEMU {name} in {work} failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"QEMU {name}: extracted into {final}")
    return install


def _check_libraries(binary: Path) -> None:
    out = run_tool(["ldd", str(binary)], f"ldd {binary.name}")
    missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
    if missing:
        raise LabError(f"the extracted QEMU needs {', '.join(missing)}, which this machine "
                       "lacks; install the Debian packages that ship them")
