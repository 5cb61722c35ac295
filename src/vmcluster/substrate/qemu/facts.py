"""What a host's QEMU can do, asked of QEMU itself over QMP, and whether two can migrate.

A node agent probes its QEMU once at start (:func:`probe`): a throw-away
``qemu-system-x86_64 -machine none`` answers ``query-version``,
``query-commands``, ``query-migrate-capabilities`` and ``query-machines``, and
is asked to combine multifd with post-copy (10.0 refuses; 7.2 accepts, then fails).
Nothing is decided by version string except the one rule QEMU documents:
migration goes to the same or a newer QEMU, never back.

* :class:`QemuInstall` - which binary (and data directory, ``-L``) a host runs.
* :class:`QemuFacts` - the probe's answer, JSON-able, reported by the agent.
* :func:`pinned_machine` - the machine type a new VM is pinned to: the newest
  versioned ``pc-q35-X.Y`` every host knows, so a cluster being upgraded host
  by host can move it to a newer QEMU.
* :func:`migration_refusal` - the one line that refuses a migration between
  two QEMUs before anything starts, or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmcluster.errors import QemuRefused, QmpError, SubstrateError
from vmcluster.substrate.qemu.qmp import Qmp

__all__ = [
    "QemuFacts",
    "QemuInstall",
    "machine_version",
    "migration_refusal",
    "pinned_machine",
    "probe",
]

DEFAULT_BINARY = "qemu-system-x86_64"
_MACHINE = re.compile(r"^pc-q35-(\d+)\.(\d+)$")
# Capabilities and commands worth reporting (everything else is still in ``commands``).
_FEATURE_COMMANDS = ("calc-dirty-rate", "query-dirty-rate", "set-vcpu-dirty-limit",
                     "query-stats", "blockdev-reopen", "x-blockdev-change", "announce-self",
                     "migrate-start-postcopy", "migrate-recover")


@dataclass(frozen=True)
class QemuInstall:
    """The QEMU a host runs: a binary, and its own data and module directories when it is
    not the system's (Debian builds accelerators and block drivers as loadable modules, which
    must come from the same build as the binary)."""

    binary: str = DEFAULT_BINARY
    datadir: str | None = None
    moduledir: str | None = None
    label: str = "system"
    # Searched after ``datadir``: with any -L, QEMU 7.2 no longer searches its built-in
    # firmware path, where Debian keeps the BIOS (seabios) and NIC ROMs (ipxe).
    firmware: tuple[str, ...] = ("/usr/share/seabios", "/usr/lib/ipxe/qemu")

    def argv0(self) -> list[str]:
        """The binary and its ``-L`` directories (its own data first, then the firmware)."""
        if not self.datadir:
            return [self.binary]
        dirs = [self.datadir, *(d for d in self.firmware if Path(d).is_dir())]
        return [self.binary, *(x for d in dirs for x in ("-L", d))]

    def env(self) -> dict[str, str] | None:
        """The environment to run it in (None: inherit), with its own module directory."""
        if not self.moduledir:
            return None
        return {**os.environ, "QEMU_MODULE_DIR": self.moduledir}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> QemuInstall:
        if not data:
            return cls()
        return cls(**{**data, "firmware": tuple(data.get("firmware", cls.firmware))})


@dataclass(frozen=True)
class QemuFacts:
    """A QEMU's answers over QMP (see the module docstring)."""

    version: str                       # "10.0.2"
    package: str                       # "Debian 1:10.0.2+ds-2..." or ""
    machines: tuple[str, ...]          # versioned q35 types, newest first
    default_q35: str                   # what the ``q35`` alias resolves to
    commands: frozenset[str] = field(default_factory=frozenset)
    capabilities: frozenset[str] = field(default_factory=frozenset)
    # Whether migrate-set-capabilities accepts multifd with postcopy-ram. Accepted is not
    # working: 7.2 accepts the pair and fails at migrate-start-postcopy; 10.0 refuses it.
    multifd_postcopy: bool = False
    multifd_postcopy_error: str = ""   # QEMU's refusal, when it refuses

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return _version_tuple(self.version)

    def has(self, command: str) -> bool:
        return command in self.commands

    def features(self) -> dict[str, Any]:
        """What differs between QEMUs, for status output (accelerator notes included)."""
        return {
            "commands": {c: c in self.commands for c in _FEATURE_COMMANDS},
            "postcopy": "postcopy-ram" in self.capabilities,
            "multifd": "multifd" in self.capabilities,
            "multifd_with_postcopy_accepted": self.multifd_postcopy,
            "dirty_limit": "dirty-limit" in self.capabilities,
            "notes": [
                "dirty-limit and query-stats need KVM (not available under TCG)",
                "calc-dirty-rate works under TCG in page-sampling mode",
            ],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "package": self.package, "machines": list(self.machines),
            "default_q35": self.default_q35, "commands": sorted(self.commands),
            "capabilities": sorted(self.capabilities),
            "multifd_postcopy": self.multifd_postcopy,
            "multifd_postcopy_error": self.multifd_postcopy_error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QemuFacts:
        return cls(
            version=str(data["version"]), package=str(data.get("package", "")),
            machines=tuple(data.get("machines", ())), default_q35=str(data.get("default_q35", "")),
            commands=frozenset(data.get("commands", ())),
            capabilities=frozenset(data.get("capabilities", ())),
            multifd_postcopy=bool(data.get("multifd_postcopy", False)),
            multifd_postcopy_error=str(data.get("multifd_postcopy_error", "")),
        )


def _version_tuple(text: str) -> tuple[int, int, int]:
    nums = [int(x) for x in re.findall(r"\d+", text)[:3]]
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


def machine_version(machine: str) -> tuple[int, int] | None:
    """``pc-q35-7.2`` -> (7, 2); None for anything that is not a versioned q35 type."""
    m = _MACHINE.match(machine)
    return (int(m.group(1)), int(m.group(2))) if m else None


def facts_from_replies(version: dict[str, Any], commands: Sequence[dict[str, Any]],
                       caps: Sequence[dict[str, Any]], machines: Sequence[dict[str, Any]],
                       multifd_postcopy_error: str | None) -> QemuFacts:
    """Build :class:`QemuFacts` from QMP's replies (a reply of the wrong shape: QmpError)."""
    try:
        q = version["qemu"]
        ver = f"{int(q['major'])}.{int(q['minor'])}.{int(q['micro'])}"
        names = frozenset(str(c["name"]) for c in commands)
        capnames = frozenset(str(c["capability"]) for c in caps)
        q35 = sorted(
            (str(m["name"]) for m in machines if machine_version(str(m["name"]))),
            key=lambda n: machine_version(n) or (0, 0), reverse=True,
        )
        alias = next((str(m["name"]) for m in machines if m.get("alias") == "q35"), "")
    except (KeyError, TypeError, ValueError) as exc:
        raise QmpError(f"QEMU's probe replies have an unexpected shape: {exc!r}") from exc
    return QemuFacts(
        version=ver, package=str(version.get("package", "")).strip(" ()"),
        machines=tuple(q35), default_q35=alias, commands=names, capabilities=capnames,
        multifd_postcopy=multifd_postcopy_error is None,
        multifd_postcopy_error=multifd_postcopy_error or "",
    )


async def probe(install: QemuInstall, timeout_s: float = 30.0) -> QemuFacts:
    """Start ``install``'s QEMU with no machine, ask it over QMP, and quit it."""
    if shutil.which(install.binary) is None and not Path(install.binary).is_file():
        raise SubstrateError(f"QEMU binary {install.binary} is not installed; run scripts/setup")
    tmp = Path(tempfile.mkdtemp(prefix="vmc-qemu-probe-"))
    sock = tmp / "qmp"
    argv = [*install.argv0(), "-machine", "none", "-accel", "tcg", "-nodefaults",
            "-no-user-config", "-display", "none", "-S",
            "-qmp", f"unix:{sock},server=on,wait=off"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=install.env())
    qmp = Qmp(f"probe:{install.label}")
    try:
        try:
            await qmp.connect(str(sock), timeout_s=timeout_s)
        except QmpError as exc:
            err = b""
            if proc.returncode is not None and proc.stderr is not None:
                err = await proc.stderr.read()
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            raise SubstrateError(f"QEMU {install.binary} did not answer its probe: "
                                 f"{last[0]}") from exc
        version = await qmp.query_version()
        commands = await qmp.query_commands()
        caps = await qmp.query_migrate_capabilities()
        machines = await qmp.query_machines()
        refusal: str | None = None
        try:
            await qmp.migrate_set_capabilities({"multifd": True, "postcopy-ram": True})
        except QemuRefused as exc:  # QEMU said why; a QEMU gone is no answer
            refusal = exc.desc
        return facts_from_replies(version, commands, caps, machines, refusal)
    finally:
        await qmp.quit()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def pinned_machine(hosts: Iterable[QemuFacts], wanted: str | None = None) -> str:
    """The machine type a new VM is pinned to on a cluster of ``hosts``.

    ``wanted`` (from the VM's definition) must be known to every host; otherwise
    the newest versioned ``pc-q35-X.Y`` that every host knows. Raises
    SubstrateError naming the host that lacks it.
    """
    facts = list(hosts)
    if not facts:
        raise SubstrateError("no host reported its QEMU; cannot pin a machine type")
    if wanted is not None:
        for f in facts:
            if wanted not in f.machines:
                raise SubstrateError(
                    f"machine type {wanted} is unknown to QEMU {f.version} on one of the hosts "
                    f"(it knows {', '.join(f.machines[:3])}, ...); pick an older one")
        return wanted
    common = set(facts[0].machines).intersection(*(set(f.machines) for f in facts[1:]))
    if not common:
        raise SubstrateError("the hosts' QEMUs share no pc-q35 machine type")
    return max(common, key=lambda n: machine_version(n) or (0, 0))


def migration_refusal(machine: str, source: QemuFacts, target: QemuFacts,
                      source_node: str, target_node: str) -> str | None:
    """Why a VM of ``machine`` cannot go from ``source``'s QEMU to ``target``'s, or None."""
    if machine not in target.machines:
        return (f"{target_node}'s QEMU {target.version} does not know machine type {machine} "
                f"(its newest is {target.machines[0] if target.machines else '?'}); a VM pinned "
                f"to a newer machine than a host's QEMU cannot run there: upgrade "
                f"{target_node}'s QEMU first")
    if target.version_tuple[:2] < source.version_tuple[:2]:
        return (f"{source_node} runs QEMU {source.version} and {target_node} runs QEMU "
                f"{target.version}: QEMU migrates only to the same or a newer version, never "
                f"back; upgrade {target_node} first (rolling upgrades move VMs to upgraded "
                f"hosts), or stop the VM and start it on {target_node}")
    return None
