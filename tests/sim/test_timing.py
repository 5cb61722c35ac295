"""Migrations that run at the same time share their link: the simulator says when each ends."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vmcluster.control.timing import Move, concurrent
from vmcluster.errors import MigrationError
from vmcluster.model import ClusterSpec
from vmcluster.model.spec import load_spec

LAB = Path(__file__).resolve().parents[2] / "examples" / "lab.toml"


def two_on_node1() -> ClusterSpec:
    spec = load_spec(LAB)
    return replace(spec, vms=tuple(
        replace(v, owner="node1", dirty_mibps=0.0) if v.name in ("web", "db") else v
        for v in spec.vms))


def test_two_migrations_on_one_link_share_it_and_the_last_ends_when_all_bytes_have_moved() -> None:
    spec = two_on_node1()
    alone = concurrent(spec, [Move("web", "node2")])[0]
    web, db = concurrent(spec, [Move("web", "node2"), Move("db", "node2")])
    assert (web.network, db.network) == ("Migration", "Migration")
    # each gets half the link while both run: neither ends as soon as one alone would
    assert min(web.total_s, db.total_s) > 1.8 * alone.total_s
    # the link is never idle: the last ends when both guests' bytes have crossed it
    link = alone.result.sent_mib / alone.total_s
    sent = web.result.sent_mib + db.result.sent_mib
    assert max(web.end_s, db.end_s) == pytest.approx(sent / link, rel=0.02)


def test_a_later_start_gets_the_whole_link_once_the_first_has_ended() -> None:
    spec = two_on_node1()
    alone = concurrent(spec, [Move("web", "node2")])[0]
    web, db = concurrent(spec, [Move("web", "node2"), Move("db", "node2", start_s=10.0)])
    assert web.total_s == pytest.approx(alone.total_s, rel=0.01)
    assert db.move.start_s == 10.0 and db.total_s == pytest.approx(alone.total_s, rel=0.01)


def test_a_move_that_cannot_be_made_is_named() -> None:
    spec = two_on_node1()
    with pytest.raises(MigrationError, match="web"):
        concurrent(spec, [Move("web", "node1")])  # already there
