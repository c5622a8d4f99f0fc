"""Training data: labels and splits tables, the Parquet cache and torch loader, and per-sample transforms.

- :mod:`.labels` / :mod:`.splits`: the ``annotations`` and ``splits`` Delta tables.
- :mod:`.converter` / :mod:`.loader`: petastorm's ``make_spark_converter`` and
  ``make_torch_dataloader``, rebuilt on Spark and pyarrow.
- :mod:`.transforms`: decode, normalise, letterbox and augment one sample.

The names below are imported on first use, so ``import radlake.data.labels`` (CLI,
Spark executors) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radlake.data.converter import SparkDatasetConverter, clean_cache, make_spark_converter
    from radlake.data.loader import DeltaIterableDataset, make_torch_dataloader

_EXPORTS = {
    "SparkDatasetConverter": "radlake.data.converter",
    "clean_cache": "radlake.data.converter",
    "make_spark_converter": "radlake.data.converter",
    "DeltaIterableDataset": "radlake.data.loader",
    "make_torch_dataloader": "radlake.data.loader",
}

__all__ = [
    "DeltaIterableDataset",
    "SparkDatasetConverter",
    "clean_cache",
    "make_spark_converter",
    "make_torch_dataloader",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'radlake.data' has no attribute {name!r}")
