"""``make_torch_dataloader``: stream a Parquet cache entry into torch, sharded for DDP with equal steps per rank.

Every epoch has one global sample order, the same on every rank and worker: the row
groups shuffled by ``(seed, epoch)``, then the rows inside each row group shuffled
(``shuffle=False`` keeps the stored order). The order is padded by wrapping around to a
multiple of ``world_size`` (like ``DistributedSampler``), so every rank gets exactly
``ceil(N / world_size)`` samples and :attr:`DeltaIterableDataset.steps_per_epoch` is the
same on every rank: DDP never waits for a rank that has one batch less. Rank ``r``
takes the ``r``-th contiguous slice of the order and reads only the row groups it
overlaps; its batches go round-robin to the DataLoader workers (worker ``w`` makes
batches ``w, w + W, ...``), which torch's DataLoader yields in batch order, so the
sequence of batches does not depend on the number of workers. Each worker reads a row
group once (only the needed columns), turns the rows it needs into dicts of Python
values (binary columns stay ``bytes``) and applies ``transform`` to each.

Call ``loader.dataset.set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``.

Example
-------
>>> loader = make_torch_dataloader(converter, batch_size=8, num_workers=2, transform=fn)  # doctest: +SKIP
>>> for epoch in range(3):                                                                 # doctest: +SKIP
...     loader.dataset.set_epoch(epoch)
...     for batch in loader:
...         ...
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from radlake.data.cache_entry import read_meta

#: A row of the cache as the transform sees it: column name → Python value.
Row = dict[str, Any]


class DeltaIterableDataset(IterableDataset):
    """Batches of one rank's shard of a cache entry, for ``DataLoader(batch_size=None)``.

    Parameters
    ----------
    path
        Folder of a complete cache entry (:attr:`SparkDatasetConverter.path`).
    batch_size
        Samples per batch (per rank).
    rank, world_size
        This process's rank and the number of ranks, ``0 <= rank < world_size``.
    shuffle
        Shuffle row groups and rows within them each epoch; ``False`` keeps the stored order.
    seed
        Seed of the shuffle; with the epoch it fixes the order (identical on every rank).
    columns
        Columns to read; ``None`` reads all.
    transform
        ``row dict → sample``, applied in the worker process.
    collate_fn
        ``list of samples → batch``; torch's ``default_collate`` by default.
    drop_last
        Drop each rank's last partial batch.

    Raises
    ------
    ValueError
        If ``batch_size`` < 1, ``world_size`` < 1, ``rank`` is outside ``[0, world_size)`` or
        a column is not in the entry.
    FileNotFoundError
        If ``path`` is not a complete cache entry.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        transform: Callable[[Row], Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Argument 'batch_size' must be >= 1, got {batch_size}")
        if world_size < 1:
            raise ValueError(f"Argument 'world_size' must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"Argument 'rank' must be in [0, {world_size}), got {rank}")
        self.path = Path(path)
        meta = read_meta(self.path)
        available = [f["name"] for f in meta["schema"]["fields"]]
        if columns is not None:
            missing = [c for c in columns if c not in available]
            if missing or not columns:
                raise ValueError(f"Argument 'columns' must name columns of the cache {available}, got {list(columns)}")
        #: (file name, row-group index in the file, rows) of every non-empty row group, in a stable order.
        self.row_groups: list[tuple[str, int, int]] = [
            (f["file"], i, n) for f in meta["files"] for i, n in enumerate(f["rows"]) if n > 0
        ]
        self.num_rows = sum(n for _, _, n in self.row_groups)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.columns = list(columns) if columns is not None else None
        self.transform = transform
        self.collate_fn = collate_fn or default_collate
        self.epoch = 0

    @property
    def samples_per_rank(self) -> int:
        """``ceil(N / world_size)``: the same on every rank (the order wraps around to fill)."""
        return math.ceil(self.num_rows / self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch, the same on every rank (``drop_last`` decides on a last partial batch)."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the sample order of ``epoch`` (call on every rank before iterating, like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """The global sample order of the current epoch, padded for the ranks.

        Returns
        -------
        tuple[np.ndarray, np.ndarray]
            ``(row_group, row)``, both ``(samples_per_rank * world_size,)`` int64: sample ``i``
            is row ``row[i]`` (0-based, within the row group) of ``self.row_groups[row_group[i]]``.
        """
        rng = np.random.default_rng([self.seed, self.epoch])
        count = len(self.row_groups)
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        groups, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for g in order.tolist():
            n = self.row_groups[g][2]
            groups.append(np.full(n, g, dtype=np.int64))
            rows.append(rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64))
        group_ids, row_ids = np.concatenate(groups), np.concatenate(rows)
        padding = self.samples_per_rank * self.world_size - len(row_ids)
        if padding > 0:  # wrap around so every rank has the same number of samples
            wrap = np.arange(padding) % len(row_ids)
            group_ids, row_ids = np.concatenate([group_ids, group_ids[wrap]]), np.concatenate([row_ids, row_ids[wrap]])
        return group_ids, row_ids

    def rank_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's batches of the current epoch: ``(row_group, row)`` index arrays per batch."""
        group_ids, row_ids = self.epoch_order()
        n = self.samples_per_rank
        mine = slice(self.rank * n, (self.rank + 1) * n)
        group_ids, row_ids = group_ids[mine], row_ids[mine]
        size = self.batch_size
        return [(group_ids[i : i + size], row_ids[i : i + size]) for i in range(0, self.steps_per_epoch * size, size)]

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = self.rank_batches()[worker::workers]
        # Per row group: the rows this worker needs and the index of the last batch that needs it.
        needed: dict[int, set[int]] = {}
        last_use: dict[int, int] = {}
        for b, (groups, rows) in enumerate(batches):
            for g, r in zip(groups.tolist(), rows.tolist(), strict=True):
                needed.setdefault(g, set()).add(r)
                last_use[g] = b
        with _RowGroupReader(self.path, self.row_groups, self.columns) as reader:
            loaded: dict[int, dict[int, Row]] = {}
            for b, (groups, rows) in enumerate(batches):
                samples = []
                for g, r in zip(groups.tolist(), rows.tolist(), strict=True):
                    if g not in loaded:
                        loaded[g] = reader.rows(g, sorted(needed[g]))
                    row = loaded[g][r]
                    samples.append(self.transform(row) if self.transform is not None else row)
                for g in set(groups.tolist()):
                    if last_use[g] == b:
                        del loaded[g]
                yield self.collate_fn(samples)


class _RowGroupReader:
    """Reads rows of a cache entry's row groups as dicts, keeping each Parquet file open once."""

    def __init__(self, path: Path, row_groups: list[tuple[str, int, int]], columns: list[str] | None) -> None:
        self.path, self.row_groups, self.columns = path, row_groups, columns
        self._files: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _RowGroupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def rows(self, group: int, rows: list[int]) -> dict[int, Row]:
        """``{row: dict}`` for the sorted ``rows`` (0-based, within row group ``group``)."""
        import pyarrow.parquet as pq

        name, index, count = self.row_groups[group]
        if name not in self._files:
            self._files[name] = self._stack.enter_context(pq.ParquetFile(self.path / name))
        table = self._files[name].read_row_group(index, columns=self.columns, use_threads=False)
        if len(rows) < count:
            table = table.take(rows)
        return dict(zip(rows, table.to_pylist(), strict=True))


def make_torch_dataloader(
    converter_or_path: Any,
    *,
    batch_size: int,
    num_workers: int = 2,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    columns: Sequence[str] | None = None,
    transform: Callable[[Row], Any] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = True,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over a cache entry (petastorm's name), sharded by rank with equal steps per rank.

    Parameters
    ----------
    converter_or_path
        A :class:`radlake.data.converter.SparkDatasetConverter` or the folder of a complete entry.
    batch_size
        Samples per batch and rank.
    num_workers
        DataLoader worker processes (0: read and transform in this process).
    rank, world_size
        Default to ``torch.distributed``'s when its process group is initialised, else 0 and 1.
    shuffle, seed, columns, transform, collate_fn, drop_last
        As in :class:`DeltaIterableDataset`.
    prefetch_factor
        Batches each worker prepares ahead (ignored when ``num_workers`` is 0).
    pin_memory
        Pin batch tensors in page-locked memory (for a GPU).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields whole batches; ``loader.dataset`` is the :class:`DeltaIterableDataset`
        (``set_epoch``, ``steps_per_epoch``). Workers are not persistent, so ``set_epoch``
        takes effect at the next iteration.

    Raises
    ------
    ValueError
        If ``num_workers`` < 0, or as :class:`DeltaIterableDataset`.
    """
    if num_workers < 0:
        raise ValueError(f"Argument 'num_workers' must be >= 0, got {num_workers}")
    path = getattr(converter_or_path, "path", converter_or_path)
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    dataset = DeltaIterableDataset(
        path,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        columns=columns,
        transform=transform,
        collate_fn=collate_fn,
        drop_last=drop_last,
    )
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra)
