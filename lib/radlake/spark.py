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

Set-up also builds a JVM class archive (class-data sharing, ``.jsa``) for this machine's
Java and jars, by running a small ingest in a JVM that writes the classes it loaded at
exit (:func:`build_class_archive`). A local session maps that archive instead of finding,
parsing and verifying thousands of Spark and Delta classes in ~300 jars again: measured
on 2 cores, session start 5.7 -> 2.9 s (a 10,000-file ingest's own time changed within
this machine's noise, 0 to 1 s). The archive is named by a
fingerprint of the Java build, the Python environment and the jars
(:func:`class_archive_path`), so another Java or other jars simply run without it.

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
import subprocess
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
    java_options = f"-Dderby.system.home={root / 'derby'} {sc.driver_java_options}".strip()
    archive = class_archive_path(sc.resolved_jars_dir, jars) if sc.class_archive else None
    if archive is not None and archive.is_file():
        java_options += f" -XX:SharedArchiveFile={archive}"
    builder = (
        SparkSession.builder.master(sc.master)
        .appName("radlake")
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", str(config.storage.warehouse_dir))
        .config("spark.driver.memory", sc.driver_memory)
        .config("spark.driver.extraJavaOptions", java_options)
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


def _java_home() -> Path | None:
    """The Java installation pyspark launches: ``$JAVA_HOME``, else the ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else (Path(found) if (found := shutil.which("java")) else None)
    if java is None or not java.is_file():
        return None
    return Path(os.path.realpath(java)).parent.parent


def class_archive_path(jars_dir: Path, jars: list[Path]) -> Path | None:
    """Where the class archive for this Java, Python environment and ``jars`` lives, or None without Java.

    ``<jars_dir>/classes-<fingerprint>.jsa``. The fingerprint covers what the JVM checks
    before it maps an archive (its own build, the class path): the Java installation's
    path and its ``libjvm`` file (size, time), the Python prefix (pyspark's jars are on the
    class path by absolute path) and pyspark's version, and each of ``jars`` (name, size).
    """
    home = _java_home()
    if home is None:
        return None
    parts = [str(home), sys.prefix, version("pyspark")]
    for libjvm in sorted(home.glob("lib/*/libjvm.*")):
        stat = libjvm.stat()
        parts.append(f"{libjvm.relative_to(home)}:{stat.st_size}:{stat.st_mtime_ns}")
    parts += [f"{jar.name}:{jar.stat().st_size}" for jar in sorted(jars)]
    fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return Path(jars_dir) / f"classes-{fingerprint}.jsa"


def build_class_archive(config: RadlakeConfig, *, timeout_s: float = 900.0) -> Path | None:
    """Build the class archive for this machine (done by ``make setup``); return its path, or None.

    Runs ``python -m radlake.spark <staging file> <jars dir> <java options>`` (:func:`_class_archive_workload`: a
    small ingest of a synthetic archive, then its no-op rerun) in a JVM started with
    ``-XX:ArchiveClassesAtExit``, and moves the file into place only once that JVM has
    exited cleanly: a truncated archive would crash every JVM that maps it (SIGBUS).
    Older archives in the folder are removed. Idempotent: returns at once if the archive
    for the current fingerprint exists.

    Returns None if there is no Java or the option is off (``spark.class_archive: false``).

    Raises
    ------
    SetupError
        If the JVM wrote no archive (the workload failed, or this Java cannot dump one),
        naming why. Nothing is changed: sessions start without an archive, as before.
    """
    sc = config.spark
    jars = _delta_jars(sc.resolved_jars_dir)
    target = class_archive_path(sc.resolved_jars_dir, jars) if sc.class_archive else None
    if target is None or target.is_file():
        return target
    staged = target.with_name(f"{target.stem}.{os.getpid()}.part")
    try:
        command = [
            sys.executable,
            "-m",
            "radlake.spark",
            str(staged),
            str(sc.resolved_jars_dir),
            sc.driver_java_options,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SetupError(f"the JVM wrote no class archive (its build took over {timeout_s:g} s)") from None
        if done.returncode != 0 or not staged.is_file() or staged.stat().st_size == 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if "Traceback" not in line]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise SetupError(f"the JVM wrote no class archive ({reason})")
        for old in target.parent.glob("classes-*.jsa"):
            old.unlink()
        os.replace(staged, target)
        return target
    finally:
        staged.unlink(missing_ok=True)


def _class_archive_workload(staged: Path, jars_dir: str, java_options: str) -> None:
    """What the archive-building JVM runs: a small ingest (tables created, headers, pixels, stacks) and its rerun.

    The JVM writes ``staged`` when it exits, so this waits for the JVM process itself,
    not only for the session to stop.
    """
    from pyspark import SparkContext

    from radlake.config import load_config
    from radlake.ingest import run_ingest
    from radlake.synth import SynthConfig, generate_archive

    with tempfile.TemporaryDirectory(prefix="radlake-class-archive-") as tmp:
        archive = Path(tmp) / "archive"
        generate_archive(archive, SynthConfig(studies=1, image_size=128, seed=1))
        config = load_config(
            overrides=[
                f"storage.root={Path(tmp) / 'root'}",
                "spark.class_archive=false",
                f"spark.jars_dir={jars_dir}",
                f"spark.driver_java_options={java_options} -XX:ArchiveClassesAtExit={staged}",
            ]
        )
        os.environ.setdefault("RADLAKE_DEID_KEY", "class-archive-build")
        spark = get_spark(config)
        run_ingest(spark, config, archive=str(archive))
        run_ingest(spark, config, archive=str(archive))
        jvm = SparkContext._gateway.proc  # the JVM writes the archive as it exits
        spark.stop()
        jvm.stdin.close()  # pyspark's JVM exits when its standard input closes
        jvm.wait()


if __name__ == "__main__":
    _class_archive_workload(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
