"""The "ray" executor's decisions that need no Ray runtime: options, connecting,
placement checks and the storage check (Ray's calls are faked where needed)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from stillhouse.core import Pipeline, StepResources
from stillhouse.core.engine import RunContext
from stillhouse.core.errors import InvalidResourcesError, PipelineValidationError
from stillhouse.core.steps import LoadDataFromDicts
from stillhouse.ray import RayExecutor, _runtime
from tests.support.steps import Count, Double

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]

GiB = 2**30


def test_registered_as_a_plugin_without_importing_ray():
    from stillhouse.core import plugins

    assert plugins.executor_class("ray") is RayExecutor
    # Having the plugin installed must cost runs on other executors nothing.
    code = "import sys, stillhouse.ray.plugin; assert 'ray' not in sys.modules"

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_option_is_refused_with_the_known_ones():
    with pytest.raises(PipelineValidationError, match=r"'num_cpu'.*'num_cpus'"):
        RayExecutor(num_cpu=2)


def test_resources_map_to_actor_options():
    with Pipeline(name="options"):
        plain = Double(name="plain")
        full = Double(
            name="full",
            resources=StepResources(replicas=2, cpus=2, gpus=1, memory=3 * GiB, resources={"TPU": 4}),
        )
    assert _runtime.actor_options(plain) == {"num_cpus": 0}  # holds no CPU, as under "mp"
    assert _runtime.actor_options(full) == {
        "num_cpus": 2, "num_gpus": 1, "memory": 3 * GiB, "resources": {"TPU": 4}
    }


@pytest.mark.parametrize(("name", "hint"), [("CPU", "resources.cpus"), ("memory", "resources.memory")])
def test_ray_builtin_resources_in_custom_resources_are_refused(name, hint):
    with Pipeline(name="options"):
        odd = Double(name="odd", resources={"resources": {name: 1}})
    with pytest.raises(InvalidResourcesError, match=rf"'odd'.*'{name}'.*Use `{hint}`"):
        _runtime.actor_options(odd)


def steps_with(*resources: dict) -> list:
    with Pipeline(name="placement"):
        return [Double(name=f"s{i}", resources=r) for i, r in enumerate(resources)]


NODES = [{"CPU": 2.0, "memory": 8.0 * GiB}, {"CPU": 4.0, "GPU": 1.0, "memory": 8.0 * GiB}]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"cpus": 8}, r"'s0' asks for 8 CPU.*the largest node has 4 CPU"),
        ({"gpus": 2}, r"'s0' asks for .*2 GPU.*the largest node has 1 GPU"),
        ({"resources": {"TPU": 1}}, r"'s0'.*no node has resource 'TPU'"),
        ({"memory": 16 * GiB}, r"'s0'.*16 GiB of memory.*the largest node has 8 GiB of memory"),
        ({"cpus": 3, "memory": 8 * GiB, "gpus": 1}, None),
        ({"cpus": 4, "gpus": 1, "memory": 8 * GiB, "replicas": 3}, None),
        ({"cpus": 3, "memory": 9 * GiB}, r"'s0'.*the largest node has 8 GiB of memory"),
    ],
)
def test_a_replica_no_node_can_hold_is_refused(resources, expected):
    steps = steps_with(resources)
    if expected is None:
        _runtime.check_resources(steps, NODES)
        return
    with pytest.raises(InvalidResourcesError, match=expected):
        _runtime.check_resources(steps, NODES)


def test_cpu_and_gpu_on_different_nodes_is_refused():
    with pytest.raises(InvalidResourcesError, match="no single node has all of it together"):
        _runtime.check_resources(steps_with({"cpus": 1, "gpus": 1}), [{"CPU": 2.0}, {"GPU": 1.0}])


def test_steps_that_cannot_all_hold_a_replica_at_once_are_refused():
    steps = steps_with({"cpus": 2}, {"cpus": 2}, {})
    with pytest.raises(InvalidResourcesError, match=r"'s0', 's1', 's2'.*4 CPU.*has 2 CPU"):
        _runtime.check_resources(steps, [{"CPU": 2.0}])


def test_default_replicas_hold_no_cpu_so_many_fit(caplog):
    steps = steps_with(*[{"replicas": 2}] * 6, {"cpus": 2})
    _runtime.check_resources(steps, [{"CPU": 2.0}])
    assert not caplog.records


def test_replicas_beyond_the_cluster_only_warn(caplog):
    _runtime.check_resources(steps_with({"cpus": 2, "replicas": 3}), [{"CPU": 4.0}])
    assert "6 CPU in all" in caplog.text and "wait" in caplog.text


# -- connecting -----------------------------------------------------------------------


@pytest.fixture
def fake_ray(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(_runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(_runtime.ray, "init", lambda **kwargs: calls.append(kwargs))
    for name in ("RAY_ADDRESS", *_runtime.JOB_ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_default_is_a_local_runtime_without_dashboard(fake_ray):
    assert _runtime.connect(None, None, 2) is True
    (call,) = fake_ray
    assert call["address"] == "local" and call["num_cpus"] == 2
    assert call["include_dashboard"] is False and call["log_to_driver"] is True
    assert call["ignore_reinit_error"] is True
    # what this process put on sys.path (conftest: the repository root) reaches the workers
    assert str(ROOT) in call["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert sys.prefix not in call["runtime_env"]["env_vars"]["PYTHONPATH"]


def test_a_pythonpath_the_caller_gives_wins(fake_ray):
    _runtime.connect(None, {"runtime_env": {"env_vars": {"PYTHONPATH": "/mine", "A": "1"}}}, None)
    assert fake_ray[0]["runtime_env"] == {"env_vars": {"PYTHONPATH": "/mine", "A": "1"}}


def test_init_kwargs_reach_ray_init(fake_ray):
    _runtime.connect(None, {"num_gpus": 1, "include_dashboard": True}, None)
    assert fake_ray[0]["num_gpus"] == 1 and fake_ray[0]["include_dashboard"] is True


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("ray://head:10001", {}, "ray://head:10001"),
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),
        ("ray://head:10001", {"RAY_ADDRESS": "10.0.0.1:6379"}, "ray://head:10001"),
        (None, {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, "auto"),
        (None, {"RAY_JOB_ID": "02000000"}, "auto"),
    ],
)
def test_existing_cluster_and_ray_job_are_joined(fake_ray, monkeypatch, url, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _runtime.connect(url, None, None) is True
    (call,) = fake_ray
    assert call["address"] == expected
    assert "num_cpus" not in call and "include_dashboard" not in call


def test_num_cpus_with_a_cluster_is_refused(fake_ray):
    with pytest.raises(PipelineValidationError, match=r"num_cpus=4.*'ray://head:10001'"):
        _runtime.connect("ray://head:10001", None, 4)


def test_an_initialised_runtime_is_used_and_not_owned(fake_ray, monkeypatch):
    monkeypatch.setattr(_runtime.ray, "is_initialized", lambda: True)
    assert _runtime.connect("ray://head:10001", None, None) is False
    assert fake_ray == []


# -- storage ----------------------------------------------------------------------------


def pipeline_steps(storage: dict, *, with_global: bool, run_dir: str = "/cache/run") -> tuple[list, RunContext]:
    with Pipeline(name="storage") as pipeline:
        loader = LoadDataFromDicts(data=[{"x": 1}])
        double = Double()
        loader >> double
        if with_global:
            double >> Count()
    context = RunContext(
        dag=pipeline.dag,
        storage_parameters=storage["parameters"],
        use_fs_to_pass_data=storage["use_fs_to_pass_data"],
        run_dir=run_dir,
    )
    return [pipeline.dag.get_step(n) for n in pipeline.dag.step_names], context


@pytest.mark.parametrize(
    ("storage", "with_global", "refused"),
    [
        ({"parameters": None, "use_fs_to_pass_data": False}, True, True),
        ({"parameters": None, "use_fs_to_pass_data": True}, False, True),
        ({"parameters": {"path": "/shared/nfs"}, "use_fs_to_pass_data": True}, False, True),
        ({"parameters": {"path": "file:///x"}, "use_fs_to_pass_data": False}, True, True),
        ({"parameters": {"path": "s3://bucket/p"}, "use_fs_to_pass_data": True}, True, False),
        ({"parameters": {"path": "gcs://bucket/p"}, "use_fs_to_pass_data": False}, True, False),
        ({"parameters": None, "use_fs_to_pass_data": False}, False, False),  # no batch data
    ],
)
def test_local_batch_storage_is_refused_on_several_nodes(storage, with_global, refused):
    steps, context = pipeline_steps(storage, with_global=with_global)
    _runtime.check_storage(steps, context, 1)  # one node: any path works
    if not refused:
        _runtime.check_storage(steps, context, 3)
        return
    with pytest.raises(PipelineValidationError, match=r"3 nodes.*storage_parameters=\{'path': 's3://"):
        _runtime.check_storage(steps, context, 3)


def test_a_remote_cache_keeps_batch_data_on_this_machine_so_several_nodes_are_refused():
    """With a remote cache and no `path`, batch data goes to this machine's temporary
    folder (the batch storage and this check read `RunContext.batch_data_url`); before,
    the check assumed `<remote run dir>/batch_data` and let the run start."""
    storage = {"parameters": None, "use_fs_to_pass_data": False}
    steps, context = pipeline_steps(storage, with_global=True, run_dir="s3://bucket/cache/storage/run")
    assert context.batch_data_url.endswith("/stillhouse-batch-data") and "://" not in context.batch_data_url
    with pytest.raises(PipelineValidationError, match=r"local path '.*stillhouse-batch-data'.*3 nodes"):
        _runtime.check_storage(steps, context, 3)


@pytest.mark.parametrize(("driver", "keeps"), [("driver_process()", "False"), ("('elsewhere', 1)", "True")])
def test_an_actor_inside_the_driver_leaves_its_memory_alone(driver, keeps):
    # Ray's local mode runs actors in the driver: the user's process is never tuned. In a
    # fresh interpreter, so that this one's malloc stays as it was.
    if keeps == "True" and (not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        pytest.skip("the thresholds are glibc's mallopt")
    code = (
        "from stillhouse.ray._actor import StepActor, driver_process\n"
        "from tests.support.steps import Count\n"
        f"actor = StepActor(Count(name='count'), 0, False, {{}}, {driver})\n"
        "print(actor.keeps_freed_memory)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == keeps
