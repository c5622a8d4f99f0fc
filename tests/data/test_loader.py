"""The torch loader over a cache entry: every row once per epoch, equal steps per rank, reproducible orders."""

from __future__ import annotations

import math
import os
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from radlake.data.converter import SparkDatasetConverter, make_spark_converter
from radlake.data.loader import DeltaIterableDataset, _RowGroupReader, make_torch_dataloader

ROWS = 103
PAYLOAD = 1000


@pytest.fixture(scope="module")
def entry(spark, tmp_path_factory) -> SparkDatasetConverter:
    """103 rows (id, a 1,000-byte payload, a tag) in 2 files of several row groups each."""
    df = spark.createDataFrame(
        [(i, os.urandom(PAYLOAD), f"tag-{i}") for i in range(ROWS)], "id long, payload binary, tag string"
    ).repartition(2)
    converter = make_spark_converter(df, cache_dir=tmp_path_factory.mktemp("loader-cache"), row_group_bytes=16 << 10)
    groups = DeltaIterableDataset(converter.path, batch_size=1).row_groups
    assert len(groups) >= 4 and len({g[0] for g in groups}) == 2, groups
    return converter


def _epoch(entry, *, world_size: int = 1, num_workers: int = 0, epoch: int = 0, **kwargs) -> list[list[list[int]]]:
    """Ids of each batch of each rank in one epoch: ``[rank][batch][sample]``."""
    options = {"batch_size": 8, "drop_last": False, "columns": ["id"], **kwargs}
    ranks = []
    for rank in range(world_size):
        loader = make_torch_dataloader(entry, rank=rank, world_size=world_size, num_workers=num_workers, **options)
        loader.dataset.set_epoch(epoch)
        batches = [batch["id"].tolist() for batch in loader]
        assert len(batches) == loader.dataset.steps_per_epoch == len(loader)
        ranks.append(batches)
    return ranks


def _stored_ids(entry) -> list[int]:
    ds = DeltaIterableDataset(entry.path, batch_size=1)
    return [
        i
        for name, index, _ in ds.row_groups
        for i in pq.ParquetFile(entry.path / name).read_row_group(index)["id"].to_pylist()
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_every_row_once_per_epoch_with_equal_steps(entry, world_size, num_workers):
    ranks = _epoch(entry, world_size=world_size, num_workers=num_workers, epoch=1)
    per_rank = math.ceil(ROWS / world_size)
    assert [sum(len(b) for b in batches) for batches in ranks] == [per_rank] * world_size
    assert len({len(batches) for batches in ranks}) == 1  # equal steps on every rank
    counts = Counter(i for batches in ranks for batch in batches for i in batch)
    assert set(counts) == set(range(ROWS))
    padding = per_rank * world_size - ROWS
    assert sum(c - 1 for c in counts.values()) == padding  # only the wrap-around repeats
    # The batches do not depend on how many workers make them.
    if num_workers:
        assert ranks == _epoch(entry, world_size=world_size, num_workers=0, epoch=1)


def test_drop_last_gives_full_batches_and_equal_steps(entry):
    ranks = _epoch(entry, world_size=3, num_workers=2, drop_last=True)
    # 103 rows → 35 per rank (2 padded) → 4 full batches of 8 per rank, 3 samples dropped per rank.
    assert [[len(b) for b in batches] for batches in ranks] == [[8] * 4] * 3
    ids = [i for batches in ranks for batch in batches for i in batch]
    assert len(ids) == len(set(ids)) == 96


def test_orders_change_with_epoch_and_repeat_with_seed(entry):
    flat = [i for batch in _epoch(entry, epoch=0)[0] for i in batch]
    assert sorted(flat) == list(range(ROWS))
    assert flat == [i for batch in _epoch(entry, epoch=0, num_workers=2)[0] for i in batch]
    assert flat != [i for batch in _epoch(entry, epoch=1)[0] for i in batch]
    assert flat != [i for batch in _epoch(entry, epoch=0, seed=7)[0] for i in batch]
    assert [i for batch in _epoch(entry, shuffle=False)[0] for i in batch] == _stored_ids(entry)


def test_row_groups_stay_together_and_rows_shuffle_within(entry):
    ds = DeltaIterableDataset(entry.path, batch_size=8, seed=3)
    ds.set_epoch(2)
    groups, rows = ds.epoch_order()
    runs = [int(g) for k, g in enumerate(groups) if k == 0 or groups[k - 1] != g]
    assert sorted(runs) == list(range(len(ds.row_groups)))  # each row group is one contiguous run
    assert runs != sorted(runs)  # and the runs are shuffled
    for g, (_, _, n) in enumerate(ds.row_groups):
        within = rows[groups == g].tolist()
        assert sorted(within) == list(range(n))
    assert any(rows[groups == g].tolist() != sorted(rows[groups == g].tolist()) for g in range(len(ds.row_groups)))


def test_a_rank_reads_only_the_row_groups_it_overlaps(entry, monkeypatch):
    read = []
    original = _RowGroupReader.rows

    def spy(self, group, rows):
        read.append(group)
        return original(self, group, rows)

    monkeypatch.setattr(_RowGroupReader, "rows", spy)
    ds = DeltaIterableDataset(entry.path, batch_size=4, rank=1, world_size=3, columns=["id"], drop_last=False)
    ds.set_epoch(5)
    assert sum(len(batch["id"]) for batch in ds) == 35
    groups, _ = ds.epoch_order()
    assert sorted(read) == sorted(set(groups[35:70].tolist()))  # each overlapping row group, read once
    assert len(read) < len(ds.row_groups)


def _describe(row: dict) -> dict:
    return {
        "id": row["id"],
        "pid": os.getpid(),
        "payload_type": type(row["payload"]).__name__,
        "size": len(row["payload"]),
    }


def test_columns_and_transform(entry):
    loader = make_torch_dataloader(entry, batch_size=5, num_workers=0, columns=["id", "tag"])
    batch = next(iter(loader))
    assert set(batch) == {"id", "tag"} and batch["tag"] == [f"tag-{i}" for i in batch["id"].tolist()]

    loader = make_torch_dataloader(entry, batch_size=5, num_workers=1, transform=_describe, collate_fn=list)
    samples = [s for batch in loader for s in batch]
    assert len(samples) == 100  # drop_last by default: 20 full batches
    assert {s["payload_type"] for s in samples} == {"bytes"} and {s["size"] for s in samples} == {PAYLOAD}
    assert {s["pid"] for s in samples} != {os.getpid()}  # applied in the worker process


def test_defaults_and_argument_checks(entry):
    loader = entry.make_torch_dataloader(batch_size=10, num_workers=0)
    assert isinstance(loader.dataset, DeltaIterableDataset)
    assert (loader.dataset.rank, loader.dataset.world_size) == (0, 1)  # no process group
    assert loader.dataset.steps_per_epoch == 10
    batch = next(iter(loader))
    assert isinstance(batch["id"], torch.Tensor) and len(batch["payload"]) == 10
    with pytest.raises(ValueError, match="rank"):
        make_torch_dataloader(entry, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_torch_dataloader(entry, batch_size=0)
    with pytest.raises(ValueError, match="columns"):
        make_torch_dataloader(entry, batch_size=4, columns=["id", "nope"])
    with pytest.raises(FileNotFoundError):
        make_torch_dataloader(entry.path / "missing", batch_size=4)
