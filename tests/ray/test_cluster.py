"""Two Ray nodes on this machine (`ray.cluster_utils.Cluster`), as a stand-in for a cluster.

Each node has one CPU, so two replicas that hold a CPU each land on different nodes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import PipelineValidationError
from stillhouse.core.steps import LoadDataFromDicts
from tests.ray.conftest import wait_for_no_actors
from tests.ray.ray_steps import NodeId, NodeMarker
from tests.support.results import rows_of
from tests.support.steps import Count

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[object]:
    import ray

    from stillhouse.ray._runtime import _without_uv_run_hook

    assert not ray.is_initialized(), "a Ray runtime leaked from an earlier test module"
    try:
        from ray.cluster_utils import Cluster

        with _without_uv_run_hook():
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False},
            )
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"ray.cluster_utils.Cluster cannot start a head node here: {exc}")
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with _without_uv_run_hook():
            ray.init(address=cluster.address, log_to_driver=True)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def build(tmp_path, name: str) -> Pipeline:
    with Pipeline(name=name, executor="ray", cache_dir=tmp_path / "cache") as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(24)], batch_size=4)
        spread = NodeId(name="spread", sleep=0.2, input_batch_size=2, resources={"replicas": 2, "cpus": 1})
        loader >> spread >> Count(name="count")
    return pipeline


def test_the_cluster_has_two_live_nodes(two_nodes):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2


def test_batch_data_on_a_local_path_is_refused_before_any_actor(two_nodes, tmp_path):
    pipeline = build(tmp_path, "two-local")
    with pytest.raises(PipelineValidationError, match=r"2 nodes.*storage_parameters=\{'path': 's3://"):
        pipeline.run(use_cache=False, progress=False)
    assert not wait_for_no_actors(timeout=1)


def test_replicas_run_on_both_nodes_with_s3_batch_data_and_a_local_cache(two_nodes, tmp_path, s3_storage):
    pipeline = build(tmp_path, "two-s3")
    result = pipeline.run(use_cache=False, progress=False, storage_parameters=s3_storage)
    (total,) = rows_of(result)
    assert total["xs"] == list(range(24))
    # The cache is local: only the driver writes it, so a second run reads it back whole.
    again = build(tmp_path, "two-s3").run(progress=False, storage_parameters=s3_storage)
    assert rows_of(again) == [total]
    assert not wait_for_no_actors()


def test_each_replica_lands_on_its_own_node(two_nodes, tmp_path):
    """Where each replica loaded, not which rows each got: how tasks split between the
    replicas depends on how fast each worker starts, which a loaded machine decides."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with Pipeline(name="two-nodes", executor="ray", cache_dir=tmp_path / "cache") as pipeline:
        loader = LoadDataFromDicts(data=[{"x": i} for i in range(24)], batch_size=4)
        loader >> NodeMarker(name="spread", marker_dir=str(markers), input_batch_size=2,
                             resources={"replicas": 2, "cpus": 1})
    rows = rows_of(pipeline.run(use_cache=False, progress=False))
    assert [r["x"] for r in rows] == list(range(24))
    nodes = [marker.read_text() for marker in markers.iterdir()]
    assert len(nodes) == 2 and len(set(nodes)) == 2  # two replicas, one per node
    assert {r["node"] for r in rows} <= set(nodes)
