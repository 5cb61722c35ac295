"""The fault campaign's parts that need no lab: picking scenarios, its table, blips,
and the sampler's look at a QEMU behind a silent agent (a fake QMP peer)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcluster.errors import UsageError
from vmcluster.lab.chaos import SCENARIOS, Row, _client_figures, pick, table
from vmcluster.lab.faults import blip_net
from vmcluster.lab.sampler import _qmp_status


def test_every_scenario_has_a_unique_name_and_the_ci_subset_is_short() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    ci = pick(ci_only=True)
    assert 0 < len(ci) <= 12 and all(s.ci for s in ci)
    assert [s.name for s in pick(["blips", "node-crash"])] == ["blips", "node-crash"]
    # every process x signal x phase cell of a migration is a scenario of the full campaign
    for who in ("source-qemu", "target-qemu", "source-agent", "target-agent", "cli"):
        for sig in ("int", "term", "kill"):
            for phase in ("setup", "copying", "switchover"):
                assert f"{who}-{sig}-{phase}" in names


def test_passes_share_out_the_migration_matrix_so_every_cell_runs_in_one() -> None:
    cells = {s.name for s in SCENARIOS if s.cell is not None}
    assert len(cells) == 45
    parts = [{s.name for s in pick(part=(k, 3))} for k in range(3)]
    assert set.union(*parts) >= cells
    for a in range(3):
        for b in range(a + 1, 3):
            assert parts[a] & parts[b] & cells == set()
        assert len(parts[a] & cells) == 15
        assert "node-crash" in parts[a]  # every pass runs every other scenario
    assert [s.name for s in pick(["cli-int-setup"], part=(1, 3))] == ["cli-int-setup"]
    with pytest.raises(UsageError, match="part 4 of 3"):
        pick(part=(3, 3))


def test_an_unknown_scenario_is_one_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"no scenario 'nope'; scenarios: node-crash, "):
        pick(["blips", "nope"])


def test_the_table_has_a_row_per_scenario_and_a_total() -> None:
    rows = [Row("node-crash", "f", "e", "ok", True, 0, 0, 12.3, {"detect_s": 2.1,
                                                                    "act_s": None}),
            Row("blips", "f", "e", "spurious", False, 1, 2, 3.0, {})]
    lines = table(rows)
    assert lines[1].startswith("node-crash") and "yes" in lines[1]
    assert lines[2].strip() == "detect_s 2.1"
    assert lines[3].startswith("blips") and " NO " in lines[3]
    assert lines[-1] == ("1/2 scenarios passed; double runs 1, acknowledged writes lost 2")
    assert json.loads(json.dumps(rows[0].to_json()))["figures"]["detect_s"] == 2.1


def test_a_blip_goes_down_and_up_n_times_and_always_ends_up() -> None:
    seen: list[bool] = []
    assert blip_net(seen.append, 0.01, 3, 0.0) == 3
    assert seen == [False, True] * 3 + [True]

    def breaks(up: bool) -> None:
        seen.append(up)
        if not up:
            raise KeyboardInterrupt
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        blip_net(breaks, 0.01, 3, 0.0)
    assert seen == [False, True]  # interrupted while down: up again
    for bad in ((0, 1, 0), (1, 0, 0), (1, 1, -1), (601, 1, 0)):
        with pytest.raises(UsageError, match="a blip lasts"):
            blip_net(seen.append, *bad)


@pytest.fixture
def qmp_peer() -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket that speaks as a QEMU's QMP would, with replies the test scripts."""
    d = Path(tempfile.mkdtemp(prefix="vmc-qmp-"))
    path = d / "qmp.sock"
    script: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rwb")
                for line in script:
                    if line.startswith(b"<"):  # wait for a command first
                        if not f.readline():
                            break
                        continue
                    f.write(line)
                    f.flush()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path, script
    finally:
        srv.close()
        path.unlink(missing_ok=True)
        d.rmdir()


GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\n'


@pytest.mark.parametrize("replies, expected", [
    ([GREETING, b"<", b'{"return": {}}\n', b"<",
      b'{"event": "RESUME", "timestamp": {}}\n',
      b'{"return": {"status": "running", "running": true}}\n'], "running"),
    ([GREETING, b"<", b'{"return": {}}\n', b"<",
      b'{"return": {"status": "postmigrate", "running": false}}\n'], "postmigrate"),
    ([GREETING, b"<", b'{"return": {}}\n', b"<", b'{"return": {"stat'], "unknown"),
    ([GREETING, b"<", b'{"error": {"class": "GenericError", "desc": "no"}}\n'], "unknown"),
    ([b"not json at all\n", b"<", b"}{\n"], "unknown"),
    ([], "unknown"),
])
def test_a_qemu_behind_a_silent_agent_is_asked_over_its_own_qmp(
        qmp_peer: tuple[Path, list[bytes]], replies: list[bytes], expected: str) -> None:
    path, script = qmp_peer
    script.extend(replies)
    # the pid's root is / here: the path is reached through /proc/<pid>/root
    argv = ["qemu", "-name", "web,debug-threads=on", "-qmp", f"unix:{path},server=on,wait=off"]
    assert _qmp_status(os.getpid(), argv) == expected
    assert _qmp_status(os.getpid(), ["qemu", "-name", "web"]) == "unknown"  # no QMP socket


def test_the_clients_figures_are_the_longest_blackout_and_the_broken_tcp_sessions() -> None:
    seen = {"web": {"udp": {"blackout_ms": 240.0}, "tcp": {"session_survived": True}},
            "db": {"udp": {"blackout_ms": 4810.5}, "tcp": {"session_survived": False}},
            "batch": {}}  # its clients could not start
    assert _client_figures(seen) == {"blackout_ms": 4810.5, "tcp_broken": 1}
    assert _client_figures({}) == {"blackout_ms": None, "tcp_broken": None}
