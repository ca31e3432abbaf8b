"""`stillhouse cache list|size|remove|explain`, added by stillhouse-cache through `register_cli`."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess

import pytest

from stillhouse.core.errors import CacheLockedError
from stillhouse.core.steps import KeepColumns
from tests.cli.helpers import SCRIPT, TIMEOUT, build, edit_yaml, run_dir, table_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
def ran(cli, config):
    done = cli("pipeline", "run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    return run_dir(done.stdout)


def decisions(done) -> dict[str, tuple[str, str]]:
    assert done.returncode == 0, done.stderr
    return {row[0]: (row[1], row[2]) for row in table_rows(done.stdout) if len(row) == 3}


def test_list_and_size(cli, ran, cache_dir):
    listed = cli("cache", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = table_rows(listed.stdout)
    assert row[:3] == ["clidemo", "1", "4"]  # one shape of the pipeline, four step stores
    assert row[3].endswith(("B", "KiB", "MiB"))

    total = cli("cache", "size")
    assert total.returncode == 0, total.stderr
    assert [r[0] for r in table_rows(total.stdout)] == ["clidemo"]
    one = cli("cache", "size", "clidemo", "--cache-dir", str(cache_dir))
    assert one.returncode == 0, one.stderr
    folders = [r[1] for r in table_rows(one.stdout)]
    assert ran.name in folders
    assert sum(f.startswith("steps/") for f in folders) == 4
    size = int(one.stdout.split("(")[-1].split(" bytes")[0])
    on_disk = sum(p.stat().st_size for p in (cache_dir / "clidemo").rglob("*") if p.is_file())
    assert size == on_disk


def test_list_of_an_empty_cache(cli, tmp_path):
    done = cli("cache", "list", "--cache-dir", str(tmp_path / "nothing"))
    assert done.returncode == 0
    assert "No cached pipelines" in done.stdout


def test_remove_needs_yes_and_an_existing_name(cli, ran, cache_dir):
    refused = cli("cache", "remove", "clidemo")  # stdin is not a terminal: no prompt
    assert refused.returncode == 1
    assert "Add --yes" in refused.stderr
    unknown = cli("cache", "remove", "nope", "--yes")
    assert unknown.returncode == 1
    assert "Cached pipelines: 'clidemo'" in unknown.stderr
    assert (cache_dir / "clidemo").is_dir()

    removed = cli("cache", "remove", "clidemo", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not (cache_dir / "clidemo").exists()


def test_remove_refuses_while_a_run_holds_the_lock(cli, ran, cache_dir):
    fd = os.open(cache_dir / "clidemo" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242", 0)
        done = cli("cache", "remove", "clidemo", "--yes")
    finally:
        os.close(fd)
    assert done.returncode == 1
    assert "is running (pid 4242)" in done.stderr
    assert (ran / "pipeline.yaml").exists()


def test_explain_before_and_after_a_run(cli, config):
    fresh = decisions(cli("cache", "explain", "--config", str(config)))
    assert fresh == {name: ("recompute", "new step") for name in ("load", "double", "tag", "drop_odd")}
    assert cli("pipeline", "run", "--config", str(config)).returncode == 0
    again = decisions(cli("cache", "explain", "--config", str(config)))
    assert {decision for decision, _ in again.values()} == {"reuse"}
    assert set(again) == {"load", "double", "tag", "drop_odd"}
    ignored = decisions(cli("cache", "explain", "--config", str(config), "--ignore-cache"))
    assert set(ignored.values()) == {("recompute", "--ignore-cache")}


def test_explain_names_the_changed_field_and_what_follows(cli, config, ran):
    edit_yaml(config, "tag", tag="b")
    changed = decisions(cli("cache", "explain", "--config", str(config)))
    assert changed["tag"] == ("recompute", "field 'tag' changed")
    assert changed["load"][0] == changed["double"][0] == changed["drop_odd"][0] == "reuse"

    edit_yaml(config, "load", data=[{"x": 1}])
    upstream = decisions(cli("cache", "explain", "--config", str(config)))
    assert upstream["load"] == ("recompute", "field 'data' changed")
    assert upstream["double"] == ("recompute", "a step before it changed (load)")
    assert upstream["drop_odd"] == ("recompute", "a step before it changed (double)")


def test_explain_batch_size_change_keeps_finished_outputs(cli, config, ran):
    batching = decisions(cli("cache", "explain", "--config", str(config),
                             "--param", "double.input_batch_size=5"))
    assert batching["double"][0] == "reuse"


def test_explain_reports_a_step_to_resume(cli, config, ran, cache_dir):
    [store] = (cache_dir / "clidemo" / "steps").glob("double-*")
    meta = json.loads((store / "meta.json").read_text())
    # what explain compares against: one short hash per result-affecting field
    assert set(meta["parts"]["fields"]) == {"name", "input_mappings", "output_mappings"}
    assert all(len(value) == 16 for value in meta["parts"]["fields"].values())
    (store / "meta.json").write_text(json.dumps({**meta, "finished": False}))
    explained = decisions(cli("cache", "explain", "--config", str(config)))
    assert explained["double"] == ("resume (4 batches stored)", "stored outputs are not finished")
    assert explained["tag"][0] == "reuse"  # its own outputs are finished and keyed to double's


def test_explain_a_new_step_in_a_grown_pipeline(cli, tmp_path, ran):
    grown = build()
    with grown:
        keep = KeepColumns(name="keep", columns=["x"])
    grown.dag.get_step("double").connect(keep)
    path = tmp_path / "grown.yaml"
    grown.save(path)
    explained = decisions(cli("cache", "explain", "--config", str(path)))
    assert explained["keep"] == ("recompute", "new step")
    assert explained["tag"][0] == "reuse"


@pytest.mark.parametrize("command", [["list"], ["size"], ["prune", "--older-than", "1d"], ["remove", "demo", "--yes"]])
def test_a_remote_cache_dir_is_a_clear_error_not_an_empty_answer(cli, command):
    """Before: `list` said "No cached pipelines in s3:/bucket/cache." with exit 0."""
    done = cli("cache", *command, "--cache-dir", "s3://bucket/cache")
    assert done.returncode == 1
    assert "The cache 's3://bucket/cache' is remote (an fsspec URL)" in done.stderr
    assert "pass a local --cache-dir" in done.stderr


def test_explain_of_a_remote_cache_says_it_reads_local_caches_only(cli, config):
    """Before: "The checkpoint log needs a local filesystem", which is not true: a run
    with a remote cache_dir works."""
    done = cli("cache", "explain", "--config", str(config), "--cache-dir", "memory://qa/cache")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "error: The cache 'memory://qa/cache' is remote (an fsspec URL): `stillhouse cache "
        "explain` reads local cache folders only (a run with this cache_dir works, and logs "
        "what it reuses as it starts); pass a local --cache-dir."
    )


def test_no_run_takes_the_lock_while_remove_deletes_the_folder(cli_env, cache_dir):
    """`cache remove` holds the pipeline's lock while it deletes: the lock file must outlive
    everything else it deletes, or a run starting meanwhile makes a new lock file in the
    folder being deleted, takes it, and writes where its results are about to go."""
    from stillhouse.cache import lock

    base = cache_dir / "big"
    for folder in ("lasting", "run-a", "steps", "z-last"):
        (base / folder).mkdir(parents=True)
        for index in range(5000):  # enough files that the deletion takes a while
            (base / folder / f"{index}.bin").touch()
    remove = subprocess.Popen([str(SCRIPT), "cache", "remove", "big", "--yes"], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    taken = None
    try:
        holder = base / lock.LOCK  # names its holder's pid once taken
        while remove.poll() is None and _holder(holder) != str(remove.pid):
            pass  # taking it before remove does would make remove refuse
        while taken is None and remove.poll() is None:
            try:
                taken = lock.acquire(base, "busy {pid}")
            except CacheLockedError:
                continue
        if taken is not None:  # taken only once nothing but the lock file was left
            assert sorted(os.listdir(base)) == [lock.LOCK]
            lock.release(taken)
        out, err = remove.communicate(timeout=TIMEOUT)
    finally:
        if remove.poll() is None:
            remove.kill()
            remove.wait(10)
    assert remove.returncode == 0, err
    assert "Removed the cache of pipeline 'big'" in out


def _holder(path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:  # not made yet, or removed last by remove
        return None
