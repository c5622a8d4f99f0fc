"""The Spark session: Databricks' own when there is one, else a local Delta-enabled session.

On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set) :func:`get_spark` returns the
cluster's active session and never builds one. Locally it builds ``local[*]`` with
the Delta Lake extensions and catalog, the Delta jars that ``make setup`` fetched
into ``<python prefix>/share/radlake/jars`` (so nothing is downloaded at run time), a warehouse
under ``<storage.root>`` and settings sized for a laptop.

The jars are fetched once, at set-up, by :func:`fetch_delta_jars` for the coordinate
that :func:`delta_maven_coordinate` derives from the installed pyspark and
delta-spark (the naming of ``delta.pip_utils.configure_spark_with_delta_pip``),
reading ``~/.m2/repository`` before Maven Central as Spark's resolver does. Spark's
own Ivy resolver is not used for this: it also tries repos.spark-packages.org for
every parent POM and fails where only Maven Central is reachable.

Example
-------
>>> from radlake.config import load_config
>>> spark = get_spark(load_config())          # doctest: +SKIP
>>> spark.range(3).count()                    # doctest: +SKIP
3

"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from radlake.errors import SetupError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from radlake.config import RadlakeConfig

#: Maven groups whose jars radlake loads. Spark already ships Scala, Hadoop, Parquet, Jackson
#: and logging; a second copy of those from Delta's transitive dependencies only risks conflicts.
DELTA_JAR_GROUPS = frozenset({"io.delta", "io.unitycatalog"})
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def on_databricks() -> bool:
    """True inside a Databricks runtime (job cluster, all-purpose cluster or notebook)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def delta_maven_coordinate() -> str:
    """Maven coordinate of the Delta jar matching the installed pyspark and delta-spark.

    Returns
    -------
    str
        ``io.delta:delta-spark_<spark major.minor>_2.13:<delta-spark version>``.
    """
    spark_major_minor = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_major_minor}_2.13:{version('delta-spark')}"


def fetch_delta_jars(jars_dir: str | os.PathLike[str], *, repository: str | None = None) -> list[Path]:
    """Fetch the Delta jars of the installed versions into ``jars_dir`` (done by ``make setup``).

    Walks the Maven POMs from :func:`delta_maven_coordinate` through their compile and
    runtime dependencies, keeping the groups in :data:`DELTA_JAR_GROUPS`. Each POM and
    jar is taken from the local Maven repository (``~/.m2/repository``) when present,
    else downloaded from ``repository`` and checked against its published SHA-1.
    Idempotent: returns at once when the jars of the current versions are in place.

    Parameters
    ----------
    jars_dir
        Destination folder, created if missing.
    repository
        Maven repository base URL; default ``$RADLAKE_MAVEN_REPO`` or Maven Central.

    Returns
    -------
    list[Path]
        The jar files in ``jars_dir``.

    Raises
    ------
    SetupError
        If a POM or jar cannot be fetched or fails its checksum.
    """
    dest = Path(jars_dir)
    coordinate = delta_maven_coordinate()
    marker = dest / "COORDINATE"
    if marker.is_file() and marker.read_text().strip() == coordinate and _delta_jars(dest):
        return _delta_jars(dest)
    repo = (repository or os.environ.get("RADLAKE_MAVEN_REPO") or MAVEN_CENTRAL).rstrip("/")
    group, artifact, version_ = coordinate.split(":")
    pending, seen = [(group, artifact, version_)], set()
    staged = Path(tempfile.mkdtemp(prefix="radlake-jars-"))
    try:
        while pending:
            gav = pending.pop()
            if gav in seen:
                continue
            seen.add(gav)
            pom = ElementTree.fromstring(_maven_file(repo, gav, "pom"))
            for dep in pom.iterfind("m:dependencies/m:dependency", _POM_NS):
                dep_group = dep.findtext("m:groupId", "", _POM_NS)
                scope = dep.findtext("m:scope", "compile", _POM_NS)
                optional = dep.findtext("m:optional", "false", _POM_NS) == "true"
                if dep_group in DELTA_JAR_GROUPS and scope in {"compile", "runtime"} and not optional:
                    pending.append(
                        (dep_group, dep.findtext("m:artifactId", "", _POM_NS), dep.findtext("m:version", "", _POM_NS))
                    )
            (staged / f"{gav[1]}-{gav[2]}.jar").write_bytes(_maven_file(repo, gav, "jar"))
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(staged, dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    marker.write_text(coordinate + "\n")
    return _delta_jars(dest)


def _maven_file(repo: str, gav: tuple[str, str, str], extension: str) -> bytes:
    """One POM or jar: from ``~/.m2/repository`` if there, else downloaded and SHA-1 checked."""
    group, artifact, version_ = gav
    relative = f"{group.replace('.', '/')}/{artifact}/{version_}/{artifact}-{version_}.{extension}"
    local = Path.home() / ".m2" / "repository" / relative
    if local.is_file():
        return local.read_bytes()
    url = f"{repo}/{relative}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
        with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
            expected = response.read().decode().split()[0].strip().lower()
    except OSError as exc:
        raise SetupError(f"Could not download {url}: {exc}") from exc
    if hashlib.sha1(data).hexdigest() != expected:
        raise SetupError(f"Checksum mismatch for {url}: expected SHA-1 {expected}.")
    return data


def _delta_jars(jars_dir: Path) -> list[Path]:
    return sorted(jars_dir.glob("*.jar")) if jars_dir.is_dir() else []


def get_spark(config: RadlakeConfig) -> SparkSession:
    """Return the Spark session radlake runs on.

    Parameters
    ----------
    config
        Supplies ``spark.*`` settings and ``storage.root`` (local mode only).

    Returns
    -------
    SparkSession
        Databricks' active session there; locally an existing active session if
        one is running in this process, else a new Delta-enabled local session.

    Raises
    ------
    SetupError
        Locally, if the Delta jars are missing (run ``make setup``).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_databricks():
        return SparkSession.builder.getOrCreate()

    jars = _delta_jars(config.spark.resolved_jars_dir)
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise SetupError(
            f"Delta Lake jars not found in {config.spark.resolved_jars_dir}. Run `make setup` "
            f"(or `radlake setup-jars`) once with network access to fetch {delta_maven_coordinate()}."
        )
    # Executors must run the same interpreter (and so the same installed packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    root = config.storage.root_dir
    root.mkdir(parents=True, exist_ok=True)
    sc = config.spark
    builder = (
        SparkSession.builder.master(sc.master)
        .appName("radlake")
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", str(config.storage.warehouse_dir))
        .config("spark.driver.memory", sc.driver_memory)
        .config(
            "spark.driver.extraJavaOptions", f"-Dderby.system.home={root / 'derby'} {sc.driver_java_options}".strip()
        )
        .config("spark.local.dir", str(root / "spark-tmp"))
        .config("spark.sql.shuffle.partitions", str(sc.shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(sc.arrow_batch_size))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
    )
    for key, value in sc.extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def empty_frame(spark: SparkSession, schema: StructType) -> DataFrame:
    """An empty DataFrame of ``schema`` that Spark's optimizer knows to be empty.

    ``spark.createDataFrame([], schema)`` is an RDD to Catalyst: every query that joins
    or unions it runs a job of Python tasks to find it empty and shuffles for the join.
    This one plans as an empty ``LocalRelation``, so joins and unions with it are pruned
    at planning time. Every column is nullable.
    """
    from pyspark.sql import functions as F

    columns = (F.lit(None).cast(field.dataType).alias(field.name) for field in schema.fields)
    return spark.range(1).select(*columns).where(F.lit(False))
