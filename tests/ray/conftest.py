"""Fixtures for the "ray" executor tests: one local Ray runtime per module, no actor left.

Starting Ray takes seconds on a 2-core machine, so a module shares one runtime; the
executor uses a runtime that is already initialised and leaves it running, exactly
as a user's notebook would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

RAY_CPUS = 2
SLOTS = 2
"""A custom resource the shared runtime offers, to place steps by `resources={"slot": n}`."""


def live_actors() -> list[dict]:
    """Actors of this runtime that are not dead (GCS table: works without the dashboard)."""
    from ray._private import state

    return [a for a in state.actors().values() if a.get("State") != "DEAD"]


def wait_for_no_actors(timeout: float = 15.0) -> list[dict]:
    """`ray.kill` is asynchronous: give the GCS a moment to record the deaths."""
    deadline = time.monotonic() + timeout
    while True:
        left = live_actors()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    import ray

    from stillhouse.ray import start_local_runtime

    assert not ray.is_initialized(), "a Ray runtime leaked from an earlier test module"
    start_local_runtime(num_cpus=RAY_CPUS, resources={"slot": SLOTS})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def no_actors_left(ray_runtime: None) -> Iterator[None]:
    """Fail a test that leaves an actor of its own running."""
    before = {a["ActorID"] for a in live_actors()}
    yield
    left = [a for a in wait_for_no_actors() if a["ActorID"] not in before]
    assert not left, f"actors left running: {[(a['ActorClassName'], a['State']) for a in left]}"


@pytest.fixture
def s3_storage() -> Iterator[dict[str, Any]]:
    """An S3 server on a free loopback port with bucket "stillhouse": `storage_parameters`."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="y",
            region_name="us-east-1",
        ).create_bucket(Bucket="stillhouse")
        yield {
            "path": "s3://stillhouse/batches",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "key": "x",
            "secret": "y",
        }
    finally:
        server.stop()
