"""Events round-trip through JSON, every kind, and unknown kinds are refused."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcluster.control.events import Event, NodeIsolated, RouteDown, event_from_json

ALL = sorted(Event.kinds.values(), key=lambda c: c.__name__)


def test_every_kind_is_registered() -> None:
    assert {"route_down", "route_up", "node_down", "vm_restarted", "migration_done"} <= set(
        Event.kinds
    )


FINITE = st.floats(allow_nan=False, allow_infinity=False)


def events_of(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any event of ``cls``; times and durations are finite (NaN is never written)."""
    floats = {f.name: FINITE for f in fields(cls) if f.type == "float"}
    floats |= {f.name: st.none() | FINITE for f in fields(cls) if f.type == "float | None"}
    return st.builds(cls, **floats)


@given(st.sampled_from(ALL).flatmap(events_of))
def test_round_trip(ev: Event) -> None:
    data = json.loads(json.dumps(ev.to_json()))
    assert data["kind"] == ev.kind
    assert event_from_json(data) == ev


def test_describe_and_tuples() -> None:
    ev = NodeIsolated(at=1.0, node="n1", vms_stopped=("a", "b"))
    assert event_from_json(json.loads(json.dumps(ev.to_json()))) == ev
    assert RouteDown(2.0, "n1", "n2", "Heartbeat").describe() == (
        "route_down on n1: peer=n2, network=Heartbeat"
    )


def test_unknown_or_incomplete_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        event_from_json({"kind": "nope", "at": 0, "node": "x"})
    with pytest.raises(ValueError, match="bad route_down"):
        event_from_json({"kind": "route_down", "at": 0, "node": "x"})
