"""The local Spark + Delta stack: a broken jar set-up must fail here, loudly."""

import json
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import functions as F

import radlake.tables
from radlake.cli import main
from radlake.errors import ConfigError, SetupError
from radlake.tables import Table, TableRef, table_ref
from radlake.tracking import configure_mlflow

# The JVM itself (class archives, jars): Spark tests, also where no session fixture is used.
pytestmark = pytest.mark.spark


def test_delta_round_trip_with_time_travel(spark, config):
    path = str(config.storage.warehouse_dir / "roundtrip")
    spark.range(5).write.format("delta").mode("overwrite").save(path)
    spark.range(5, 12).write.format("delta").mode("append").save(path)
    assert spark.read.format("delta").load(path).count() == 12
    v0 = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert sorted(r.id for r in v0.collect()) == [0, 1, 2, 3, 4]


def test_ensure_creates_a_table_once_and_says_so(spark, config):
    ref = table_ref(config, Table.SPLITS)
    schema = "study_instance_uid string, split string"
    assert ref.ensure(spark, spark.createDataFrame([], schema).schema) is True
    assert ref.read(spark).count() == 0
    spark.createDataFrame([("1.2.3", "train")], schema).write.format("delta").mode("append").save(ref.path)
    assert ref.ensure(spark, spark.createDataFrame([], schema).schema) is False
    assert ref.read(spark).count() == 1


def test_empty_frame_has_the_schema_and_is_pruned_from_joins_and_unions_at_planning(spark):
    from pyspark.sql import functions as F

    from radlake.ingest.schema import INSTANCES
    from radlake.spark import empty_frame

    empty = empty_frame(spark, INSTANCES)
    assert [(f.name, f.dataType) for f in empty.schema.fields] == [(f.name, f.dataType) for f in INSTANCES.fields]
    assert empty.count() == 0
    rows = spark.range(3).select(F.col("id").cast("string").alias("sop_instance_uid"))
    joined = rows.join(empty.select("sop_instance_uid", "content_sha256"), "sop_instance_uid", "left")
    union = empty.select("sop_instance_uid").unionByName(rows)
    for query in (joined, union):
        plan = query._jdf.queryExecution().optimizedPlan().toString()
        assert "Join" not in plan and "Union" not in plan and "LogicalRDD" not in plan, plan
    assert sorted(r.sop_instance_uid for r in joined.collect()) == ["0", "1", "2"]
    assert joined.where("content_sha256 IS NULL").count() == 3


def test_local_frame_holds_the_rows_as_created_and_reads_them_without_python_tasks(spark):
    from datetime import UTC, datetime

    from radlake.data.schema import SPLITS
    from radlake.spark import local_frame

    when = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    rows = [("1.2.3", "train", 7, when, "run-a"), ("1.2.4", None, None, None, "run-a")]
    frame = local_frame(spark, rows, SPLITS)
    assert frame.schema == SPLITS
    assert frame.collect() == spark.createDataFrame(rows, SPLITS).collect()
    assert local_frame(spark, [(1, b"\x00\xff", 2)], "n int, data binary, x double").first() == (1, b"\x00\xff", 2.0)
    assert local_frame(spark, [], "n int").count() == 0
    # pyspark's createDataFrame(list) reads its rows through a Python RDD, so through Python workers
    lineage = [f._jdf.queryExecution().toRdd().toDebugString() for f in (frame, spark.createDataFrame(rows, SPLITS))]
    assert "PythonRDD" not in lineage[0] and "PythonRDD" in lineage[1], lineage


def test_tables_are_readable_without_spark(spark, config):
    """Any Delta reader (here delta-rs, no JVM) reads what radlake writes."""
    from deltalake import DeltaTable

    ref = table_ref(config, Table.QUARANTINE)
    spark.createDataFrame([("a.dcm", "bad")], "path string, reason string").write.format("delta").mode(
        "overwrite"
    ).save(ref.path)
    table = DeltaTable(ref.path)
    assert table.version() == 0
    assert table.to_pyarrow_table().column("reason").to_pylist() == ["bad"]


