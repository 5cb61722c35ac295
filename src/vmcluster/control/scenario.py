"""Scenario files (TOML): a cluster, its workload, faults and actions as data, a policy, a horizon.

::

    [scenario]                       name, duration ("HH:MM:SS"), seed, spec (a path), bin
    [cluster] [[networks]] ...       an inline cluster spec, instead of `spec`
    [generate]                       or a synthetic one: hosts, cores, memory_mib, network_mbps
    [[generate.vms]]                 count, memory_mib, vcpus, dirty_mibps, wws_mib, max_downtime_ms
    [workload]                       kind = constant|synthetic|trace; util; file; interval; io_mibps
    [policy]                         kind = none or a consolidation policy's name (ours,
                                     lr-mmt-1.2, thr-mmt-0.8, ...: the policy registry's);
                                     interval; max_migrations; power_off; on_no_convergence
    [power]                          idle_w, max_w (a linear power model per host)
    [[events]]                       at; kind = network-down|network-up|node-down|node-up|
                                     storage-down|storage-up|migrate|drain; network; node; vm; to

Every problem is one SpecError naming file:line.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from vmcluster.errors import SpecError, UsageError
from vmcluster.model import ClusterSettings, ClusterSpec, Network, Node, Vm
from vmcluster.model.faults import KINDS, LINK_EVENTS, NODE_EVENTS, MoveVm, ScenarioEvent
from vmcluster.model.spec import load_spec, spec_from_source
from vmcluster.model.tomlsource import TableRef, TomlSource, load_toml
from vmcluster.policy.power.registry import make_policy
from vmcluster.substrate.sim.workload import Workload, constant, from_csv, parse_time, synthetic

__all__ = ["PolicyParams", "PowerParams", "Scenario", "load_scenario"]

_SPEC_KEYS = {"cluster", "networks", "nodes", "vms", "volumes"}
_TABLES: dict[str, set[str]] = {
    "scenario": {"name", "duration", "seed", "spec", "bin"},
    "generate": {"hosts", "cores", "memory_mib", "network_mbps", "vms",
                 "max_concurrent_migrations"},
    "workload": {"kind", "util", "file", "interval", "io_mibps", "mean_low", "mean_high",
                 "amplitude"},
    "policy": {"kind", "interval", "max_migrations", "power_off", "on_no_convergence"},
    "power": {"idle_w", "max_w"},
}
_GEN_VM = {"count", "memory_mib", "vcpus", "dirty_mibps", "wws_mib", "max_downtime_ms", "name"}


@dataclass(frozen=True)
class PolicyParams:
    kind: str = "none"  # or a name the policy registry knows
    interval_s: float = 300.0
    max_migrations: int = 20
    power_off: bool = True
    # every migration's action if it will not fit its budget; None: each VM's own, as
    # the cluster does (never forced through unless asked)
    on_no_convergence: str | None = None


@dataclass(frozen=True)
class PowerParams:
    idle_w: float = 100.0
    max_w: float = 250.0


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: ClusterSpec
    workload: Workload
    io_mibps: float
    events: tuple[ScenarioEvent, ...]
    policy: PolicyParams
    power: PowerParams
    duration_s: float
    seed: int
    bin_s: float
    source: str


class _Tab:
    """One table of the scenario with typed, located access."""

    def __init__(self, src: TomlSource, ref: TableRef, data: dict[str, Any]) -> None:
        self.src, self.ref, self.data = src, ref, data

    def fail(self, key: str | None, what: str, hint: str = "") -> SpecError:
        return self.src.error(self.ref, key, what, hint)

    def num(self, key: str, default: float, lo: float = 0.0, hi: float = float("inf")) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self.fail(key, f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    def int_(self, key: str, default: int, lo: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(key, f"{key} must be a whole number >= {lo}, got {value!r}")
        return value

    def text(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or (choices and value not in choices):
            allowed = f" (one of {', '.join(choices)})" if choices else ""
            raise self.fail(key, f"{key} must be a string{allowed}, got {value!r}")
        return value

    def time(self, key: str, default: str | float) -> float:
        value = self.data.get(key, default)
        try:
            return parse_time(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(key, f"{key}: {exc}", 'write "HH:MM:SS" or seconds') from exc


def _table(src: TomlSource, name: str) -> _Tab:
    data = src.data.get(name, {})
    if not isinstance(data, dict):
        raise src.error(None, None, f"{name} must be a table ([{name}])")
    ref = TableRef(name)
    src.check_keys(ref, data, _TABLES[name], set())
    return _Tab(src, ref, data)


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate a scenario file."""
    path = Path(path)
    src = load_toml(path)
    allowed = set(_TABLES) | _SPEC_KEYS | {"events"}
    for key in src.data:
        if key not in allowed:
            raise src.error(None, None, f"unknown top-level key {key!r}",
                            f"allowed: {', '.join(sorted(allowed))}")
    scn = _table(src, "scenario")
    spec = _cluster(src, scn, path)
    duration = scn.time("duration", "01:00:00")
    if duration <= 0:
        raise scn.fail("duration", "duration must be > 0")
    seed = scn.int_("seed", 0)
    workload, io = _workload(src, spec, path, duration, seed)
    pol = _table(src, "policy")
    kind = pol.text("kind", "none")
    try:
        if kind != "none" and make_policy(kind) is None:
            kind = "none"  # a baseline (npa, dvfs): nothing moves
    except UsageError as exc:
        raise pol.fail("kind", str(exc)) from exc
    policy = PolicyParams(
        kind=kind,
        interval_s=pol.time("interval", 300.0),
        max_migrations=pol.int_("max_migrations", 20),
        power_off=bool(pol.data.get("power_off", True)),
        on_no_convergence=(pol.text("on_no_convergence", None, ("force", "throttle", "abort"))
                           if "on_no_convergence" in pol.data else None),
    )
    if policy.interval_s <= 0:
        raise pol.fail("interval", "interval must be > 0")
    pw = _table(src, "power")
    power = PowerParams(pw.num("idle_w", 100.0), pw.num("max_w", 250.0))
    if power.max_w < power.idle_w:
        raise pw.fail("max_w", "max_w must be >= idle_w")
    return Scenario(
        name=scn.text("name", path.stem), spec=spec, workload=workload, io_mibps=io,
        events=_events(src, spec, duration), policy=policy, power=power, duration_s=duration,
        seed=seed, bin_s=scn.time("bin", max(60.0, duration / 48)), source=str(path),
    )


