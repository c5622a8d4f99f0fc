"""Listing the archive and planning the executors' work.

The archive is listed on the driver, metadata only (no file content is read here): a
local folder or a FUSE mount (a Unity Catalog Volume) by a Python walk, a URI
(``s3://``, ``abfss://``...) by :func:`radlake.spark.list_files` (Hadoop's file system
API on a classic session, the ``binaryFile`` source's listing over Spark Connect).
Files already in the ``ingest_files`` ledger with the same size and modification
time are skipped. The rest are packed into tasks of about ``partition_bytes``
stored bytes and at most ``partition_files`` files (largest first, each to the
lightest task), because per-task overhead, not decoding, dominates small-file
ingestion.
"""

from __future__ import annotations

import heapq
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from radlake.errors import RadlakeError
from radlake.spark import list_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class ArchiveNotFoundError(RadlakeError):
    """The archive path does not exist or holds no files."""


def normalize_archive(archive: str) -> str:
    """Check an archive location and return it in the form Spark lists.

    Local paths (and ``file:`` URIs) must exist and are made absolute; other URIs
    (``dbfs:``, ``s3://``, ...) and ``/Volumes/...`` paths are passed through.

    Raises
    ------
    ArchiveNotFoundError
        If a local archive path does not exist.
    """
    if "://" in archive and not archive.startswith("file:"):
        return archive
    local = archive[len("file:") :] if archive.startswith("file:") else archive
    path = Path(local).expanduser()
    if not path.exists():
        raise ArchiveNotFoundError(f"Archive '{archive}' does not exist.")
    return str(path.resolve())


class ListedFile(NamedTuple):
    """One stored file of the archive: metadata only."""

    path: str
    """URI (``file:/...`` locally)."""
    file_size: int
    """Bytes."""
    modification_time: datetime
    """UTC, millisecond precision (as Hadoop's file systems report it)."""

    @property
    def key(self) -> tuple[str, int, int]:
        """(path, size, modification time in epoch milliseconds): what the ledger compares."""
        return self.path, self.file_size, _epoch_ms(self.modification_time)


def list_archive(spark: SparkSession, archive: str) -> list[ListedFile]:
    """Every stored file under ``archive``, on the driver (metadata only, no content is read).

    Local folders (and FUSE mounts such as ``/Volumes``) are walked in Python, on either
    kind of session; URIs are listed by :func:`radlake.spark.list_files`: Hadoop's
    ``FileSystem.listFiles`` on a classic session, which works for every file system
    Spark reads. Unlike the ``binaryFile`` source both keep zero-byte and hidden
    (``_``/``.``) files, so that those reach the quarantine too. Over Spark Connect (no
    JVM on the client) URIs are listed by ``binaryFile``, which leaves hidden and empty files out.

    Raises
    ------
    ArchiveNotFoundError
        If a local archive path does not exist.
    """
    location = normalize_archive(archive)
    if "://" not in location:  # local folder or FUSE mount (/Volumes): a plain walk, much faster than py4j
        return list(_walk_local(location))
    return [
        ListedFile(path, size, datetime.fromtimestamp(modified_ms / 1000, tz=UTC))
        for path, size, modified_ms in list_files(spark, location)
    ]


def unseen_files(listed: list[ListedFile], ledger: DataFrame) -> list[ListedFile]:
    """The files of ``listed`` that the ledger does not hold with the same size and modification time.

    Only the ledger rows under the listed paths' common folder are read (path, size and
    time: metadata), and the comparison runs on the driver, where the listing already is.
    """
    from pyspark.sql import functions as F

    if not listed:
        return []
    prefix = os.path.commonprefix([f.path for f in listed])
    known = {
        (r[0], int(r[1]), int(r[2]))
        for r in ledger.where(F.col("path").startswith(prefix))
        .select("path", "file_size", F.unix_millis("modification_time").alias("ms"))
        .collect()
    }
    return [f for f in listed if f.key not in known]


def _walk_local(root: str):
    """(``file:`` URI, size, modification time) of every file below ``root``, links not followed."""
    if os.path.isfile(root):
        stat = os.stat(root)
        yield ListedFile(f"file:{root}", stat.st_size, _mtime(stat))
        return
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    yield ListedFile(f"file:{entry.path}", stat.st_size, _mtime(stat))


def _epoch_ms(moment: datetime) -> int:
    return round(_utc(moment).timestamp() * 1000)


def _utc(moment: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken as the local time (as Spark's collect gives it)."""
    return moment.astimezone(UTC)


def _mtime(stat: os.stat_result) -> datetime:
    """Modification time at millisecond precision, as Hadoop's file system reports it."""
    return datetime.fromtimestamp((stat.st_mtime_ns // 1_000_000) / 1000, tz=UTC)


def pack_tasks(
    sizes: list[int],
    *,
    partition_bytes: int,
    partition_files: int,
    min_tasks: int,
    costs: list[float] | None = None,
    slots: int = 1,
) -> list[int]:
    """Assign files to tasks balanced by cost (longest-processing-time-first).

    Parameters
    ----------
    sizes
        Stored size of each file, bytes: they set how many tasks there are.
    partition_bytes
        Target stored bytes per task.
    partition_files
        Most files per task.
    min_tasks
        At least this many tasks when there are enough files (e.g. 2 x cores).
    costs
        Expected work of each file (any unit), balanced across tasks; default ``sizes``.
    slots
        Task slots of the cluster: the number of tasks is rounded up to a multiple of
        it, so that the last wave of tasks keeps every slot busy.

    Returns
    -------
    list[int]
        Task index of each file, in input order; indices run from 0 to n_tasks - 1.

    Examples
    --------
    >>> pack_tasks([10, 1, 1, 8], partition_bytes=10, partition_files=10, min_tasks=2)
    [0, 1, 1, 1]
    >>> pack_tasks([10, 1, 1, 8], partition_bytes=10, partition_files=10, min_tasks=2, costs=[1, 5, 5, 1])
    [0, 0, 1, 1]
    """
    if not sizes:
        return []
    weights = list(costs) if costs is not None else sizes
    if len(weights) != len(sizes):
        raise ValueError(f"Argument 'costs' has {len(weights)} values for {len(sizes)} files.")
    total = sum(sizes)
    n_tasks = max(math.ceil(total / partition_bytes), math.ceil(len(sizes) / partition_files), min_tasks)
    n_tasks = min(math.ceil(n_tasks / max(1, slots)) * max(1, slots), len(sizes))
    heap = [(0.0, 0, task) for task in range(n_tasks)]  # (cost, files, task)
    assignment = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: -weights[i]):
        load, files, task = heapq.heappop(heap)
        assignment[index] = task
        heapq.heappush(heap, (load + weights[index], files + 1, task))
    return assignment
