"""Summarise the cProfiles that `python -m benchmarks.run --profile DIR` wrote.

    uv run --no-sync python -m benchmarks.profiles DIR [--top 20] [--match stillhouse]

Profiles of the same case and column are added together; for each group the top
functions by cumulative time are printed (only those whose file matches `--match`,
if given, so the engine's own hot spots are not drowned by the standard library).
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
from collections import defaultdict
from pathlib import Path


def groups(directory: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(directory.glob("*.prof")):
        found[re.sub(r"-\d+$", "", path.stem)].append(path)
    return found


def top(paths: list[Path], count: int, match: str | None, sort: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(paths[0]), stream=out)
    for path in paths[1:]:
        stats.add(str(path))
    stats.sort_stats(sort)
    restrictions: list[object] = [match] if match else []
    stats.print_stats(*restrictions, count)
    text = out.getvalue()
    start = text.find("   ncalls")
    return text[start:] if start >= 0 else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--match", help="regular expression on 'file:line(function)'")
    parser.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime", "ncalls"])
    args = parser.parse_args(argv)
    for name, paths in groups(args.directory).items():
        print(f"== {name} ({len(paths)} run{'s' if len(paths) > 1 else ''})")
        print(top(paths, args.top, args.match, args.sort))


if __name__ == "__main__":
    main()
