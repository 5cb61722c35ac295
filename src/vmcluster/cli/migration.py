"""`vmcluster migration`: model a pre-copy migration, or predict one of a spec's VMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich.table import Table

from vmcluster.cli.apiclient import api_request, resolve_access
from vmcluster.cli.common import console, emit_json, json_option, lab_option, load
from vmcluster.errors import UsageError
from vmcluster.policy.migration_model import Advice, PrecopyInput, PrecopyResult, advise, run
from vmcluster.policy.networks import Health
from vmcluster.policy.prediction import predict

__all__ = ["migration"]

_ACTIONS = click.Choice(["force", "throttle", "abort"])


@click.group()
def migration() -> None:
    """Model and predict live migrations (iterative pre-copy)."""


def _print_result(result: PrecopyResult, advice: tuple[Advice, ...], title: str) -> None:
    table = Table(title=title)
    deltas = result.input.delta_ratio < 1
    for col in ("Pass", "Sent MiB", *(("Wire MiB",) if deltas else ()), "Seconds",
                "Dirty MiB/s"):
        table.add_column(col, justify="right")
    for i, p in enumerate(result.passes):
        table.add_row(str(i), f"{p.sent_mib:.2f}", *((f"{p.wire:.2f}",) if deltas else ()),
                      f"{p.seconds:.3f}", f"{p.dirty_mibps:.2f}")
    if result.outcome != "aborted":
        table.add_row(
            "stop+copy", f"{result.stop_copy_mib:.2f}",
            *((f"{result.stop_copy_wire_mib:.2f}",) if deltas else ()),
            f"{result.downtime_ms / 1000:.3f}", "paused"
        )
    console.print(table)
    style = "green" if result.converged else "red"
    console.print(
        f"[{style}]{result.outcome}[/{style}]: total {result.total_s:.3f} s,"
        f" downtime {result.downtime_ms:.1f} ms (budget {result.input.downtime_ms:g} ms),"
        f" {len(result.passes)} passes"
        + (f", guest throttled {result.throttle * 100:.0f} %" if result.throttle else "")
    )
    for a in advice:
        console.print(f"  to converge: {a.message}")


@migration.command("model")
@click.option("--memory-mib", type=float, required=True, help="Guest memory M (MiB).")
@click.option("--dirty-mibps", type=float, required=True, help="Dirty rate d (MiB/s).")
@click.option("--wws-mib", type=float, required=True, help="Writable working set W (MiB).")
@click.option("--bandwidth-mibps", type=float, required=True, help="Effective bandwidth b.")
@click.option("--downtime-ms", type=float, required=True, help="Downtime budget L (ms).")
@click.option("--max-passes", type=int, default=30, show_default=True, help="Pass bound N.")
@click.option("--state-mib", type=float, default=0.0, show_default=True, help="Device state S.")
@click.option(
    "--on-no-convergence", type=_ACTIONS, default="throttle", show_default=True,
    help="What to do if it will not converge.",
)
@click.option("--delta-ratio", type=click.FloatRange(min=0, min_open=True, max=1), default=1.0,
              show_default=True, help="XBZRLE deltas: a re-sent page's share on the wire "
              "from the third pass on (1: whole pages).")
@json_option
def model(
    memory_mib: float, dirty_mibps: float, wws_mib: float, bandwidth_mibps: float,
    downtime_ms: float, max_passes: int, state_mib: float, on_no_convergence: str,
    delta_ratio: float, as_json: bool,
) -> None:
    """Model one pre-copy migration pass by pass."""
    inp = PrecopyInput(
        memory_mib=memory_mib, dirty_mibps=dirty_mibps, wws_mib=wws_mib,
        bandwidth_mibps=bandwidth_mibps, downtime_ms=downtime_ms, max_passes=max_passes,
        state_mib=state_mib, on_no_convergence=on_no_convergence,  # type: ignore[arg-type]
        delta_ratio=delta_ratio,
    )
    result = run(inp)
    advice = advise(result)
    if as_json:
        emit_json({**result.to_json(), "advice": [a.to_json() for a in advice]})
        return
    _print_result(result, advice, f"Pre-copy of {memory_mib:g} MiB at {bandwidth_mibps:g} MiB/s")


@migration.command("predict")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Predict on a spec file (default: the live cluster).")
@click.argument("vm")
@click.option("--to", "target", required=True, metavar="NODE", help="Target node.")
@click.option("--from", "source", default=None, metavar="NODE",
              help="Source (default: owner). Spec only.")
@click.option(
    "--down", "downs", multiple=True, metavar="NETWORK[@NODE]",
    help="Treat a network (or one node's interface on it) as failed. Repeatable. Spec only.",
)
@click.option(
    "--flows", "flow_items", multiple=True, metavar="NETWORK=N",
    help="N other flows share NETWORK (max-min fair). Repeatable. Spec only.",
)
@click.option("--downtime-ms", type=click.FloatRange(min=0, min_open=True, max=60000),
              default=None, help="Override the VM's budget.")
@click.option("--max-passes", type=int, default=30, show_default=True)
@click.option("--state-mib", type=float, default=0.0, show_default=True)
@click.option("--on-no-convergence", type=_ACTIONS, default=None,
              help="Override the VM's action (throttle, abort, force).")
@click.option("--cluster", "cluster_url", default=None, metavar="URL", envvar="VMCLUSTER_URL",
              help="The live cluster's API (default: $VMCLUSTER_URL).")
@lab_option()
@json_option
def predict_cmd(
    spec_path: Path | None, vm: str, target: str, source: str | None, downs: tuple[str, ...],
    flow_items: tuple[str, ...], downtime_ms: float | None, max_passes: int, state_mib: float,
    on_no_convergence: str | None, cluster_url: str | None, lab_name: str | None,
    as_json: bool,
) -> None:
    """Predict migrating VM to NODE before starting it: the network, the mode
    (pre-copy, auto-converge, post-copy, or a refusal) and why, the time and downtime.

    On the live cluster (--cluster, $VMCLUSTER_URL or --lab) from where the VM runs, the
    links up now and the guest's dirty rate as its QEMU measures it; with --spec on the
    spec's owner and dirty profile."""
    if spec_path is None:
        spec_only = [name for name, given in (("--from", source), ("--down", downs),
                                              ("--flows", flow_items)) if given]
        if spec_only:
            raise UsageError(f"{', '.join(spec_only)}: with --spec only (the live cluster's "
                             "own owner, links and flows are used)")
        query: dict[str, str] = {"vm": vm, "to": target}
        if downtime_ms is not None:
            query["downtime_ms"] = f"{downtime_ms:g}"
        if on_no_convergence is not None:
            query["on_no_convergence"] = on_no_convergence
        got = api_request(resolve_access(cluster_url, lab_name), "GET",
                          "/api/v1/plans/migration?" + urlencode(query), timeout_s=60)
        if as_json:
            emit_json(got)
            return
        _print_prediction(got)
        return
    spec = load(spec_path)
    flows: dict[str, int] = {}
    for item in flow_items:
        name, sep, count = item.rpartition("=")
        if not sep or not count.isdigit():
            raise UsageError(f"--flows {item!r} must be NETWORK=N with N a whole number")
        spec.network(name)
        flows[name] = int(count)
    pred = predict(
        spec, Health.parse(spec, downs), vm, target, source=source, flows=flows,
        downtime_ms=downtime_ms, max_passes=max_passes, state_mib=state_mib,
        on_no_convergence=on_no_convergence,  # type: ignore[arg-type]
    )
    if as_json:
        emit_json(pred.to_json())
        return
    _print_prediction(pred.to_json())
    _print_result(pred.result, (), f"Predicted migration of {pred.vm}")


