"""An example stillhouse step package: steps a third party ships and registers by entry point."""

from stillhouse_example_steps.steps import Uppercase

__all__ = ["Uppercase"]
