"""Bad input, fuzzed (hypothesis): a spec file, a trace file and the API's request bodies.

Whatever comes in ends in a result or in one clear error (one line, naming what and
where), never in another exception and never in a 500; the API's store is left as
it was (no VM defined, no intent recorded) by a body it refused.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import api_app
from vmcluster.errors import SpecError, TraceError
from vmcluster.experiments.traces import SAMPLES, load_day
from vmcluster.model.spec import parse_spec
from vmcluster.pki import token_hash

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = tomllib.loads((EXAMPLES / "lab.toml").read_text())

# Values TOML can hold, nested a little: what a hand-edited file might put anywhere.
scalars = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans(), st.text(max_size=12),
                    st.sampled_from(["node1", "Heartbeat", "198.18.2.11", "10.0.0.0/8", "", "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=8), inner,
                                                  max_size=3)), max_leaves=8)


def _paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the parsed spec a value sits (keys and list indexes)."""
    out = [at] if at else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


PATHS = _paths(BASE)


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """examples/lab.toml with one to three values replaced, removed, or keys added."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            key = path[-1]
            parent[key]  # still there after an earlier change?
        except (KeyError, IndexError, TypeError):
            continue
        how = draw(st.sampled_from(["replace", "remove", "add"]))
        if how == "replace":
            parent[key] = draw(values)
        elif how == "remove" and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return doc


def _one_clear_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)


@settings(max_examples=400, deadline=None)
@given(mutated_specs())
def test_a_mutated_spec_loads_or_says_what_is_wrong_in_one_line(doc: dict[str, Any]) -> None:
    try:
        text = tomlkit.dumps(doc)
    except (TypeError, ValueError):
        return  # not expressible in TOML: not an input a user can write
    try:
        spec = parse_spec(text, "fuzz.toml")
    except SpecError as exc:
        _one_clear_line(exc)
        assert "fuzz.toml" in str(exc)
        return
    assert spec.nodes and spec.networks  # what loads is a whole cluster


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(
    lambda b: b.decode("latin-1"))))
def test_any_text_as_a_spec_is_a_spec_or_one_error(text: str) -> None:
    try:
        parse_spec(text, "noise.toml")
    except SpecError as exc:
        _one_clear_line(exc)
        assert "noise.toml" in str(exc)


cells = st.one_of(st.integers(-5, 300).map(str), st.text(max_size=4),
                  st.sampled_from(["", " 7", "1e2", "50.0", "NaN"]))
rows = st.one_of(
    st.lists(cells, max_size=8),
    st.lists(st.integers(0, 100).map(str), min_size=SAMPLES, max_size=SAMPLES).map(
        lambda r: ["vm", *r]),
    st.tuples(st.lists(st.integers(0, 100).map(str), min_size=SAMPLES, max_size=SAMPLES),
              st.integers(0, SAMPLES - 1), cells).map(
        lambda t: ["vm", *t[0][:t[1]], t[2], *t[0][t[1] + 1:]]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, max_size=5), st.booleans())
def test_a_trace_file_loads_or_names_the_file_and_line(data: list[list[str]],
                                                       binary: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="vmc-fuzz-") as d:
        path = Path(d) / "day.csv"
        text = "\n".join(",".join(r) for r in data)
        path.write_bytes(text.encode() + (b"\xff\xfe" if binary else b""))
        try:
            day = load_day(path)
        except TraceError as exc:
            _one_clear_line(exc)
            assert str(path) in str(exc)
            return
        assert day.util.shape == (day.n_vms, SAMPLES)
        assert int(day.util.max()) <= 100


# -- the API's request bodies ------------------------------------------------------------

ADMIN = {"Authorization": "Bearer admin-token"}


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[TestClient, Any]]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd-server not installed")
    with api_app("127.0.0.45") as (client, view):
        view.client.put(view.key("tokens", token_hash("admin-token")),
                        json.dumps({"role": "admin"}).encode())
        view.put_spec((EXAMPLES / "lab.toml").read_text())
        made = client.post("/api/v1/vms", headers=ADMIN,
                           json={"name": "web", "owner": "node1", "memory_mib": 257})
        assert made.status_code == 201, made.text
        yield client, view


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=16),
              st.sampled_from(["node1", "node9", "web", "live", "quick", "force", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)
body_keys = st.sampled_from(["to", "mode", "downtime_ms", "on_no_convergence", "on", "force",
                             "name", "owner", "memory_mib", "cores", "volume", "start",
                             "plan", "role", "ttl_s", "node", "csr", "token", "x"])
bodies = st.one_of(json_values, st.dictionaries(body_keys, json_values, max_size=5))
ENDPOINTS = ["/api/v1/vms/web/migrate", "/api/v1/vms/web/start", "/api/v1/vms/web/stop",
             "/api/v1/vms", "/api/v1/plans/consolidation/apply", "/api/v1/tokens",
             "/api/v1/join"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(ENDPOINTS), bodies)
def test_any_api_body_gets_an_answer_never_a_500(api: tuple[TestClient, Any], path: str,
                                                 body: Any) -> None:
    client, view = api
    before = {kv.key for kv in view.client.get_prefix(view.key("intents"))[0]}
    got = client.post(path, json=body, headers=ADMIN)
    assert got.status_code < 500 or got.status_code == 503, (path, body, got.text)
    doc = got.json()
    if got.status_code >= 400:
        err = doc["error"]
        assert err["message"] and "\n" not in err["message"], doc
        after = {kv.key for kv in view.client.get_prefix(view.key("intents"))[0]}
        assert after == before, (path, body, doc)  # a refused body recorded nothing
        vms = client.get("/api/v1/vms", headers=ADMIN).json()["vms"]
        assert "web" in {v["name"] for v in vms}  # and removed nothing
