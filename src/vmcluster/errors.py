"""The error tree of vmcluster.

Every error a user can cause or meet derives from :class:`VmclusterError`; the
CLI prints ``str(err)`` as one line (what, where, what to do) and exits with
``err.exit_code``. Root causes are chained with ``raise ... from exc``.

::

    VmclusterError                  exit 1 unless said otherwise
    ├── InputError                  exit 2: bad input a user can fix
    │   ├── SpecError               a cluster spec or scenario file (file:line named)
    │   ├── TraceError              a utilisation trace file (file:line named)
    │   └── UsageError              a CLI argument (unknown VM, node, network, policy...)
    ├── PolicyError                 policy cannot decide (no network available for a pair...)
    ├── SubstrateError              a substrate could not act
    │   ├── QmpError                QEMU's monitor refused, replied badly, or went away
    │   │   ├── QemuRefused         QEMU answered with an error (its ``error_class`` kept)
    │   │   └── QemuGone            QEMU's monitor went away or did not answer in time
    │   ├── MigrationError          a migration failed; the VM is still on its source
    │   │   └── MigrationRefused    refused before it started (QEMUs that cannot migrate)
    │   └── LabError                building or tearing down the lab failed
    └── StoreError                  the cluster store (etcd) failed or fenced us out
        ├── StoreUnavailable        no etcd endpoint answered    (vmcluster.store.errors)
        ├── StoreConflict           a compare-and-set lost       (vmcluster.store.errors)
        └── Fenced                  a stale manager's token      (vmcluster.store.errors)
"""

from __future__ import annotations

__all__ = [
    "InputError",
    "LabError",
    "LabNotUp",
    "MigrationError",
    "MigrationRefused",
    "PolicyError",
    "QemuGone",
    "QemuRefused",
    "QmpError",
    "SpecError",
    "StoreError",
    "SubstrateError",
    "TraceError",
    "UsageError",
    "VmclusterError",
]


class VmclusterError(Exception):
    """Root of every vmcluster error; ``str()`` is the one line a user sees."""

    exit_code = 1


class InputError(VmclusterError):
    """Bad input a user can correct; exit code 2."""

    exit_code = 2


class SpecError(InputError):
    """A cluster spec or scenario file is invalid.

    ``where`` is ``file:line`` (or ``file`` when no line is known), ``what`` the
    problem and ``hint`` what to do about it.
    """

    def __init__(self, where: str, what: str, hint: str = "", field: str | None = None) -> None:
        self.where = where
        self.what = what
        self.hint = hint
        self.field = field  # the key at fault, when one is
        msg = f"{where}: {what}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class TraceError(SpecError):
    """A utilisation trace file is invalid (file and line named)."""


class UsageError(InputError):
    """A command-line argument names something that does not exist or is malformed."""


class PolicyError(VmclusterError):
    """A policy cannot make a decision, e.g. no network is available for a node pair."""


class SubstrateError(VmclusterError):
    """A substrate (sim or qemu) could not carry out an action."""


class QmpError(SubstrateError):
    """QEMU's monitor refused a command, replied with something unexpected, or disconnected."""


class QemuRefused(QmpError):
    """QEMU is there and said no: ``error_class`` is QMP's (``GenericError``,
    ``DeviceNotFound``, ...). Asking again the same way gets the same answer."""

    def __init__(self, message: str, error_class: str, desc: str) -> None:
        super().__init__(message)
        self.error_class, self.desc = error_class, desc


class QemuGone(QmpError):
    """QEMU's monitor went away, or did not answer in time: the process may be dead or
    hung; what it did with the command is unknown."""


class MigrationError(SubstrateError):
    """A migration failed. The VM is still running on its source (or was resumed there)."""


class MigrationCancelled(MigrationError):
    """Whoever asked for the migration (or the drain) cancelled it; the VM stays put."""


class MigrationRefused(MigrationError):
    """A migration was refused before anything started: no network could change that
    (e.g. the target's QEMU cannot receive the VM). The VM is untouched."""


class LabError(SubstrateError):
    """Building, starting or tearing down the lab failed."""


class LabNotUp(LabError, UsageError):
    """The lab a command names is not up (or is up already, for ``lab up``): the user's
    argument, exit code 2, and still a LabError for whoever catches those."""


class StoreError(VmclusterError):
    """The cluster store (etcd) failed, or this manager has been fenced out."""
