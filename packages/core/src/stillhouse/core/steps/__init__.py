"""Built-in steps (same behaviour as distilabel's)."""

from stillhouse.core.steps.generators import LoadDataFromDicts, make_generator_step

__all__ = ["LoadDataFromDicts", "make_generator_step"]
