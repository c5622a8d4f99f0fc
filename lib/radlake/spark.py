"""The Spark session: Databricks' own when there is one, a Spark Connect client, or a local Delta-enabled session.

On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set) :func:`get_spark` returns the
cluster's active session and never builds one. With ``spark.remote`` (``sc://host:port``)
it builds a Spark Connect client of that server. A Spark Connect session (that one,
Databricks serverless, a standard-access cluster) has no SparkContext: no RDD, broadcast,
accumulator or JVM handle. This module is where radlake tells the two kinds apart
(:func:`is_connect`); each classic-only call sits here behind it, beside its Spark Connect
path: :func:`default_parallelism`, :func:`map_task_lists`, :func:`counters`,
:func:`list_files` (and Delta tables in :mod:`radlake.tables`).

Locally it builds ``local[*]`` with
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
import sys
import tempfile
import urllib.request
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from radlake.console import say
from radlake.errors import SetupError
from radlake.worker_daemon import PRELOAD_ENV

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

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


def get_spark(config: RadlakeConfig, *, worker_preload: Sequence[str] | None = None) -> SparkSession:
    """Return the Spark session radlake runs on.

    Parameters
    ----------
    config
        Supplies ``spark.*`` settings and ``storage.root`` (local mode only).
    worker_preload
        What the executors' Python worker daemon imports before it forks (a new local session
        or standalone cluster only; see :mod:`radlake.worker_daemon`). Default
        ``spark.worker_preload``; a command whose executors load no model (ingest, labels)
        passes less, so that its executors never hold torch. It cannot turn the daemon
        back on: with ``spark.worker_preload=[]`` pyspark's own daemon is kept.

    Returns
    -------
    SparkSession
        Databricks' active session there; else an existing active session if one is
        running in this process; else a Spark Connect client of ``spark.remote`` if set
        (with radlake's SQL settings for the session), else a new Delta-enabled local session.

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
    if config.spark.remote:
        # Only the session's SQL settings apply to a Spark Connect server (it owns master, memory and
        # jars); one the server will not change (static, or not allowed there) is skipped by pyspark.
        builder = SparkSession.builder.remote(config.spark.remote)
        for key, value in {**_session_settings(config), **config.spark.extra}.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()

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
    say("spark: starting a local session (%s, driver memory %s)", sc.master, sc.driver_memory)
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
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.databricks.delta.snapshotPartitions", "2")
    )
    for key, value in {
        **_session_settings(config),
        **_worker_daemon_settings(_preload_modules(sc.worker_preload, worker_preload)),
        **sc.extra,
    }.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _session_settings(config: RadlakeConfig) -> dict[str, str]:
    """The SQL settings radlake sets on every session it builds, local or Spark Connect."""
    sc = config.spark
    return {
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(sc.arrow_batch_size),
        "spark.sql.session.timeZone": "UTC",
    }


def _preload_modules(configured: list[str], requested: Sequence[str] | None) -> list[str]:
    """What the worker daemon imports: the command's list, else ``spark.worker_preload``.

    An empty ``spark.worker_preload`` (pyspark's own daemon, the user's choice) stays empty
    whatever a command asks.
    """
    if requested is None or not configured:
        return list(configured)
    return list(requested)


def _worker_daemon_settings(modules: list[str]) -> dict[str, str]:
    """Spark settings that make :mod:`radlake.worker_daemon` the executors' Python daemon, importing ``modules``.

    The module list travels as an executor environment variable, which Spark sets on the
    daemon's process (local sessions and cluster executors alike). No modules: pyspark's own daemon.
    """
    if not modules:
        return {}
    return {
        "spark.python.daemon.module": "radlake.worker_daemon",
        f"spark.executorEnv.{PRELOAD_ENV}": ",".join(modules),
    }