def test_tables_command_lists_every_table(spark, config, capsys):
    ref = table_ref(config, Table.SERIES)
    spark.range(3).write.format("delta").mode("overwrite").save(ref.path)
    spark.range(4).write.format("delta").mode("overwrite").save(ref.path)
    assert main(["tables", "--json", "--set", f"storage.root={config.storage.root}"]) == 0
    rows = {r["table"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {t.value for t in Table}
    assert rows["series"]["version"] == 1 and rows["series"]["rows"] == 4
    assert rows["images"]["version"] is None
    assert main(["tables", "--set", f"storage.root={config.storage.root}"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    end = header.index("rows") + len("rows")  # the columns line up below the header, long names too
    assert len(lines) == len(Table) and all(line[end - 1] in "0123456789-" and line[end] == " " for line in lines)


def test_unity_catalog_names(config):
    uc = config.model_copy(update={"storage": config.storage.model_copy(update={"catalog": "main"})})
    assert table_ref(uc, "images").name == "main.radlake.images"
    with pytest.raises(ConfigError, match="Unknown table 'imagez'"):
        table_ref(config, "imagez")


def test_missing_jars_is_a_setup_error(config, tmp_path, monkeypatch):
    from pyspark.sql import SparkSession

    from radlake.config import load_config
    from radlake.spark import get_spark

    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    bad = load_config(overrides=[f"spark.jars_dir={tmp_path}"])
    with pytest.raises(SetupError, match="Delta Lake jars not found"):
        get_spark(bad)


def test_mlflow_sqlite_store_logs_and_reads_back(config):
    experiment_id = configure_mlflow(config)
    assert mlflow.get_tracking_uri().startswith("sqlite:///")
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        mlflow.log_metric("m", 0.5)
        mlflow.log_text("hello", "note.txt")
    got = mlflow.get_run(run.info.run_id)
    assert got.info.experiment_id == experiment_id
    assert got.data.metrics["m"] == 0.5
    assert str(config.storage.root_dir / "mlartifacts") in got.info.artifact_uri
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "hello"


def test_local_driver_runs_with_the_configured_java_options(spark, config):
    """The driver JVM is launched with ``spark.driver_java_options`` (default: the throughput collector, C1 only)."""
    jvm = spark.sparkContext._jvm
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:+UseParallelGC" in config.spark.driver_java_options.split()
    for option in config.spark.driver_java_options.split():
        assert option in arguments
    collectors = [bean.getName() for bean in jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()]
    assert "PS Scavenge" in collectors, collectors


def test_the_local_driver_maps_the_class_archive_built_at_set_up(spark, config):
    """``make setup`` built the archive for this Java and these jars; the session's JVM maps it."""
    from radlake.spark import _delta_jars, class_archive_path
    from radlake.workflow.class_archive import build_class_archive

    jars_dir = config.spark.resolved_jars_dir
    archive = class_archive_path(jars_dir, _delta_jars(jars_dir))
    if archive is None or not archive.is_file():
        pytest.skip(f"no class archive at {archive}: `radlake setup-jars` could not build one on this machine")
    jvm = spark.sparkContext._jvm
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert f"-XX:SharedArchiveFile={archive}" in arguments
    assert "sharing" in jvm.java.lang.System.getProperty("java.vm.info")
    assert build_class_archive(config) == archive  # idempotent: nothing rebuilt


def test_the_class_archive_is_named_by_the_java_build_and_the_jars(tmp_path, monkeypatch):
    from radlake.spark import class_archive_path

    jar = tmp_path / "delta-spark_x.jar"
    jar.write_bytes(b"a" * 10)
    first = class_archive_path(tmp_path, [jar])
    assert first is not None and first.parent == tmp_path and first.name.startswith("classes-")
    assert class_archive_path(tmp_path, [jar]) == first
    jar.write_bytes(b"a" * 11)  # another build of the jar
    assert class_archive_path(tmp_path, [jar]) != first
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java-here"))
    assert class_archive_path(tmp_path, [jar]) is None


def test_a_failed_class_archive_build_names_why_and_leaves_nothing(tmp_path):
    from radlake.config import load_config
    from radlake.workflow.class_archive import build_class_archive

    bad = load_config(overrides=[f"spark.jars_dir={tmp_path}"])  # no Delta jars: the building session cannot start
    with pytest.raises(SetupError, match="the JVM wrote no class archive.*Delta Lake jars not found"):
        build_class_archive(bad)
    assert list(tmp_path.iterdir()) == []


def _row_groups(path) -> list[list[int]]:
    """Rows of each row group, per Parquet file of the folder (sorted)."""
    import pyarrow.parquet as pq

    files = sorted(Path(path).glob("*.parquet"))
    return sorted(
        [pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).num_row_groups)]
        for f in files
    )


def _rows(spark, n: int):
    """``n`` rows of 16 KB each, in one partition (one file per write)."""
    return spark.range(n, numPartitions=1).selectExpr("id", "unhex(repeat(sha2(cast(id AS string), 256), 512)) AS b")


@pytest.mark.parametrize("kind", ["delta_api", "sql"])
def test_table_properties_lay_out_the_row_groups_of_every_later_write(spark, tmp_path, monkeypatch, kind):
    if kind == "sql":  # the Spark Connect path: CREATE TABLE ... TBLPROPERTIES, ALTER TABLE
        monkeypatch.setattr(radlake.tables, "is_connect", lambda spark: True)
    limit = "parquet.block.row.count.limit"
    ref = TableRef(Table.IMAGES, None, str(tmp_path / "t"))
    assert ref.ensure(spark, _rows(spark, 0).schema, properties={limit: "4"}) is True
    ref.append(_rows(spark, 10))
    assert _row_groups(ref.path) == [[4, 4, 2]]
    assert ref.set_properties(spark, {limit: "4"}) == {}  # no commit when nothing changes
    version = ref.version(spark)
    assert ref.set_properties(spark, {limit: "3"}) == {limit: "3"}
    assert ref.version(spark) == version + 1
    ref.append(_rows(spark, 10))
    assert _row_groups(ref.path) == [[3, 3, 3, 1], [4, 4, 2]]  # the earlier file keeps its layout


def test_a_scan_splits_between_row_groups_into_tasks_per_slot(spark, tmp_path):
    from radlake.spark import default_parallelism, scan_tasks_per_slot

    path = str(tmp_path / "t")
    ref = TableRef(Table.IMAGES, None, path)
    ref.ensure(spark, _rows(spark, 0).schema, properties={"parquet.block.row.count.limit": "4"})
    ref.append(_rows(spark, 96))  # one file, 24 row groups of 64 KB

    def rows_per_task() -> list[int]:
        df = spark.read.format("delta").load(path)
        return [r[0] for r in df.groupBy(F.spark_partition_id()).count().select("count").collect()]

    key = "spark.sql.files.minPartitionNum"
    spark.conf.set("spark.sql.files.openCostInBytes", "1")  # as if the table were large: its bytes decide
    try:
        before = rows_per_task()
        with scan_tasks_per_slot(spark, 4) as tasks:
            assert spark.conf.get(key) == str(tasks) == str(4 * default_parallelism(spark))
            during = rows_per_task()
        assert spark.conf.get(key, None) is None  # unset again, as it was
    finally:
        spark.conf.unset("spark.sql.files.openCostInBytes")
    assert len(before) <= default_parallelism(spark)
    assert sum(during) == 96 and len(during) >= tasks - 1
    assert max(during) <= 96 / tasks + 4  # none over its share by more than one row group
