"""A run with no Ray runtime around starts its own and shuts it down, also when it fails.

(The successful case runs in test_docs.py and in the shared conformance suite.)"""

from __future__ import annotations

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.errors import InvalidResourcesError
from stillhouse.core.steps import LoadDataFromDicts
from tests.support.steps import Double

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_a_run_that_fails_to_start_still_shuts_its_runtime_down(tmp_path):
    import ray

    assert not ray.is_initialized(), "a Ray runtime leaked from an earlier test module"
    with Pipeline(name="own-big", executor="ray", num_cpus=2, cache_dir=tmp_path) as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> Double(name="big", resources={"cpus": 3})
    with pytest.raises(InvalidResourcesError, match="'big' asks for 3 CPU"):
        pipeline.run(use_cache=False, progress=False)
    assert not ray.is_initialized()
