"""Benchmarks: stillhouse side by side with distilabel 1.5.3 and a plain Python loop.

`python -m benchmarks.run` runs everything; see benchmarks/README.md. Modules here
that a worker imports (`work`, `pipelines`, `plain`, `worker`) use only the standard
library, pyarrow and the engine under test, because distilabel's workers run them
from a separate virtual environment that has no stillhouse in it.
"""
