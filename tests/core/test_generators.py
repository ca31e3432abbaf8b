"""`dataset_rows`: the one public way core turns a user's dataset into rows."""

from __future__ import annotations

import inspect

import pytest

from stillhouse.core.errors import DatasetArgumentError
from stillhouse.core.steps import dataset_rows, generators, make_generator_step


def test_a_list_of_dicts_is_taken_as_is() -> None:
    rows = [{"x": 1}, {"x": 2}]
    assert dataset_rows(rows) is rows


def test_a_dataframe_gives_one_dict_per_row() -> None:
    pandas = pytest.importorskip("pandas")
    assert dataset_rows(pandas.DataFrame({"x": [1, 2], "y": ["a", "b"]})) == [
        {"x": 1, "y": "a"}, {"x": 2, "y": "b"},
    ]


def test_anything_else_is_refused_with_what_to_pass() -> None:
    with pytest.raises(DatasetArgumentError, match=r"got a str; pass a list of dicts"):
        dataset_rows("rows.csv")
    with pytest.raises(DatasetArgumentError, match=r"got a tuple"):
        make_generator_step(({"x": 1},))


def test_generators_read_no_private_name_of_the_pipeline_module() -> None:
    source = inspect.getsource(generators)
    assert "stillhouse.core.pipeline" not in source and "_dataset_rows" not in source
