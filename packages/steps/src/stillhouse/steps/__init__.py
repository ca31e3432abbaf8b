"""stillhouse.steps: load data (Hub, disk, any filesystem), sample few-shot examples,
flag near-duplicates. distilabel 1.5's names, fields and behaviour (docs/steps.md)."""

from stillhouse.steps.disk import LoadDataFromDisk
from stillhouse.steps.filesystem import LoadDataFromFileSystem
from stillhouse.steps.hub import LoadDataFromHub
from stillhouse.steps.minhash import MinHashDedup
from stillhouse.steps.sampler import DataSampler

STEPS = [LoadDataFromHub, LoadDataFromDisk, LoadDataFromFileSystem, DataSampler, MinHashDedup]

__all__ = [
    "STEPS",
    "DataSampler",
    "LoadDataFromDisk",
    "LoadDataFromFileSystem",
    "LoadDataFromHub",
    "MinHashDedup",
]
