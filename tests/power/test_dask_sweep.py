"""The --scheduler path for real: a Dask scheduler and worker on loopback run a sweep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcluster.errors import UsageError
from vmcluster.experiments.evaluate import sweep

distributed = pytest.importorskip("dask.distributed")
DAY = Path(__file__).resolve().parents[2] / "src/vmcluster/data/planetlab/20110306.csv"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def test_dask_sweep_matches_the_local_run(scheduler: str) -> None:
    assert scheduler.startswith("tcp://127.0.0.1:")
    remote = sweep(["thr-mmt-0.8"], [DAY], scheduler=scheduler)
    local = sweep(["thr-mmt-0.8"], [DAY], workers=1)
    assert [(r.policy, r.day) for r in remote] == [("thr-mmt-0.8", "20110306")]
    assert remote[0].energy_kwh == pytest.approx(local[0].energy_kwh)
    assert remote[0].migrations == local[0].migrations


def test_unreachable_scheduler_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        sweep(["thr-mmt-0.8"], [DAY], scheduler="tcp://127.0.0.1:9")