@contextmanager
def executor_imports(spark: SparkSession, modules: Sequence[str]) -> Iterator[None]:
    """Run the Python functions made in this block on workers forked from a daemon that imports ``modules``.

    A stage whose executors load no model (ingest: DICOM reading only) says so here, so that
    its tasks never wait for a daemon importing torch, torchvision and MLflow (about 7 s on
    2 cores) when it runs in a session that also trains and scores (``radlake pipeline``, the
    demo). Spark keeps one Python worker daemon per set of worker environment
    variables, and a Python function takes the session's variables when it is made: those
    made here carry ``RADLAKE_WORKER_PRELOAD=<modules>`` and get a daemon of their own,
    started on first use; those made before and after keep the session's. A DataFrame made
    here keeps its daemon when it is computed later.

    Narrows only radlake's daemon (:func:`get_spark`); on pyspark's own
    (``spark.worker_preload=[]``), Databricks or Spark Connect it does nothing.
    """
    environment = None if is_connect(spark) else spark.sparkContext.environment
    if not environment or not environment.get(PRELOAD_ENV):
        yield
        return
    session_modules = environment[PRELOAD_ENV]
    environment[PRELOAD_ENV] = ",".join(modules)
    try:
        yield
    finally:
        environment[PRELOAD_ENV] = session_modules


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect session: no ``SparkContext``, RDD, broadcast or JVM handle.

    Databricks serverless compute and standard-access clusters give one; so does
    ``spark.remote``. Code that needs a classic-only call checks this first and keeps a
    Spark Connect path beside it.
    """
    # Not imported here: the client stack (gRPC, protobuf) takes over a second to import, and a
    # process that never imported it cannot hold a Spark Connect session.
    connect = sys.modules.get("pyspark.sql.connect.session")
    return connect is not None and isinstance(spark, connect.SparkSession)


def default_parallelism(spark: SparkSession) -> int:
    """Task slots to plan for: the classic ``SparkContext.defaultParallelism``, else the session's configuration.

    Over Spark Connect there is no SparkContext; ``spark.default.parallelism`` is read
    when the server sets it, else ``spark.sql.shuffle.partitions`` stands in.
    """
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    for key in ("spark.default.parallelism", "spark.sql.shuffle.partitions"):
        value = spark.conf.get(key, None)
        if value and str(value).isdigit() and int(value) > 0:
            return int(value)
    return 2


@contextmanager
def scan_tasks_per_slot(spark: SparkSession, per_slot: int) -> Iterator[int]:
    """While the block runs, split file scans into at least ``per_slot`` tasks per task slot.

    Sets ``spark.sql.files.minPartitionNum`` (Spark's lower bound on a file scan's tasks,
    default the slots themselves) to ``per_slot * default_parallelism(spark)`` and restores it
    after. Spark then cuts the scan into pieces of about ``table bytes / that many`` (at most
    ``spark.sql.files.maxPartitionBytes``, 128 MB), between Parquet row groups: a small
    table of a few large files becomes many even tasks, and no slot waits while the last
    large one runs. Set it around the action (the write), when the scan is planned.

    Yields the number of tasks asked for; where the session refuses the setting (a managed
    serverless session may), it changes nothing and yields 0.
    """
    key = "spark.sql.files.minPartitionNum"
    before = spark.conf.get(key, None)
    tasks = per_slot * default_parallelism(spark)
    try:
        spark.conf.set(key, str(tasks))
    except Exception:  # noqa: BLE001 - a session that does not allow the key keeps its own split
        yield 0
        return
    try:
        yield tasks
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


#: The input column of a :func:`map_task_lists` task function that carries each task's own list
#: (pickled) over Spark Connect; on a classic session the lists come from a broadcast instead.
TASK_LIST_COLUMN = "work"


def map_task_lists(
    spark: SparkSession, lists: Sequence[list], task_fn: Callable[..., Iterator], schema: StructType
) -> tuple[DataFrame, Callable[[], None]]:
    """Run ``task_fn`` once per list of ``lists``, each list in a Spark task of its own; return its rows and a release.

    ``task_fn(batches, tasks=...)`` is a ``mapInArrow`` function that gets each of its
    task lists from :func:`task_lists_of` ``(batches, tasks)``. The lists are packed on the
    driver (balanced by expected cost), so every list must reach exactly one task:

    - classic session: the lists are broadcast once and ``spark.range(n, numPartitions=n)``
      gives each Spark task its list's index (no shuffle, no Python RDD), the fastest way;
    - Spark Connect (no broadcast there): a small DataFrame of one row per list, ``task``
      and the pickled list in :data:`TASK_LIST_COLUMN`, range-partitioned on ``task`` into
      ``n`` partitions, which puts each row in a partition of its own (all ``n`` keys are
      sampled; a partition count given explicitly is never coalesced by adaptive execution).

    Parameters
    ----------
    spark
        The session.
    lists
        ``lists[i]`` is task ``i``'s work (picklable records); at least one list.
    task_fn
        ``mapInArrow`` function with a keyword argument ``tasks`` (a broadcast, or None).
    schema
        The rows ``task_fn`` yields.

    Returns
    -------
    tuple[DataFrame, Callable[[], None]]
        The lazy ``mapInArrow`` result, and a function that frees the broadcast (a no-op
        over Spark Connect), to be called once the result has been consumed.

    Raises
    ------
    ValueError
        If ``lists`` is empty.
    """
    import pickle
    from functools import partial

    if not lists:
        raise ValueError("Argument 'lists' must hold at least one task list, got none.")
    n_tasks = len(lists)
    if not is_connect(spark):
        broadcast = spark.sparkContext.broadcast(list(lists))
        tasks = spark.range(n_tasks, numPartitions=n_tasks)
        return tasks.mapInArrow(partial(task_fn, tasks=broadcast), schema), broadcast.destroy
    rows = [(task, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)) for task, records in enumerate(lists)]
    tasks = spark.createDataFrame(rows, f"task long, {TASK_LIST_COLUMN} binary").repartitionByRange(n_tasks, "task")
    return tasks.mapInArrow(partial(task_fn, tasks=None), schema), lambda: None


def task_lists_of(batches: Iterable, tasks) -> Iterator[list]:
    """The task lists of a :func:`map_task_lists` task, in order: where the executors read their work.

    ``batches`` are the task's input Arrow record batches; ``tasks`` the broadcast of all
    lists (classic session: the batches hold list indices), or None (Spark Connect: the
    batches carry the pickled lists in :data:`TASK_LIST_COLUMN`).
    """
    import pickle

    for batch in batches:
        if tasks is None:
            yield from (pickle.loads(work) for work in batch.column(TASK_LIST_COLUMN).to_pylist())
        else:
            yield from (tasks.value[task] for task in batch.column(0).to_pylist())


def counters(spark: SparkSession, n: int) -> tuple | None:
    """``n`` Spark accumulators starting at 0 on a classic session; None over Spark Connect, which has none.

    Counting on the executors saves a job that would read back what was written; a
    caller given None counts from its output instead.
    """
    if is_connect(spark):
        return None
    return tuple(spark.sparkContext.accumulator(0) for _ in range(n))


def list_files(spark: SparkSession, uri: str) -> list[tuple[str, int, int]]:
    """Every file below the URI ``uri`` (``s3://``, ``abfss://``, ``dbfs:``...): (path, bytes, modified epoch ms).

    Metadata only. A classic session asks Hadoop's ``FileSystem.listFiles`` on the driver
    (through the JVM gateway), which also lists zero-byte and hidden (``_``/``.``) files.
    Over Spark Connect, which has no JVM on the client, the ``binaryFile`` source lists
    them with only ``path``, ``length`` and ``modificationTime`` selected (no content is
    read); like every Spark file source it leaves out hidden files, and it skips empty ones.
    """
    if is_connect(spark):
        from pyspark.sql import functions as F

        reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
        listed = reader.load(uri).select("path", "length", F.unix_millis("modificationTime"))
        return [(row[0], int(row[1]), int(row[2])) for row in listed.collect()]
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    rows = []
    files = fs.listFiles(hadoop_path, True)
    while files.hasNext():
        status = files.next()
        if status.isFile():
            rows.append((status.getPath().toString(), int(status.getLen()), int(status.getModificationTime())))
    return rows


def persist(df: DataFrame) -> DataFrame:
    """``df`` persisted in memory and on disk where the session can cache, else ``df`` as it is.

    Classic sessions, standard-access clusters and a plain Spark Connect server cache.
    Databricks serverless compute rejects caching (``NOT_SUPPORTED_WITH_SERVERLESS``): a
    Spark Connect session that refuses it gets ``df`` back uncached, and each action on
    it computes the query again. Pair with :func:`unpersist`.
    """
    from pyspark import StorageLevel

    if not is_connect(df.sparkSession):
        return df.persist(StorageLevel.MEMORY_AND_DISK)
    try:  # Spark Connect persists at once (an analyze request), so a refusal raises here
        return df.persist(StorageLevel.MEMORY_AND_DISK)
    except Exception:  # noqa: BLE001 - pyspark raises SparkConnectException subclasses; recomputing is correct too
        return df


def unpersist(df: DataFrame) -> None:
    """Drop what :func:`persist` cached (nothing to do where it could not cache)."""
    if not is_connect(df.sparkSession):
        df.unpersist()
        return
    try:
        df.unpersist()
    except Exception:  # noqa: BLE001 - a session that cannot cache has nothing to drop
        pass


#: ``explain(mode="extended")`` headings of the analysed plan and of the section after it.
_ANALYZED_HEADING = "== Analyzed Logical Plan =="
_OPTIMIZED_HEADING = "== Optimized Logical Plan =="


def analyzed_plan_text(df: DataFrame) -> str:
    """The analysed logical plan of ``df`` as Spark prints it, every field shown ("" if it cannot be read).

    Runs no Spark job. Classic: the plan's ``treeString`` through the JVM handle. Spark
    Connect: the "Analyzed Logical Plan" section of ``df.explain(mode="extended")``,
    printed with ``spark.sql.debug.maxToStringFields`` raised for the call where the
    server allows it. The two texts differ (Connect's starts with the output schema line),
    so plan texts compare only within one session kind. Expression ids (``#123``) are
    left in: callers that compare plans across sessions remove them.
    """
    if not is_connect(df.sparkSession):
        try:
            plan = df._jdf.queryExecution().analyzed()  # noqa: SLF001 - no public API for the plan text
        except Exception:  # noqa: BLE001 - no JVM handle: the caller keys on what else it has
            return ""
        try:  # (verbose, addSuffix, maxFields, printOperatorId, ...): no "... N more fields" truncation
            return plan.treeString(True, False, 2**31 - 1, False, False)
        except Exception:  # noqa: BLE001 - another Spark version: the default print
            return plan.toString()

    import contextlib
    import io

    conf = df.sparkSession.conf
    key: str | None = "spark.sql.debug.maxToStringFields"
    try:
        before = conf.get(key, None)
        conf.set(key, str(2**31 - 1))
    except Exception:  # noqa: BLE001 - serverless allows only some settings: the plan prints truncated
        before, key = None, None
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            df.explain(mode="extended")
    except Exception:  # noqa: BLE001 - the caller keys on what else it has
        return ""
    finally:
        if key is not None:
            with contextlib.suppress(Exception):
                conf.unset(key) if before is None else conf.set(key, before)
    text = printed.getvalue()
    start = text.find(_ANALYZED_HEADING)
    if start < 0:
        return ""
    end = text.find(_OPTIMIZED_HEADING, start)
    return text[start + len(_ANALYZED_HEADING) : end if end >= 0 else None].strip("\n")


def file_sources(df: DataFrame) -> list[str] | None:
    """The file index of each file-based leaf of the analysed plan, sorted; ``None`` where it is not visible.

    Classic only: ``Delta[version=3, file:/…/images]`` and the root paths, through the JVM
    handle. A Spark Connect plan does not expose its leaves: ``None``.
    """
    if is_connect(df.sparkSession):
        return None
    try:
        leaves = df._jdf.queryExecution().analyzed().collectLeaves()  # noqa: SLF001 - see analyzed_plan_text
    except Exception:  # noqa: BLE001 - no JVM handle
        return None
    found = []
    for i in range(leaves.size()):
        try:
            index = leaves.apply(i).relation().location()
        except Exception:  # noqa: BLE001 - not a file-based relation (Range, LogicalRDD, ...)
            continue
        roots = index.rootPaths()
        found.append(f"{index.toString()} {[roots.apply(j).toString() for j in range(roots.size())]}")
    return sorted(found)


def local_frame(spark: SparkSession, rows: Sequence[Sequence[Any]], schema: StructType | str) -> DataFrame:
    """A DataFrame of rows held on the driver (tuples in ``schema``'s column order), built without Python tasks.

    In a classic session ``spark.createDataFrame(rows, schema)`` ships the rows as a Python RDD:
    the first job that reads them runs Python tasks, and so starts a Python worker daemon of their
    own kind on each executor (the one of a session's ``mapInArrow`` tasks is another), which
    imports ``spark.worker_preload`` first: about 8 s on this project's 2-core machine for a
    list of level names. Here the rows go to the JVM as one Arrow table (pyspark's Arrow path),
    which the JVM reads itself. Over Spark Connect, ``createDataFrame`` already sends local rows
    in the plan, and is used as it is. ``schema``: a ``StructType`` or a DDL string.
    """
    if is_connect(spark):
        return spark.createDataFrame(list(rows), schema)
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    struct = _parse_datatype_string(schema) if isinstance(schema, str) else schema
    arrow = to_arrow_schema(struct)
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(arrow)
    table = pa.Table.from_arrays(
        [pa.array(list(values), type=field.type) for values, field in zip(columns, arrow, strict=True)], schema=arrow
    )
    return spark.createDataFrame(table, struct)


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


def jvm_process(spark: SparkSession):
    """The ``subprocess.Popen`` of the JVM that pyspark launched for ``spark`` (classic sessions only).

    pyspark keeps it on a private attribute (``SparkContext._gateway.proc``); this is the one
    place that reads it. Closing its standard input makes that JVM exit.
    """
    from pyspark import SparkContext

    return SparkContext._gateway.proc


@contextmanager
def task_progress(spark: SparkSession, what: str, detail: str = "") -> Iterator[None]:
    """A progress figure of the Spark tasks that run while the block does: ``<what>: <done>/<total> tasks``.

    Only under a command's console (:func:`radlake.console.active`) and on a classic session
    (Spark Connect has no status tracker here); otherwise the block just runs. The figure
    is the running stages' tasks, read every 2 s from the status tracker; ``detail``
    (e.g. ``"132 files"``) says what the tasks hold.
    """
    from radlake import console

    if not console.active() or is_connect(spark):
        yield
        return
    tracker = spark.sparkContext.statusTracker()
    progress = console.Progress(what, unit="tasks")
    shown: list[tuple[int, int]] = []

    def report() -> None:
        stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
        figure = (sum(s.numCompletedTasks for s in stages if s), sum(s.numTasks for s in stages if s))
        if figure[0] and figure not in shown[-1:]:  # a new figure, once some task has finished
            shown.append(figure)
            progress.update(*figure, detail)

    with console.polling(report):
        yield
