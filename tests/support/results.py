"""Read results the same way whether run() returned a Distiset or a dict of rows."""

from stillhouse.core.testing import rows_of

__all__ = ["rows_of"]