def _cluster(src: TomlSource, scn: _Tab, path: Path) -> ClusterSpec:
    inline = _SPEC_KEYS & set(src.data)
    ways = [w for w, present in (("spec", "spec" in scn.data), ("inline [cluster]", bool(inline)),
                                 ("[generate]", "generate" in src.data)) if present]
    if len(ways) != 1:
        raise src.error(TableRef("scenario"), None,
                        f"give the cluster exactly one way, not {len(ways)}: {ways or 'none'}",
                        "set spec = PATH, or inline [cluster]/[[networks]]/..., or [generate]")
    if "spec" in scn.data:
        return load_spec(path.parent / scn.text("spec"))
    if inline:
        sub = TomlSource("\n".join(src.lines), src.filename)
        for key in list(sub.data):
            if key not in _SPEC_KEYS:
                del sub.data[key]
        return spec_from_source(sub, path)
    return _generate(src)


def _generate(src: TomlSource) -> ClusterSpec:
    gen = _table(src, "generate")
    hosts = gen.int_("hosts", 10, lo=1)
    if hosts > 30000:
        raise gen.fail("hosts", "at most 30000 hosts fit the 198.18.0.0/15 test range")
    cores, mem = gen.int_("cores", 32, lo=1), gen.int_("memory_mib", 262144, lo=1)
    mbps = gen.num("network_mbps", 10000.0, 1.0)
    pub = Network("Public", IPv4Network("198.18.0.0/17"), IPv4Address("198.18.0.1"),
                  bandwidth_mbps=mbps)
    priv = Network("Private", IPv4Network("198.18.128.0/17"), bandwidth_mbps=mbps)
    nodes = tuple(
        Node(f"h{i:05d}", cores, mem, {
            "Public": pub.subnet.network_address + 2 + i,
            "Private": priv.subnet.network_address + 2 + i,
        })
        for i in range(hosts)
    )
    raw = gen.data.get("vms", [])
    if not isinstance(raw, list) or not raw:
        raise gen.fail("vms", "add at least one [[generate.vms]] table (count, memory_mib, ...)")
    vms: list[Vm] = []
    free = [mem] * hosts
    for k, item in enumerate(raw):
        t = _Tab(src, TableRef("generate.vms", k), item)
        src.check_keys(t.ref, item, _GEN_VM, {"count", "memory_mib"})
        kind = t.text("name", f"t{k}")
        memory = t.int_("memory_mib", 1024, lo=1)
        wws = t.num("wws_mib", memory / 4, 0.0, memory)
        for j in range(t.int_("count", 1)):
            i = len(vms) % hosts
            for _ in range(hosts):  # first host from round-robin with room
                if free[i] >= memory:
                    break
                i = (i + 1) % hosts
            else:
                raise t.fail("count", f"the {hosts} hosts have no room for VM {j} of type {kind}")
            free[i] -= memory
            vms.append(Vm(
                name=f"{kind}-{j:05d}", owner=nodes[i].name, memory_mib=memory,
                vcpus=t.int_("vcpus", 1, lo=1), dirty_mibps=t.num("dirty_mibps", 10.0),
                wws_mib=wws, max_downtime_ms=t.num("max_downtime_ms", 300.0, 1.0),
            ))
    settings = ClusterSettings(
        "synthetic", max_concurrent_migrations=gen.int_("max_concurrent_migrations", 2, lo=1)
    )
    return ClusterSpec(settings, (pub, priv), nodes, tuple(vms))


