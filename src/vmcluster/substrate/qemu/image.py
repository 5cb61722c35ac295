"""The guest image the lab boots in QEMU: a Debian cloud kernel and a small initramfs.

The initramfs holds busybox (from ``busybox-static``), the ``/init`` script, the
memory-dirtying ``workload`` and the disk-checking ``diskwriter`` from ``guest/``,
and the virtio modules of the kernel,
loaded in the order depmod resolved. Everything comes from Debian packages:
``apt-get download`` of the kernel named by the ``linux-image-cloud-amd64``
metapackage, ``dpkg-deb -x``, ``depmod -b``, ``gcc -static``.

Built images are cached under ``$XDG_CACHE_HOME/vmcluster`` (or
``~/.cache/vmcluster``) in a directory named by a hash of every input (kernel
package and version, every file in ``guest/``, busybox and gcc versions), so a
second call returns at once and any change to an input builds a new image.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmcluster.errors import InputError, LabError

__all__ = [
    "LAB_NET",
    "GuestImage",
    "cache_workdir",
    "default_cache_dir",
    "ensure_guest_image",
    "kernel_cmdline",
    "module_load_order",
    "run_tool",
]

GUEST_DIR = Path(__file__).parent / "guest"
KERNEL_META = "linux-image-cloud-amd64"
MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "button", "evdev")  # button, evdev: ACPI power
GUEST_PROGRAMS = ("workload", "diskwriter")  # guest/<name>.c, each one static binary
BUSYBOX = Path("/bin/busybox")
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
_FORMAT = 1  # bump when the layout of the image changes
_META = "guest.json"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: ``-kernel kernel -initrd initrd``; see :func:`kernel_cmdline`."""

    kernel: Path
    initrd: Path
    kernel_version: str


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmcluster"


