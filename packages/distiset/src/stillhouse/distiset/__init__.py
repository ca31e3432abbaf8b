"""stillhouse results: leaf rows streamed to Parquet, `Distiset`, save/load and Hub push."""

from stillhouse.distiset.distiset import Distiset
from stillhouse.distiset.reader import create_distiset
from stillhouse.distiset.writer import ParquetOutputWriter

__all__ = ["Distiset", "ParquetOutputWriter", "create_distiset"]