def _workload(
    src: TomlSource, spec: ClusterSpec, path: Path, duration: float, seed: int
) -> tuple[Workload, float]:
    wl = _table(src, "workload")
    kind = wl.text("kind", "constant", ("constant", "synthetic", "trace"))
    interval = wl.time("interval", 300.0)
    if interval <= 0:
        raise wl.fail("interval", "interval must be > 0")
    io = wl.num("io_mibps", 0.0)
    n = len(spec.vms)
    if kind == "constant":
        return constant(n, wl.num("util", 0.3, 0.0, 1.0), interval), io
    if kind == "synthetic":
        lo, hi = wl.num("mean_low", 0.1, 0.0, 1.0), wl.num("mean_high", 0.5, 0.0, 1.0)
        if lo > hi:
            raise wl.fail("mean_low", "mean_low must be <= mean_high")
        amp = wl.num("amplitude", 0.25, 0.0, 1.0)
        return synthetic(n, duration, interval, seed, (lo, hi), amp), io
    return from_csv(path.parent / wl.text("file"), [v.name for v in spec.vms], interval), io


def _events(src: TomlSource, spec: ClusterSpec, duration: float
            ) -> tuple[ScenarioEvent, ...]:
    raw = src.data.get("events", [])
    if not isinstance(raw, list):
        raise src.error(None, None, "events must be an array of tables ([[events]])")
    nodes = {n.name for n in spec.nodes}
    nets = {n.name for n in spec.networks}
    vms = {v.name for v in spec.vms}
    out: list[ScenarioEvent] = []
    for i, data in enumerate(raw):
        t = _Tab(src, TableRef("events", i), data)
        src.check_keys(t.ref, data, {"at", "kind", "network", "node", "vm", "to"}, {"at", "kind"})
        kind = t.text("kind", None, tuple(KINDS))
        for key in KINDS[kind]:
            if key not in data:
                raise t.fail(None, f"a {kind} event needs {key} = ...")
        at = t.time("at", 0)
        if at > duration:
            raise t.fail("at", f"at {at:g} s is after the end of the scenario ({duration:g} s)")
        for key, known, what in (("network", nets, "network"), ("node", nodes, "node"),
                                 ("to", nodes, "node"), ("vm", vms, "VM")):
            if key in data and t.text(key) not in known:
                raise t.fail(key, f"unknown {what} {data[key]!r}",
                             f"known: {', '.join(sorted(known)[:8])}")
        where = src.where(t.ref, "kind")
        if kind in LINK_EVENTS:
            node = data.get("node")
            out.append(LINK_EVENTS[kind](at, str(data["network"]),
                                         None if node is None else str(node), where))
        elif kind in NODE_EVENTS:
            out.append(NODE_EVENTS[kind](at, str(data["node"]), where))
        else:
            out.append(MoveVm(at, str(data["vm"]), str(data["to"]), where))
    return tuple(sorted(out, key=lambda e: e.at))