def ensure_guest_image(
    cache_dir: Path | None = None, progress: Progress | None = None
) -> GuestImage:
    """Return the guest image for the current inputs, building it once if needed.

    Raises :class:`LabError` (one line naming the step and what to do) when a tool
    or package is missing or a build step fails.
    """
    say: Progress = progress or (lambda _msg: None)
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    say(f"guest image: resolving {KERNEL_META}")
    package, version = _kernel_package()
    inputs = {
        "format": str(_FORMAT),
        "kernel_package": package,
        "kernel_package_version": version,
        **{f.name: _sha256(f) for f in sorted(GUEST_DIR.iterdir()) if f.is_file()},
        "busybox": run_tool(["dpkg-query", "-W", "-f=${Version}", "busybox-static"],
                        "dpkg-query busybox-static").strip(),
        "gcc": run_tool(["gcc", "-dumpfullversion"], "gcc -dumpfullversion").strip(),
        "modules": ",".join(MODULES),
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    final = cache / f"guest-{key}"
    cached = _load(final)
    if cached is not None:
        say(f"guest image: cached in {final} (kernel {cached.kernel_version})")
        return cached
    work = cache_workdir(cache, ".build-", "image")
    try:
        out = work / "out"
        out.mkdir()
        _build(work, out, package, version, inputs, say)
        try:
            out.rename(final)
        except OSError:
            # Another process finished the same image first; use theirs.
            if _load(final) is None:
                raise
    except OSError as exc:
        raise LabError(f"building the guest image in {work} failed: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    image = _load(final)
    if image is None:
        raise LabError(f"guest image in {final} is incomplete; remove it and retry")
    say(f"guest image: built {final} (kernel {image.kernel_version})")
    return image


def cache_workdir(cache: Path, prefix: str, what: str) -> Path:
    """A new private work directory inside ``cache`` (renamed into place when complete, so
    that two builds never see each other's half-made files)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=cache))
    except OSError as exc:
        raise LabError(f"cannot create the {what} cache {cache}: {exc.strerror}") from exc


def kernel_cmdline(
    ip: str,
    prefix: int,
    mem_mib: int,
    wws_mib: int,
    dirty_mibps: float,
    port: int = 7777,
    extra: str = "",
    gw: str = "",
    disk_kibps: float | None = None,
) -> str:
    """The kernel command line for one lab VM booted from a :class:`GuestImage`.

    ``ip/prefix`` is eth0's address (lab range 198.18.0.0/15 only), ``gw`` an
    optional default route; the workload allocates ``mem_mib`` MiB, dirties the
    first ``wws_mib`` of it at ``dirty_mibps`` MiB/s and serves TCP on ``port``.
    ``mem_mib`` must fit in the guest's RAM with ~64 MiB to spare for the kernel.
    ``disk_kibps``: the disk writer's rate (0 = as fast as the disk goes).
    """
    addr = _lab_address(ip, "ip")
    if gw:
        _lab_address(gw, "gw")
    if not 8 <= prefix <= 32:
        raise InputError(f"guest prefix /{prefix} is out of range (use 8..32)")
    if mem_mib < 1 or not 0 <= wws_mib <= mem_mib:
        raise InputError(
            f"guest workload sizes mem_mib={mem_mib} wws_mib={wws_mib} are invalid "
            "(need mem_mib >= 1 and 0 <= wws_mib <= mem_mib)"
        )
    if dirty_mibps < 0:
        raise InputError(f"guest dirty rate {dirty_mibps} MiB/s is negative")
    if not 1 <= port <= 65535:
        raise InputError(f"guest port {port} is out of range (use 1..65535)")
    parts = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "rdinit=/init",
        "mitigations=off",
        f"vmc.ip={addr}/{prefix}",
        f"vmc.mem_mib={mem_mib}",
        f"vmc.wws_mib={wws_mib}",
        f"vmc.dirty_mibps={dirty_mibps:g}",
        f"vmc.port={port}",
    ]
    if gw:
        parts.append(f"vmc.gw={gw}")
    if disk_kibps is not None:
        if disk_kibps < 0:
            raise InputError(f"guest disk write rate {disk_kibps} KiB/s is negative")
        parts.append(f"vmc.disk_kibps={disk_kibps:g}")
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def module_load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Paths (as in ``modules.dep``) of ``wanted`` and their dependencies, each
    after everything it depends on. Module names match with ``-`` and ``_`` alike.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        head, sep, tail = line.partition(":")
        if not sep:
            continue
        path = head.strip()
        deps[path] = tail.split()
        by_name[_module_name(path)] = path
    order: list[str] = []
    done: set[str] = set()

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in done:
            return
        if path in chain:
            raise LabError(f"modules.dep has a dependency cycle through {path}")
        for dep in deps.get(path, []):
            visit(dep, (*chain, path))
        done.add(path)
        order.append(path)

    for name in wanted:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise LabError(f"kernel module {name} is not in modules.dep; is this a cloud kernel?")
        visit(found, ())
    return order


# ------------------------------------------------------------------ build steps


def _build(
    work: Path, out: Path, package: str, version: str, inputs: dict[str, str], say: Progress
) -> None:
    if not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX} is missing; install busybox-static (run scripts/setup)")
    dl = work / "download"
    dl.mkdir()
    say(f"guest image: downloading {package} {version}")
    run_tool(["apt-get", "download", f"{package}={version}"], f"apt-get download {package}", cwd=dl,
         timeout=600)
    debs = sorted(dl.glob("*.deb"))
    if len(debs) != 1:
        raise LabError(f"apt-get download {package} left {len(debs)} .deb files; run scripts/setup")
    root = work / "kernel"
    say(f"guest image: extracting {debs[0].name}")
    run_tool(["dpkg-deb", "-x", str(debs[0]), str(root)], f"dpkg-deb -x {debs[0].name}",
             timeout=300)
    versions = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(versions) != 1:
        raise LabError(f"{package} holds {len(versions)} module trees, expected 1")
    kver = versions[0]
    vmlinuz = root / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise LabError(f"{package} has no boot/vmlinuz-{kver}")
    say(f"guest image: depmod -b for {kver}")
    run_tool(["depmod", "-b", str(root), kver], f"depmod -b {root} {kver}", timeout=300)
    moddir = root / "lib/modules" / kver
    order = module_load_order((moddir / "modules.dep").read_text(), MODULES)

    workload, diskwriter = (_compile(name, work, say) for name in GUEST_PROGRAMS)

    say(f"guest image: packing initramfs ({len(order)} modules)")
    cpio = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
              "root", "etc", "etc/vmc", "lib", "lib/modules", f"lib/modules/{kver}"):
        cpio.directory(d)
    cpio.device("dev/console", 0o600, 5, 1)
    cpio.device("dev/null", 0o666, 1, 3)
    cpio.file("init", (GUEST_DIR / "init").read_bytes(), 0o755)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for program in (workload, diskwriter):
        cpio.file(f"bin/{program.name}", program.read_bytes(), 0o755)
    loaded: list[str] = []
    for rel in order:
        data, rel_ko = _module_bytes(moddir / rel, rel)
        cpio.parents(f"lib/modules/{kver}/{rel_ko}")
        cpio.file(f"lib/modules/{kver}/{rel_ko}", data, 0o644)
        loaded.append(rel_ko)
    cpio.file("etc/vmc/modules", ("\n".join(loaded) + "\n").encode(), 0o644)
    (out / "initrd.img").write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    meta = {"kernel_version": kver, "modules": loaded, "inputs": inputs}
    (out / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _compile(name: str, work: Path, say: Callable[[str], None]) -> Path:
    """guest/<name>.c as a static binary (the guest has no libc of its own)."""
    say(f"guest image: compiling {name}.c (gcc -static)")
    out = work / name
    run_tool(["gcc", "-static", "-O2", "-s", "-pthread", "-I", str(GUEST_DIR), "-o", str(out),
          str(GUEST_DIR / f"{name}.c")], f"gcc -static {name}.c", timeout=300)
    return out


def _module_bytes(path: Path, rel: str) -> tuple[bytes, str]:
    """The module's ELF bytes and its path with a plain ``.ko`` suffix (busybox
    insmod reads only uncompressed modules)."""
    if rel.endswith(".ko"):
        return path.read_bytes(), rel
    if rel.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes()), rel[: -len(".xz")]
    if rel.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes()), rel[: -len(".gz")]
    raise LabError(f"kernel module {rel} uses a compression this builder cannot unpack")


def _kernel_package() -> tuple[str, str]:
    """The versioned kernel package the metapackage depends on, and its version."""
    text = run_tool(["apt-cache", "depends", KERNEL_META], f"apt-cache depends {KERNEL_META}")
    names = [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.strip().startswith("Depends:")
    ]
    pkgs = [n for n in names if n.startswith("linux-image-") and n.endswith("-cloud-amd64")]
    if not pkgs:
        raise LabError(f"apt-cache depends {KERNEL_META} names no kernel; run scripts/setup")
    package = pkgs[0]
    show = run_tool(["apt-cache", "show", "--no-all-versions", package],
                    f"apt-cache show {package}")
    for line in show.splitlines():
        if line.startswith("Version:"):
            return package, line.split(":", 1)[1].strip()
    raise LabError(f"apt-cache show {package} gives no version; run apt-get update")


def _load(final: Path) -> GuestImage | None:
    try:
        meta = json.loads((final / _META).read_text())
    except (OSError, ValueError):
        return None
    kernel, initrd = final / "vmlinuz", final / "initrd.img"
    if not (kernel.is_file() and initrd.is_file()) or not isinstance(meta, dict):
        return None
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=str(meta["kernel_version"]))


def run_tool(argv: list[str], what: str, cwd: Path | None = None, timeout: float = 60,
             stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
            input=stdin,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what}: {argv[0]} is not installed; run scripts/setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what}: no result after {timeout:g} s; check the network") from exc
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:] or f"exit {proc.returncode}"
        raise LabError(f"{what}: {tail}; run scripts/setup")
    return proc.stdout


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise LabError(f"guest source {path} is unreadable: {exc.strerror}") from exc


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def _lab_address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise InputError(f"guest {what} {text!r} is not an IPv4 address") from exc
    if addr not in LAB_NET:
        raise InputError(f"guest {what} {addr} is outside the lab range {LAB_NET}")
    return addr


class _Cpio:
    """A newc ("070701") archive built in memory: root-owned, mtime 0, reproducible."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def directory(self, name: str) -> None:
        if name not in self._dirs:
            self._dirs.add(name)
            self._entry(name, 0o040755, b"", nlink=2)

    def parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, 0o100000 | perm, data)

    def device(self, name: str, perm: int, major: int, minor: int) -> None:
        self._entry(name, 0o020000 | perm, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", ino=0)
        return b"".join(self._parts)

    def _entry(
        self, name: str, mode: int, data: bytes, nlink: int = 1,
        rdev: tuple[int, int] = (0, 0), ino: int | None = None,
    ) -> None:
        raw = name.encode() + b"\0"
        fields = (
            self._ino if ino is None else ino, mode, 0, 0, nlink, 0, len(data),
            0, 0, rdev[0], rdev[1], len(raw), 0,
        )
        self._ino += 1
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        self._parts += [head, b"\0" * (-len(head) % 4), data, b"\0" * (-len(data) % 4)]