def _print_prediction(p: dict[str, Any]) -> None:
    """The prediction's JSON (the API's or the spec's), as lines."""
    share = f", shared with {p['other_flows']} other flows" if p.get("other_flows") else ""
    assumed = " (assumed: the spec sets no bandwidth_mbps)" if p.get("bandwidth_assumed") else ""
    fallbacks = p.get("fallbacks") or []
    console.print(
        f"{p['vm']}: {p['source']} -> {p['target']} over [bold]{p['network']}[/bold]"
        f" at {float(p['bandwidth_mibps']):.1f} MiB/s{share}{assumed}"
        + (f"; falls back to {', '.join(fallbacks)}" if fallbacks else ""))
    console.print(f"guest: dirties {float(p['dirty_mibps']):g} MiB/s of a "
                  f"{float(p['wws_mib']):g} MiB working set ({p.get('profile_from')})")
    style = "red" if p.get("mode") == "refuse" else "green"
    console.print(f"mode: [{style}]{p.get('mode')}[/{style}]: {p.get('reason')}")
    if p.get("mode") != "refuse":
        console.print(f"predicted: total {float(p['total_s']):.2f} s, downtime "
                      f"{float(p['downtime_ms']):.1f} ms, {len(p.get('passes') or [])} pass(es)")
    for a in p.get("advice") or []:
        console.print(f"  to converge: {a['message']}")


predict_cmd.name = "predict"
