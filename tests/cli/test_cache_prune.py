"""`stillhouse cache prune` and `cache size`'s title (issue 19 item 15)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from stillhouse.core.steps import KeepColumns
from tests.cli.helpers import build, run_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DAY = 86400


def _age(path: Path, days: float) -> None:
    """Make everything under `path` look last modified `days` ago."""
    when = time.time() - days * DAY
    for entry in [path, *path.rglob("*")]:
        os.utime(entry, (when, when), follow_symlinks=False)


@pytest.fixture
def two_runs(cli, config, cache_dir):
    """Two shapes of clidemo: the first (tag='a') 10 days old, the second (tag='b', one
    more step) new. Only the first uses the store of tag='a'."""
    first = cli("pipeline", "run", "--config", str(config))
    assert first.returncode == 0, first.stderr
    grown = build(tag="b")
    with grown:
        keep = KeepColumns(name="keep", columns=["x"])
    grown.dag.get_step("double").connect(keep)
    grown_config = config.parent / "grown.yaml"
    grown.save(grown_config)
    second = cli("pipeline", "run", "--config", str(grown_config))
    assert second.returncode == 0, second.stderr
    old, new = run_dir(first.stdout), run_dir(second.stdout)
    assert old != new
    base = cache_dir / "clidemo"
    stores = {p.name for p in (base / "steps").iterdir()}
    assert len(stores) == 6  # load, double, drop_odd shared; tag twice; keep
    _age(old, 10)
    old_tag = next(p for p in (base / "steps").iterdir()
                   if p.name.startswith("tag-") and p.stat().st_mtime == min(
                       q.stat().st_mtime for q in (base / "steps").glob("tag-*")))
    _age(old_tag, 10)
    return base, old, new, old_tag


def test_prune_needs_a_rule(cli, cache_dir):
    done = cli("cache", "prune")
    assert done.returncode == 1
    assert "Say what to prune: --older-than AGE" in done.stderr


def test_bad_age_is_one_line(cli, cache_dir):
    done = cli("cache", "prune", "--older-than", "7days")
    assert done.returncode == 1
    assert "--older-than '7days' is not an age" in done.stderr


def test_keep_last_removes_older_runs_and_the_stores_only_they_used(cli, two_runs):
    base, old, new, old_tag = two_runs
    dry = cli("cache", "prune", "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove clidemo/{old.name}" in dry.stdout
    assert f"would remove clidemo/steps/{old_tag.name}" in dry.stdout
    assert old.exists() and old_tag.exists()

    done = cli("cache", "prune", "clidemo", "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    assert not old.exists() and not old_tag.exists()
    assert new.exists()
    assert len(list((base / "steps").iterdir())) == 5  # what the kept run uses stays
    assert "Freed " in done.stdout
    rerun = cli("pipeline", "run", "--config", str(new / "pipeline.yaml"))
    assert rerun.returncode == 0, rerun.stderr  # the kept shape still runs from its cache


def test_older_than_keeps_what_is_recent(cli, two_runs):
    base, old, new, old_tag = two_runs
    lasting = sorted((base / "lasting").iterdir())
    assert [p.name for p in lasting] == ["double", "drop_odd", "keep", "load", "tag"]  # not runs
    _age(base / "lasting" / "keep", 10)
    kept = cli("cache", "prune", "--older-than", "30d")
    assert kept.returncode == 0, kept.stderr
    assert old.exists() and "Freed 0 B (0 bytes) in 0 folder(s)." in kept.stdout
    done = cli("cache", "prune", "--older-than", "7d")
    assert done.returncode == 0, done.stderr
    assert not old.exists() and not old_tag.exists() and new.exists()
    assert "removed clidemo/lasting/keep" in done.stdout
    assert sorted(p.name for p in (base / "lasting").iterdir()) == ["double", "drop_odd", "load", "tag"]


def test_prune_skips_a_running_pipeline(cli, two_runs):
    base, old, _new, _tag = two_runs
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242", 0)
        done = cli("cache", "prune", "--keep-last", "0")
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    assert "skipped clidemo: Pipeline 'clidemo' is running (pid 4242)" in done.stdout
    assert old.exists()


def test_size_title_is_one_line_on_a_narrow_terminal(cli, cli_env, two_runs, tmp_path):
    cli_env["COLUMNS"] = "60"
    done = cli("cache", "size")
    assert done.returncode == 0, done.stderr
    root = cli_env["STILLHOUSE_CACHE_DIR"]
    assert f"Cache size of {root}" in done.stdout.splitlines()
