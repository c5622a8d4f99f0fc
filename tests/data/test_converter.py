"""The Parquet cache: keyed by plan, schema and Delta versions, written atomically, reused without a Spark job."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from radlake.data.cache_entry import META_FILE, read_meta
from radlake.data.converter import (
    TMP_PREFIX,
    SparkDatasetConverter,
    cache_key,
    clean_cache,
    make_spark_converter,
)

ROWS = 103
EXTRA = 20
ROW_GROUP_BYTES = 16 << 10  # ~16 rows of 1 KB per row group: several row groups per file


def _frame(spark, start: int, stop: int):
    """Rows ``start .. stop - 1``: an id and 1,000 pseudo-random (incompressible) bytes."""
    return spark.range(start, stop, numPartitions=2).withColumn(
        "payload", F.expr("unhex(concat_ws('', transform(sequence(0, 15), k -> sha2(concat(id, '.', k), 512))))")
    )


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory) -> str:
    """A Delta table: version 0 holds ids 0..102, version 1 adds 20 more."""
    path = str(tmp_path_factory.mktemp("converter") / "table")
    _frame(spark, 0, ROWS).write.format("delta").save(path)
    _frame(spark, ROWS, ROWS + EXTRA).write.format("delta").mode("append").save(path)
    return path


def _view(spark, path: str, version: int):
    return spark.read.format("delta").option("versionAsOf", version).load(path).where("id >= 0")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def entry(spark, table, cache_dir) -> SparkDatasetConverter:
    return make_spark_converter(
        _view(spark, table, 0), cache_dir=cache_dir, source_versions={"t": 0}, row_group_bytes=ROW_GROUP_BYTES
    )


def test_writes_a_complete_entry_with_metadata(entry, cache_dir):
    assert not entry.reused
    assert entry.path == cache_dir / entry.key and len(entry.key) == 64
    assert len(entry) == entry.num_rows == ROWS
    assert entry.source_versions == {"t": 0}
    meta = json.loads((entry.path / META_FILE).read_text())
    assert meta["key"] == entry.key and meta["num_rows"] == ROWS and meta["source_versions"] == {"t": 0}
    assert [f["name"] for f in meta["schema"]["fields"]] == ["id", "payload"]
    assert meta["created_at"].endswith("+00:00")
    counts = [n for f in meta["files"] for n in f["rows"]]
    assert sum(counts) == ROWS and len(counts) >= 4, counts  # row groups follow row_group_bytes
    ids = sorted(
        i for f in meta["files"] for i in pq.read_table(entry.path / f["file"], columns=["id"])["id"].to_pylist()
    )
    assert ids == list(range(ROWS))
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(TMP_PREFIX)]  # renamed into place


def test_same_query_and_versions_reuse_the_entry(spark, table, cache_dir, entry):
    before = {p.name: p.stat().st_mtime_ns for p in entry.path.iterdir()}
    again = make_spark_converter(
        _view(spark, table, 0), cache_dir=cache_dir, source_versions={"t": 0}, row_group_bytes=ROW_GROUP_BYTES
    )
    assert again.reused and again.key == entry.key and again.path == entry.path and len(again) == ROWS
    assert {p.name: p.stat().st_mtime_ns for p in entry.path.iterdir()} == before  # nothing rewritten


@pytest.mark.parametrize("source", ["delta", "in_memory"])
def test_reuse_runs_no_spark_job(spark, table, tmp_path, source):
    if source == "delta":
        df = _view(spark, table, 1)
    else:
        df = spark.createDataFrame([(i, bytes([i % 256]) * 10) for i in range(ROWS)], "id long, payload binary")
    first = make_spark_converter(df, cache_dir=tmp_path)
    df = _view(spark, table, 1) if source == "delta" else df  # a new DataFrame of the same query
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("radlake-reuse-probe", "must stay empty")
    try:
        again = make_spark_converter(df, cache_dir=tmp_path)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert again.reused and again.key == first.key and not first.reused
    assert list(tracker.getJobIdsForGroup("radlake-reuse-probe")) == []


def test_a_new_version_or_other_data_gives_a_new_key(spark, table, cache_dir, entry, tmp_path):
    newer = make_spark_converter(
        _view(spark, table, 1), cache_dir=cache_dir, source_versions={"t": 1}, row_group_bytes=ROW_GROUP_BYTES
    )
    assert not newer.reused and newer.key != entry.key and len(newer) == ROWS + EXTRA
    # The same query claimed at another version, another query, another table with the same schema:
    assert cache_key(_view(spark, table, 0), {"t": 5}) != entry.key
    assert cache_key(_view(spark, table, 0).where("id < 50"), {"t": 0}) != entry.key
    assert cache_key(_view(spark, table, 0), {"t": 0}) == entry.key
    # Another Delta table with the same schema and rows, read by the same query, without source_versions:
    twin = str(tmp_path / "twin")
    _view(spark, table, 0).write.format("delta").save(twin)
    assert cache_key(_view(spark, twin, 0)) != cache_key(_view(spark, table, 0))
    a = spark.createDataFrame([(1, b"a")], "id long, payload binary")
    b = spark.createDataFrame([(2, b"a")], "id long, payload binary")
    assert cache_key(a) != cache_key(b)


def test_an_incomplete_entry_is_written_again(spark, table, entry, tmp_path):
    shutil.copytree(entry.path, tmp_path / entry.key)
    (tmp_path / entry.key / META_FILE).unlink()  # as if the metadata had never been written
    with pytest.raises(FileNotFoundError):
        read_meta(tmp_path / entry.key)
    redone = make_spark_converter(
        _view(spark, table, 0), cache_dir=tmp_path, source_versions={"t": 0}, row_group_bytes=ROW_GROUP_BYTES
    )
    assert not redone.reused and redone.key == entry.key and read_meta(redone.path)["num_rows"] == ROWS


def test_clean_cache_keeps_only_the_given_keys(tmp_path):
    keys = ["a" * 64, "b" * 64, "c" * 64]
    for key in keys:
        (tmp_path / key).mkdir()
        (tmp_path / key / META_FILE).write_text("{}")
    leftover = tmp_path / f"{TMP_PREFIX}{'d' * 64}-1234abcd"  # a killed write
    leftover.mkdir()
    (tmp_path / "notes").mkdir()  # not a cache entry: never touched
    assert clean_cache(tmp_path, older_than_seconds=3600) == []  # all too recent
    removed = clean_cache(tmp_path, keep=[keys[0]])
    assert removed == sorted([leftover, tmp_path / keys[1], tmp_path / keys[2]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([keys[0], "notes"])
    assert clean_cache(tmp_path / "missing") == []


def test_delete_and_argument_checks(spark, tmp_path):
    df = spark.createDataFrame([(1, b"x")], "id long, payload binary")
    converter = make_spark_converter(df, cache_dir=tmp_path / "c")
    converter.delete()
    assert not converter.path.exists()
    with pytest.raises(ValueError, match="cache_dir"):
        make_spark_converter(df, cache_dir="s3://bucket/cache")
    with pytest.raises(ValueError, match="row_group_bytes"):
        make_spark_converter(df, cache_dir=tmp_path, row_group_bytes=0)
