"""radlake's Spark Connect code paths, run on the classic local session.

A Spark Connect session has no SparkContext: radlake then ships task lists as rows, counts
from what it wrote, lists URIs with ``binaryFile`` and reaches Delta tables through SQL
(:mod:`radlake.spark`, :mod:`radlake.tables`). Every one of those paths also runs on a
classic session, so these tests take them there, by making the session-kind check say
"Spark Connect", and compare with the classic paths. ``make connect-test`` runs them
against a real Spark Connect server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import radlake.spark
import radlake.tables
from dicom_files import TEST_FILES, rle_with_a_cut_frame
from radlake.spark import counters, default_parallelism, list_files, map_task_lists
from radlake.tables import Table, TableRef


@pytest.fixture
def as_connect(monkeypatch):
    """Make radlake take its Spark Connect paths (the session itself stays classic)."""
    monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: True)
    monkeypatch.setattr(radlake.tables, "is_connect", lambda spark: True)


def _task_rows(spark, lists):
    """(partition, task list) of every list that ``map_task_lists`` ran."""
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL("partition int, records array<string>")

    def task(batches, tasks):  # defined here: pickled by value for the Python workers
        import pyarrow as pa
        from pyspark import TaskContext

        from radlake.spark import task_lists_of

        out = pa.schema([("partition", pa.int32()), ("records", pa.list_(pa.string()))])
        for records in task_lists_of(batches, tasks):
            row = {"partition": TaskContext.get().partitionId(), "records": list(records)}
            yield pa.RecordBatch.from_pylist([row], schema=out)

    result, release = map_task_lists(spark, lists, task, schema)
    rows = [(r["partition"], r["records"]) for r in result.collect()]
    release()
    return rows


@pytest.mark.parametrize("kind", ["classic", "connect"])
def test_each_task_list_runs_once_in_a_task_of_its_own(spark, monkeypatch, kind):
    if kind == "connect":
        monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: True)
    lists = [["a"], ["b", "c"], ["d"], [], ["e", "f", "g"]]
    rows = _task_rows(spark, lists)
    assert sorted(rows) == [(i, records) for i, records in enumerate(lists)]


def test_task_lists_must_not_be_empty(spark):
    with pytest.raises(ValueError, match="'lists'"):
        map_task_lists(spark, [], lambda batches, tasks: iter(()), "x int")


def test_connect_sessions_count_without_accumulators_and_plan_from_the_configuration(spark, config, as_connect):
    assert counters(spark, 2) is None
    assert default_parallelism(spark) == config.spark.shuffle_partitions  # no spark.default.parallelism set


def test_uris_are_listed_by_binary_file_over_connect(spark, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.dcm").write_bytes(b"a" * 10)
    (tmp_path / "sub" / "b.dcm").write_bytes(b"b" * 20)
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "_hidden.dcm").write_bytes(b"h")
    classic = sorted(list_files(spark, tmp_path.as_uri()))
    monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: True)
    connect = sorted(list_files(spark, tmp_path.as_uri()))
    assert [(Path(p).name, n) for p, n, _ in classic] == [
        ("_hidden.dcm", 1),
        ("a.dcm", 10),
        ("empty.dcm", 0),
        ("b.dcm", 20),
    ]
    assert connect == [row for row in classic if row[1] and "_hidden" not in row[0]]  # binaryFile: no hidden, no empty


def _exercise(spark, ref: TableRef) -> tuple[list[int], list[tuple]]:
    """Create, merge (insert, upsert, update only, delete and insert) into ``ref``; return its versions and rows."""
    schema = spark.createDataFrame([], "k string, v int, note string").schema
    assert ref.exists(spark) is False
    assert ref.ensure(spark, schema) is True
    assert ref.exists(spark) is True and ref.ensure(spark, schema) is False
    versions = [ref.version(spark)]
    rows = spark.createDataFrame([("a", 1, "x"), ("b", 2, "y")], schema)
    ref.merge(spark, rows, keys=["k"])
    ref.merge(spark, rows, keys=["k"])  # idempotent
    versions.append(ref.version(spark))
    upsert = spark.createDataFrame([("b", 20, "z"), ("c", 3, "w")], schema)
    ref.merge(spark, upsert, keys=["k"], update_columns=["v"])
    ref.merge(
        spark,
        spark.createDataFrame([("a", 10, "q"), ("d", 4, "r")], schema),
        keys=["k"],
        update_columns=["note"],
        insert=False,
    )
    actions = spark.createDataFrame(
        [("a", None, None, "delete"), ("e", 5, "new", "insert"), ("c", 30, "kept", "keep")],
        "k string, v int, note string, _action string",
    )
    ref.merge(
        spark,
        actions,
        keys=["k"],
        delete_when="s._action = 'delete'",
        insert_when="s._action = 'insert'",
        insert_columns=["k", "v", "note"],
    )
    versions.append(ref.version(spark))
    return versions, sorted(tuple(r) for r in ref.read(spark).collect())


def test_tables_through_sql_match_the_delta_api(spark, config, monkeypatch, tmp_path):
    classic = _exercise(spark, TableRef(Table.SPLITS, None, str(tmp_path / "classic")))
    monkeypatch.setattr(radlake.tables, "is_connect", lambda spark: True)
    sql = _exercise(spark, TableRef(Table.SPLITS, None, str(tmp_path / "sql")))
    assert sql == classic
    assert classic[1] == [("b", 20, "y"), ("c", 3, "w"), ("e", 5, "new")]
    with pytest.raises(ValueError, match="No Delta table"):
        TableRef(Table.SPLITS, None, str(tmp_path / "none")).version(spark)


def test_ingest_through_the_connect_paths_equals_the_classic_ingest(spark, test_settings, tmp_path, monkeypatch):
    """The whole job: task lists as rows, counts from the written images, tables through SQL."""
    from radlake.config import load_config
    from radlake.ingest.job import run_ingest
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    archive = tmp_path / "archive"
    small = {"sagittal_slices": 3, "axial_slices": 1, "coronal_slices": 1}
    generate_archive(archive / "synth", SynthConfig(studies=1, seed=4, image_size=128, zip_fraction=1.0, **small))
    (archive / "real").mkdir()
    shutil.copy(TEST_FILES / "MR_small.dcm", archive / "real" / "MR_small.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", archive / "real" / "MR_small_again.dcm")
    (archive / "real" / "frame5_cut.dcm").write_bytes(
        rle_with_a_cut_frame(5, entropy="radlake-connect-frame-cut")
    )  # frames 0-4 decode, then a failure
    monkeypatch.setenv("RADLAKE_DEID_KEY", "connect-paths")
    summaries, tables = {}, {}
    for kind in ("classic", "connect"):
        if kind == "connect":
            monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: True)
            monkeypatch.setattr(radlake.tables, "is_connect", lambda spark: True)
        base = [f"storage.root={tmp_path / kind}", *test_settings]
        base.append("ingest.image_rule=modality = 'MR'")  # also the Enhanced MR with a cut frame
        cfg = load_config(overrides=base)
        summary = run_ingest(spark, cfg, archive=str(archive)).as_dict()
        summaries[kind] = {k: v for k, v in summary.items() if k not in ("run_id", "seconds", "phase_seconds")}
        tables[kind] = {
            t: sorted(
                (
                    tuple(v for k, v in r.asDict(recursive=True).items() if not k.endswith(("_run_id", "_at")))
                    for r in radlake.tables.table_ref(cfg, t).read(spark).collect()
                ),
                key=repr,
            )
            for t in (Table.INSTANCES, Table.SERIES, Table.IMAGES, Table.QUARANTINE, Table.DUPLICATES)
        }
    assert summaries["connect"] == summaries["classic"]
    assert summaries["classic"]["duplicates"] == 1 and summaries["classic"]["new_images"] > 0
    assert any(r[8] == "pixels" for r in tables["classic"][Table.QUARANTINE])  # frame 5: the pass without counters
    assert tables["connect"] == tables["classic"]
