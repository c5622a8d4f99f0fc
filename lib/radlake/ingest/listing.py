"""Listing the archive and planning the executors' work.

The archive is listed with Hadoop's file system API (any file system Spark reads: a
local folder, a Unity Catalog Volume, ``s3://``, ``abfss://``): metadata only, no
file content is read here.
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
from typing import TYPE_CHECKING

from radlake.errors import RadlakeError

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


def list_archive(spark: SparkSession, archive: str) -> DataFrame:
    """Every stored file under ``archive``: ``path`` (URI), ``file_size`` (bytes), ``modification_time``.

    Local folders (and FUSE mounts such as ``/Volumes``) are walked in Python; URIs go
    through Hadoop's ``FileSystem.listFiles`` on the driver (metadata only), which works
    for every file system Spark reads. Unlike the ``binaryFile`` source both keep
    zero-byte and hidden (``_``/``.``) files, so that those reach the quarantine too.
    Where the JVM is not reachable (Spark Connect) URIs fall back to ``binaryFile``.
    """
    from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

    location = normalize_archive(archive)
    schema = StructType(
        [
            StructField("path", StringType(), False),
            StructField("file_size", LongType(), False),
            StructField("modification_time", TimestampType(), False),
        ]
    )
    if "://" not in location:  # local folder or FUSE mount (/Volumes): a plain walk, much faster than py4j
        return spark.createDataFrame(list(_walk_local(location)), schema)
    jvm = getattr(spark, "_jvm", None) or getattr(spark.sparkContext, "_jvm", None)
    if jvm is None:  # Spark Connect: no driver JVM access
        reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
        return reader.load(location).selectExpr("path", "length AS file_size", "modificationTime AS modification_time")
    hadoop_path = jvm.org.apache.hadoop.fs.Path(location if "://" in location else Path(location).as_uri())
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    rows = []
    files = fs.listFiles(hadoop_path, True)
    while files.hasNext():
        status = files.next()
        if status.isFile():
            rows.append(
                (
                    status.getPath().toString(),
                    int(status.getLen()),
                    datetime.fromtimestamp(status.getModificationTime() / 1000, tz=UTC),
                )
            )
    return spark.createDataFrame(rows, schema)


def _walk_local(root: str):
    """(``file:`` URI, size, modification time) of every file below ``root``, links not followed."""
    if os.path.isfile(root):
        stat = os.stat(root)
        yield f"file:{root}", stat.st_size, _mtime(stat)
        return
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    yield f"file:{entry.path}", stat.st_size, _mtime(stat)


def _mtime(stat: os.stat_result) -> datetime:
    """Modification time at millisecond precision, as Hadoop's file system reports it."""
    return datetime.fromtimestamp((stat.st_mtime_ns // 1_000_000) / 1000, tz=UTC)


def pack_tasks(sizes: list[int], *, partition_bytes: int, partition_files: int, min_tasks: int) -> list[int]:
    """Assign files to tasks balanced by bytes (longest-processing-time-first).

    Parameters
    ----------
    sizes
        Stored size of each file, bytes.
    partition_bytes
        Target stored bytes per task.
    partition_files
        Most files per task.
    min_tasks
        At least this many tasks when there are enough files (e.g. 2 x cores).

    Returns
    -------
    list[int]
        Task index of each file, in input order; indices run from 0 to n_tasks - 1.

    Examples
    --------
    >>> pack_tasks([10, 1, 1, 8], partition_bytes=10, partition_files=10, min_tasks=2)
    [0, 1, 1, 1]
    """
    if not sizes:
        return []
    total = sum(sizes)
    n_tasks = max(math.ceil(total / partition_bytes), math.ceil(len(sizes) / partition_files), min_tasks)
    n_tasks = min(n_tasks, len(sizes))
    heap = [(0, 0, task) for task in range(n_tasks)]  # (bytes, files, task)
    assignment = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        load, files, task = heapq.heappop(heap)
        assignment[index] = task
        heapq.heappush(heap, (load + sizes[index], files + 1, task))
    return assignment
