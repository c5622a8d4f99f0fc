"""The ingestion job: a DICOM archive → the ``instances``, ``series``, ``images`` and ``quarantine`` Delta tables.

Order of work, chosen so that a run killed at any point and started again loses
nothing and duplicates nothing:

1. list the archive (on the driver: metadata only); skip files in the
   ``ingest_files`` ledger with the same size and modification time;
2. header pass on the executors (tasks balanced by bytes and file count), which also
   refuses damaged instances (:mod:`radlake.dicom.integrity`) → new instances are MERGEd on
   ``sop_instance_uid`` (insert only), failures, DICOMDIRs and conflicts on
   ``quarantine_id``, extra copies of an instance on ``duplicate_id``. Copies of one
   SOPInstanceUID with other bytes are compared on the executors (header without its
   encoding attributes, decoded pixels: :mod:`radlake.dicom.identity`): another encoding
   of the same instance is a duplicate, other content a conflict. The kept copy is the
   stored one, else the first by path and member;
3. the stacks of every series touched are rebuilt from all their instances (those stored
   before this run and this run's new ones) and MERGEd on ``series_key``;
4. pixel pass over the instances chosen by ``ingest.image_rule`` that have no
   image yet and no pixel failure — taken from the tables (as they are once this run's
   instances and stacks are in), not from this run alone, so a rerun finishes what a
   killed run left — in tasks balanced by expected decoding cost (transfer syntax x
   pixels), appended in one atomic Delta commit. The three commits of steps 2-3
   (independent tables) are written in the background, each started as soon as its rows
   are known, while the stacks, the work list and the pixel pass are computed;
5. the ledger is written last, once every other table is committed.

A table this run created is known to be empty: it is not read, and rows go into it by an
append (what a MERGE into an empty table does); a restarted run finds it and MERGEs.

Example
-------
>>> from radlake.config import load_config
>>> from radlake.spark import get_spark
>>> cfg = load_config()                                          # doctest: +SKIP
>>> summary = run_ingest(get_spark(cfg), cfg, archive="archive/")  # doctest: +SKIP
>>> summary.new_instances                                         # doctest: +SKIP
300

"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from radlake import __version__
from radlake.config import RadlakeConfig
from radlake.console import say, warn
from radlake.dicom.pixels import decode_cost
from radlake.errors import ConfigError
from radlake.ingest import schema as S
from radlake.ingest.executors import HeaderSettings, PixelSettings, copies_task, header_task, pixel_task
from radlake.ingest.listing import list_archive, normalize_archive, pack_tasks, unseen_files
from radlake.ingest.series import build_series, series_key_column
from radlake.spark import (
    counters,
    default_parallelism,
    empty_frame,
    executor_imports,
    local_frame,
    map_task_lists,
    on_databricks,
    persist,
    task_progress,
    unpersist,
)
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.vocabulary import QuarantineStage
from radlake.worker_daemon import NO_MODEL_PRELOAD

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import DataFrame, SparkSession

#: Header-pass cost of one stored file beyond its bytes, in byte-equivalents: parsing and
#: de-identifying a header (~2-3 ms here) costs about as much as reading and hashing 1 MiB.
HEADER_COST_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class IngestSummary(Summary):
    """What one ingest run did. Counts are of this run; ``series`` is the table's total."""

    run_id: str
    archive: str
    files_seen: int
    files_unchanged: int
    files_ingested: int
    new_instances: int
    unchanged_instances: int
    duplicates: int
    quarantined: int
    conflicts: int
    dicomdir_skipped: int
    series: int
    new_images: int
    seconds: float
    phase_seconds: dict = field(default_factory=dict)


def resolve_deid_key(config: RadlakeConfig) -> bytes | None:
    """The HMAC key for pseudonyms, or ``None`` when de-identification is off.

    On Databricks it is the secret ``ingest.deid.secret_scope``/``secret_key``. Locally it
    is the environment variable ``ingest.deid.key_env``; if that is unset, a random key is
    created once in ``<storage.root>/deid.key`` (mode 600) so that pseudonyms stay the same
    across runs on this machine, with a warning to set the variable for shared archives.

    Raises
    ------
    ConfigError
        On Databricks without a configured secret.
    """
    deid = config.ingest.deid
    if not deid.enabled:
        return None
    if deid.secret_scope and deid.secret_key and on_databricks():
        from databricks.sdk.runtime import dbutils  # only available on Databricks

        return dbutils.secrets.get(deid.secret_scope, deid.secret_key).encode()
    value = os.environ.get(deid.key_env)
    if value:
        return value.encode()
    if on_databricks():
        raise ConfigError(
            "De-identification needs a key on Databricks: set ingest.deid.secret_scope and ingest.deid.secret_key."
        )
    key_file = config.storage.root_dir / "deid.key"
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
        warn(
            f"{deid.key_env} is not set, so radlake created a local de-identification key in {key_file} "
            f"(pseudonyms made with it differ from another machine's). To share pseudonyms, set {deid.key_env} "
            "to the same secret everywhere."
        )
    return key_file.read_text().strip().encode()


def check_image_rule(spark: SparkSession, rule: str) -> None:
    """Raise ConfigError naming ``ingest.image_rule`` if it is not a valid predicate on ``instances``."""
    try:
        spark.createDataFrame([], S.INSTANCES).where(F.expr(rule)).schema  # noqa: B018 - analysis only
    except Exception as exc:  # noqa: BLE001 - Spark raises parse and analysis errors of several classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"ingest.image_rule {rule!r} is not a valid predicate on instances: {first}") from exc


def run_ingest(spark: SparkSession, config: RadlakeConfig, *, archive: str | None = None) -> IngestSummary:
    """Ingest ``archive`` (or ``ingest.archive``) incrementally into the Delta tables.

    The steps of the module docstring, each a function of this module over one
    :class:`_IngestRun`.

    Raises
    ------
    ConfigError
        If no archive is given or the image rule is invalid.
    radlake.ingest.listing.ArchiveNotFoundError
        If a local archive path does not exist.
    """
    # Its executors read DICOM only: in a session that also trains and scores (the pipeline, the demo)
    # its tasks get a worker daemon that imports pydicom, not one that imports torch.
    with executor_imports(spark, NO_MODEL_PRELOAD):
        return _ingest_steps(spark, config, archive or config.ingest.archive)


def _ingest_steps(spark: SparkSession, config: RadlakeConfig, archive: str | None) -> IngestSummary:
    """:func:`run_ingest`'s steps, in order."""
    run = _open_run(spark, config, archive)
    say("ingest: listing %s", run.archive)
    listed = list_archive(spark, run.archive)
    files = (
        listed if run.created[Table.INGEST_FILES] else unseen_files(listed, run.refs[Table.INGEST_FILES].read(spark))
    )
    run.phase("list")
    say("ingest: %s files, %s of them new or changed", f"{len(listed):,}", f"{len(files):,}")
    if not files:  # the ledger is written last, so a complete ledger means nothing is left to do
        run.tables_made()
        return run.summary(files_seen=len(listed), files_ingested=0, series=run.refs[Table.SERIES].read(spark).count())
    with task_progress(spark, "ingest: header pass", f"{len(files):,} files"):
        headers = _header_pass(run, files)
    n = headers.counts
    say(
        "ingest: headers read: %d new instances, %d unchanged, %d duplicates, %d quarantined",
        n["new"],
        n["unchanged"],
        n["duplicate"],
        n["quarantined"],
    )
    rows = _header_rows(run, headers)
    with task_progress(spark, "ingest: commits and pixel pass"):
        stored = _store_and_decode(run, headers, rows)
    n_pixel_failures = _quarantine_pixel_failures(run, stored)
    n_series = stored.n_stacks if run.created[Table.SERIES] else run.refs[Table.SERIES].read(spark).count()
    if not run.created[Table.IMAGES]:  # this run's images have their index from ``all_series``; older ones may move
        _refresh_slice_indices(spark, run.refs, stored.touched)
    run.phase("slice_index_refresh")
    unpersist(stored.stacks)
    _write_ledger(run, headers.results)
    unpersist(headers.classified)
    unpersist(headers.results)
    headers.release_files()
    return run.summary(
        files_seen=len(listed),
        files_ingested=len(files),
        new_instances=n["new"],
        unchanged_instances=n["unchanged"],
        duplicates=n["duplicate"],
        quarantined=n["quarantined"] + n_pixel_failures,
        conflicts=n["conflict"],
        dicomdir_skipped=n["skipped"],
        series=n_series,
        new_images=stored.new_images,
    )


#: What identifies one stored copy of an instance in the quarantine: where it is, its bytes, its UID.
_COPY_COLUMNS = ("path", "member", "file_size", "modification_time", "content_sha256", "sop_instance_uid")

#: The tables an ingest run writes, with their schemas.
_STRUCTS = {
    Table.INSTANCES: S.INSTANCES,
    Table.SERIES: S.SERIES,
    Table.IMAGES: S.IMAGES,
    Table.QUARANTINE: S.QUARANTINE,
    Table.DUPLICATES: S.DUPLICATES,
    Table.INGEST_FILES: S.INGEST_FILES,
}


@dataclass
class _IngestRun:
    """What every step of one ingest run shares: the session, the tables, the run's id and clock."""

    spark: SparkSession
    config: RadlakeConfig
    archive: str
    refs: dict
    #: Table → whether this run created it (then it is empty: never read, appended to).
    created: dict
    #: The creations of the tables this run created, running in the background.
    made: list
    #: The HMAC key of the pseudonyms (None: de-identification off).
    deid_key: bytes | None
    run_id: str
    now: datetime
    started: float
    phases: dict = field(default_factory=dict)
    _mark: float = 0.0

    @property
    def run_columns(self) -> dict:
        """The columns that stamp a row with this run."""
        return {
            "ingest_run_id": F.lit(self.run_id),
            "ingested_at": F.lit(self.now),
            "radlake_version": F.lit(__version__),
        }

    def phase(self, name: str) -> None:
        """Record the seconds since the last phase ended as ``name``'s."""
        now_s = time.perf_counter()
        self.phases[name] = round(now_s - (self._mark or self.started), 2)
        self._mark = now_s

    def tables_made(self) -> None:
        """Wait for the tables' creation, raising its error if one failed."""
        for future in self.made:
            future.result()

    def stored(self, table: Table, version: int | None = None) -> DataFrame:
        """``table`` as stored before this run's writes; one this run created is empty and is not read."""
        if self.created[table]:
            return empty_frame(self.spark, _STRUCTS[table])  # Catalyst drops joins and unions with it
        return self.refs[table].read(self.spark, version=version)

    def store(self, table: Table, source: DataFrame, **merge_args) -> None:
        """MERGE ``source`` into ``table``; into a table this run created, append it.

        A table created by this run is empty, so the MERGE could only insert: an append writes
        the same rows without the MERGE's join and copy of its source. A rerun after a kill
        finds the table and MERGEs, so no row is stored twice.
        """
        if self.created[table]:
            self.refs[table].append(source.select(*(f.name for f in _STRUCTS[table].fields)))
        else:
            self.refs[table].merge(self.spark, source, **merge_args)

    def summary(self, *, files_seen: int, files_ingested: int, series: int, **counts: int) -> IngestSummary:
        zero = dict.fromkeys(
            ("new_instances", "unchanged_instances", "duplicates", "quarantined", "conflicts", "dicomdir_skipped"), 0
        )
        return IngestSummary(
            run_id=self.run_id,
            archive=str(self.archive),
            files_seen=files_seen,
            files_unchanged=files_seen - files_ingested,
            files_ingested=files_ingested,
            series=series,
            new_images=counts.pop("new_images", 0),
            seconds=round(time.perf_counter() - self.started, 2),
            phase_seconds=self.phases,
            **{**zero, **counts},
        )


def _open_run(spark: SparkSession, config: RadlakeConfig, archive: str | None) -> _IngestRun:
    """Check the inputs, then start creating the tables this run needs (in the background).

    A table that does not exist yet is created by this run and so known to be empty: it is
    not read. The creations (Delta commits, mostly JVM start-up work for the first) run in
    the background while the archive is listed and the header pass runs; every write of this
    run waits for them first (:meth:`_IngestRun.tables_made`).
    """
    started = time.perf_counter()
    if not archive:
        raise ConfigError("No archive given: pass --archive or set ingest.archive.")
    check_image_rule(spark, config.ingest.image_rule)
    deid_key = resolve_deid_key(config)
    normalize_archive(archive)  # a missing archive fails before any table is touched
    refs = {t: table_ref(config, t) for t in Table}
    created = {table: not refs[table].exists(spark) for table in _STRUCTS}
    setup = ThreadPoolExecutor(len(_STRUCTS), thread_name_prefix="radlake-setup")
    made = [
        setup.submit(refs[table].ensure, spark, _STRUCTS[table], properties=_table_properties(config, table))
        for table in _STRUCTS
        if created[table]
    ]
    setup.shutdown(wait=False)  # each thread ends with its one call
    # In field order: the session, its inputs, the tables, the key, the run's id and clock.
    run = _IngestRun(
        spark, config, archive, refs, created, made, deid_key, uuid.uuid4().hex, datetime.now(UTC), started
    )
    run.phase("setup")
    return run


@dataclass
class _Headers:
    """The header pass of one run: its rows, this run's instances classified, and the counts."""

    results: DataFrame
    release_files: Callable[[], None]
    classified: DataFrame
    stored_instances: DataFrame
    #: new, unchanged, duplicate, conflict (instances by status); quarantined, skipped (header rows).
    counts: dict


def _header_pass(run: _IngestRun, files: list) -> _Headers:
    """Step 2: headers read and checked on the executors; this run's instances classified, copies compared."""
    spark, ic = run.spark, run.config.ingest
    header_settings = HeaderSettings(
        deid_key=run.deid_key,
        max_member_bytes=ic.max_member_bytes,
        max_header_json_bytes=ic.max_header_json_bytes,
        oblique_tolerance_deg=ic.oblique_tolerance_deg,
        max_decoded_bytes=ic.max_decoded_bytes,
    )
    slots = default_parallelism(spark)
    assignment = pack_tasks(
        [f.file_size for f in files],
        partition_bytes=ic.partition_bytes,
        partition_files=ic.partition_files,
        min_tasks=2 * slots,
        costs=[HEADER_COST_FILE_BYTES + f.file_size for f in files],
        slots=slots,
    )
    results, release_files = _run_tasks(
        spark,
        assignment,
        [[tuple(file)] for file in files],
        partial(header_task, settings=header_settings),
        S.HEADER_RESULT,
    )
    # Cached where the session can (Databricks serverless cannot: each action then runs the pass again).
    results = persist(results)
    candidates = (
        results.where("kind = 'instance'").withColumn("series_key", series_key_column()).withColumns(run.run_columns)
    )
    # Each instance of this run is classified once, against the table as it was before this
    # run's writes (see _classify): new, unchanged, a duplicate copy, or a copy whose content
    # must be compared with the kept one's.
    before = None if run.created[Table.INSTANCES] else run.refs[Table.INSTANCES].version(spark)
    stored_instances = run.stored(Table.INSTANCES, version=before)
    classified = persist(_classify(candidates, stored_instances))
    # One job runs the header pass (beside the tables' creation), fills the caches and counts
    # this run's instances by status and the header pass's rows by kind.
    tally = (
        classified.groupBy(F.lit("status").alias("of"), F.col("_status").alias("value"))
        .count()
        .unionByName(results.groupBy(F.lit("kind").alias("of"), F.col("kind").alias("value")).count())
    )
    found = {(r["of"], r["value"]): r["count"] for r in tally.collect()}
    run.tables_made()
    run.phase("header_pass")
    if found.get(("status", "compare"), 0):  # copies with other bytes: the same content, or a conflict?
        decided = _compare_copies(spark, classified, stored_instances, _pixel_settings(run.config))
        unpersist(classified)
        classified = persist(decided)
        counts = classified.groupBy("_status").count().collect()
        found.update({("status", r["_status"]): r["count"] for r in counts})
        found.pop(("status", "compare"), None)
    run.phase("copies")
    counts = {k: found.get(("status", k), 0) for k in ("new", "unchanged", "duplicate", "conflict")}
    counts["skipped"] = found.get(("kind", "skipped"), 0)
    counts["quarantined"] = found.get(("kind", "failure"), 0) + counts["conflict"]
    return _Headers(results, release_files, classified, stored_instances, counts)


@dataclass
class _HeaderRows:
    """What the header pass adds to the tables: new instances, duplicates, quarantine rows (not yet written)."""

    new_instances: DataFrame
    duplicates: DataFrame
    quarantine: DataFrame


def _header_rows(run: _IngestRun, headers: _Headers) -> _HeaderRows:
    """The rows of step 2 for the instances, duplicates and quarantine tables."""
    classified = headers.classified
    new_instances = classified.where("_status = 'new'").select(*(f.name for f in S.INSTANCES.fields))
    duplicates = classified.where("_status = 'duplicate'").select(
        F.sha2(F.concat_ws("|", "path", F.coalesce("member", F.lit("")), "content_sha256"), 256).alias("duplicate_id"),
        "path",
        "member",
        "file_size",
        "modification_time",
        "sop_instance_uid",
        "content_sha256",
        "transfer_syntax_uid",
        (F.col("content_sha256") == F.col("_kept_sha")).alias("same_bytes"),
        F.col("_kept_path").alias("kept_path"),
        F.col("_kept_member").alias("kept_member"),
        F.col("_kept_sha").alias("kept_content_sha256"),
        F.lit(run.run_id).alias("ingest_run_id"),
        F.lit(run.now).alias("recorded_at"),
    )
    header_failures = headers.results.where("kind IN ('failure', 'skipped')").select(
        *_COPY_COLUMNS,  # sop_instance_uid: known for a damaged instance, else null
        F.coalesce("stage", F.lit(QuarantineStage.SKIPPED.value)).alias("stage"),
        F.coalesce("error_class", F.lit("Dicomdir")).alias("error_class"),
        F.coalesce(
            "error_message", F.lit("a DICOMDIR (an index of the files beside it), not an instance: nothing to ingest")
        ).alias("error_message"),
    )
    conflict_rows = classified.where("_status = 'conflict'").select(
        *_COPY_COLUMNS,
        F.lit(QuarantineStage.CONFLICT.value).alias("stage"),
        F.lit("SOPInstanceUIDConflict").alias("error_class"),
        F.concat(
            F.lit("SOPInstanceUID "),
            F.col("sop_instance_uid"),
            F.lit(" is kept from "),
            F.col("_kept_path"),
            F.coalesce(F.concat(F.lit(" ["), F.col("_kept_member"), F.lit("]")), F.lit("")),
            F.lit(" with other content ("),
            F.coalesce(F.col("_differs"), F.lit("other bytes")),
            F.lit("); this copy was not ingested"),
        ).alias("error_message"),
    )
    quarantine = _quarantine_rows(header_failures.unionByName(conflict_rows), run.run_id, run.now)
    return _HeaderRows(new_instances, duplicates, quarantine)


@dataclass
class _Stored:
    """Steps 2-4 written: the stacks built, the images decoded, what failed in the pixel pass."""

    stacks: DataFrame
    n_stacks: int
    touched: DataFrame
    new_images: int
    pixel_failures: DataFrame | None
    #: Frees the retried pixel tasks' lists (a broadcast) once ``pixel_failures`` is consumed: a task
    #: that reads the persisted failures still carries their lineage, and with it the broadcast.
    release_pixel_failures: Callable[[], None]


def _store_and_decode(run: _IngestRun, headers: _Headers, rows: _HeaderRows) -> _Stored:
    """Steps 2-4: the header pass's commits, the stacks and the pixel pass, overlapped.

    The commits of steps 2-3 (independent tables) are written in the background, each as
    soon as its rows are known, while the driver builds the stacks and the pixel work list
    (short jobs that leave the cores mostly idle) and the pixel pass decodes. Everything
    here reads the snapshots taken by the header pass, never these commits. Any order of
    them is restart-safe: the pixel pass skips instances that already have images, the
    MERGEs skip rows already stored, and the ledger is written after all of them, so a run
    killed in between is redone by the next.
    """
    spark, n = run.spark, headers.counts
    with ThreadPoolExecutor(4) as background:  # leaving it waits for all, also on an error
        commits = []
        if n["new"]:
            commits.append(background.submit(run.store, Table.INSTANCES, rows.new_instances, keys=["sop_instance_uid"]))
        if n["quarantined"] or n["skipped"]:
            commits.append(background.submit(run.store, Table.QUARANTINE, rows.quarantine, keys=["quarantine_id"]))
        if n["duplicate"]:
            commits.append(background.submit(run.store, Table.DUPLICATES, rows.duplicates, keys=["duplicate_id"]))
        all_instances = headers.stored_instances.unionByName(rows.new_instances)
        # 4. The pixel pass's work list, collected in the background while step 3 builds the
        # stacks: the instances chosen by the rule that have neither an image nor a pixel
        # failure yet.
        todo = background.submit(
            _pixel_todo,
            run.config.ingest.image_rule,
            instances=all_instances,
            images=run.stored(Table.IMAGES),
            quarantine=run.stored(Table.QUARANTINE),
        )
        # 3. Stacks of every series seen in this run (new or already stored: a restarted run
        # must finish what a killed one left), rebuilt from all their instances: the table as
        # of the header pass plus this run's new ones, which is what the instances table holds
        # once this run's commit is in.
        # Into an instances table this run created, every instance is new and its series touched.
        touched = headers.classified.where("_status <> 'conflict'").select("series_instance_uid").distinct()
        members = (
            rows.new_instances
            if run.created[Table.INSTANCES]
            else all_instances.join(touched, "series_instance_uid", "left_semi")
        )
        stacks = persist(  # small (no pixels): collected below and stored by the series commit
            build_series(members).withColumns({"updated_run_id": F.lit(run.run_id), "updated_at": F.lit(run.now)})
        )
        # Built once here (this fills the cache the series commit reads): each stack's ordered
        # (instance, frame) list, metadata only.
        stack_slices = stacks.select("series_key", "slices").collect()
        n_stacks = len(stack_slices)
        series_columns = [f.name for f in S.SERIES.fields if f.name != "series_key"]
        commits.append(
            background.submit(run.store, Table.SERIES, stacks, keys=["series_key"], update_columns=series_columns)
        )
        # Each frame's slice index in its stack, from the series table as it is once this
        # run's stacks are in: this run's, and stored ones for instances of series it did not
        # touch (an image rule widened since they were ingested).
        records = todo.result()
        untouched = {r["series_key"] for r in records} - {row["series_key"] for row in stack_slices} - {None}
        if untouched and not run.created[Table.SERIES]:
            keys = local_frame(spark, [(key,) for key in sorted(untouched)], "series_key string")
            older = run.stored(Table.SERIES).join(keys, "series_key", "left_semi").select("series_key", "slices")
            stack_slices += older.collect()
        _add_slice_indices(records, stack_slices)
        say("ingest: decoding the pixels of %s instances", f"{len(records):,}")
        if records and not run.created[Table.IMAGES]:  # a table written before gets the newest columns and layout
            run.refs[Table.IMAGES].add_missing_columns(spark, S.IMAGES)
            run.refs[Table.IMAGES].set_properties(spark, _table_properties(run.config, Table.IMAGES))
        new_images, pixel_failures, release = _pixel_stage(
            spark, run.config, run.refs, run.run_columns, run.run_id, records, all_instances
        )
    for commit in commits:
        commit.result()  # raises a background write's error
    run.phase("commits_and_pixels")
    return _Stored(stacks, n_stacks, touched, new_images, pixel_failures, release)


def _quarantine_pixel_failures(run: _IngestRun, stored: _Stored) -> int:
    """The pixel pass's failures into quarantine (after its header MERGE: one writer per table at a time)."""
    pixel_failures = stored.pixel_failures
    if pixel_failures is None:
        return 0
    n_failures = pixel_failures.count()
    if n_failures:
        run.refs[Table.QUARANTINE].merge(
            run.spark, _quarantine_rows(pixel_failures, run.run_id, run.now), keys=["quarantine_id"]
        )
    unpersist(pixel_failures)
    stored.release_pixel_failures()
    return n_failures


def _write_ledger(run: _IngestRun, results: DataFrame) -> None:
    """Step 5, last: every file of this run in ``ingest_files``, with what it held."""
    per_file = results.groupBy("path", "file_size", "modification_time").agg(
        F.sum(F.when(F.col("kind") == "instance", 1).otherwise(0)).cast("int").alias("n_instances"),
        F.sum(F.when(F.col("kind") == "failure", 1).otherwise(0)).cast("int").alias("n_quarantined"),
    )
    run.store(
        Table.INGEST_FILES,
        per_file.withColumns({"ingest_run_id": F.lit(run.run_id), "ingested_at": F.lit(run.now)}),
        keys=["path", "file_size", "modification_time"],
    )
    run.phase("ledger")


def _table_properties(config: RadlakeConfig, table: Table) -> dict[str, str]:
    """Delta table properties of ``table`` (Delta hands them to the Parquet writer of every later write).

    ``images`` is written in row groups of at most ``ingest.images_row_group_frames`` frames,
    so that a scan of a few large files still splits into a task per core (and a training
    cache's reader per worker); its ``pixels`` are written without dictionary encoding: each
    value is a whole frame, never repeated, and the writer hashed every frame of each row
    group until its dictionary outgrew a page (four 384 px frames) before falling back.
    """
    if table is Table.IMAGES:
        return {
            "parquet.block.row.count.limit": str(config.ingest.images_row_group_frames),
            "parquet.enable.dictionary#pixels": "false",
        }
    return {}


def _pixel_settings(config: RadlakeConfig) -> PixelSettings:
    ic = config.ingest
    return PixelSettings(
        max_member_bytes=ic.max_member_bytes,
        max_decoded_bytes=ic.max_decoded_bytes,
        isolate_decoders=ic.isolate_decoders,
        decode_timeout_s=ic.decode_timeout_s,
    )


def _classify(candidates: DataFrame, stored_instances: DataFrame) -> DataFrame:
    """Each instance of this run, with the copy of its SOPInstanceUID that is kept and a ``_status``.

    The kept copy is the stored one; else, of this run's copies, the first by ``path`` then
    ``member``: the same whatever the order of listing. Damaged copies never get here (the
    header pass quarantines them), so a damaged copy is never kept over a sound one.

    ``_status``: ``new`` (the kept copy, not stored yet); ``unchanged`` (the kept copy read
    again); ``duplicate`` (another copy with the same bytes); ``compare`` (another copy with
    other bytes: :func:`_compare_copies` decides between duplicate and conflict).
    Adds ``_kept_path``, ``_kept_member``, ``_kept_sha`` and ``_kept_transfer_syntax``.
    """
    by_uid = Window.partitionBy("sop_instance_uid").orderBy("path", F.col("member").asc_nulls_first())
    existing = stored_instances.select(
        "sop_instance_uid",
        F.col("path").alias("_stored_path"),
        F.col("member").alias("_stored_member"),
        F.col("content_sha256").alias("_stored_sha"),
        F.col("transfer_syntax_uid").alias("_stored_transfer_syntax"),
    )
    first = {name: F.first(name).over(by_uid) for name in ("path", "member", "content_sha256", "transfer_syntax_uid")}
    is_stored = F.col("_stored_sha").isNotNull()
    kept = {
        "_kept_path": F.when(is_stored, F.col("_stored_path")).otherwise(first["path"]),
        "_kept_member": F.when(is_stored, F.col("_stored_member")).otherwise(first["member"]),
        "_kept_sha": F.when(is_stored, F.col("_stored_sha")).otherwise(first["content_sha256"]),
        "_kept_transfer_syntax": F.when(is_stored, F.col("_stored_transfer_syntax")).otherwise(
            first["transfer_syntax_uid"]
        ),
    }
    same_place = (F.col("path") == F.col("_kept_path")) & F.col("member").eqNullSafe(F.col("_kept_member"))
    return (
        candidates.join(existing, "sop_instance_uid", "left")
        .withColumns(kept)
        .withColumn(
            "_status",
            F.when(F.col("content_sha256") != F.col("_kept_sha"), "compare")
            .when(same_place & ~is_stored, "new")
            .when(same_place, "unchanged")
            .otherwise("duplicate"),
        )
        .withColumn("_differs", F.lit(None).cast("string"))
        .drop("_stored_path", "_stored_member", "_stored_sha", "_stored_transfer_syntax")
    )


def _compare_copies(
    spark: SparkSession, classified: DataFrame, stored_instances: DataFrame, settings: PixelSettings
) -> DataFrame:
    """``classified`` with each ``compare`` copy decided: ``duplicate`` (same content) or ``conflict``.

    The copies to compare and the kept copy of each of their instances (metadata only, a
    few rows in an archive without conflicts) are collected; the executors digest each
    copy's header and pixels (:func:`radlake.ingest.executors.copies_task`). Same header
    digest and same pixel digest: the same instance in another encoding. Anything else,
    including a copy that cannot be read or decoded, is a conflict, and ``_differs`` says
    what differs.
    """
    rows = classified.where("_status = 'compare'").select(
        "sop_instance_uid",
        "path",
        "member",
        "content_sha256",
        "transfer_syntax_uid",
        "_kept_path",
        "_kept_member",
        "_kept_sha",
        "_kept_transfer_syntax",
    )
    kept: dict[str, dict] = {}
    groups: dict[str, list[dict]] = {}
    for row in rows.collect():
        uid = row["sop_instance_uid"]
        kept[uid] = {
            "sop_instance_uid": uid,
            "path": row["_kept_path"],
            "member": row["_kept_member"],
            "content_sha256": row["_kept_sha"],
            "transfer_syntax_uid": row["_kept_transfer_syntax"],
        }
        groups.setdefault(uid, [kept[uid]]).append(
            {k: row[k] for k in ("sop_instance_uid", "path", "member", "content_sha256", "transfer_syntax_uid")}
        )
    work = list(groups.values())  # all copies of an instance in one task
    n_tasks = max(1, min(default_parallelism(spark), len(work)))
    digests, release = _run_tasks(
        spark,
        [i % n_tasks for i in range(len(work))],
        work,
        partial(copies_task, settings=settings),
        S.COPY_DIGESTS,
    )
    found = {(r["sop_instance_uid"], r["path"], r["member"]): r for r in digests.collect()}
    release()
    decisions = []
    for uid, copies in groups.items():
        reference = found[(uid, kept[uid]["path"], kept[uid]["member"])]
        for copy in copies[1:]:
            mine = found[(uid, copy["path"], copy["member"])]
            decisions.append((uid, copy["path"], copy["member"], *_decide(mine, reference)))
    decided = local_frame(
        spark, decisions, "sop_instance_uid string, path string, member string, _decision string, _reason string"
    )
    c, d = classified.alias("c"), F.broadcast(decided).alias("d")
    same_copy = (
        (F.col("c.sop_instance_uid") == F.col("d.sop_instance_uid"))
        & (F.col("c.path") == F.col("d.path"))
        & F.col("c.member").eqNullSafe(F.col("d.member"))  # null for a plain file
    )
    return (
        c.join(d, same_copy, "left")
        .select("c.*", "d._decision", "d._reason")
        .withColumn("_status", F.coalesce("_decision", "_status"))
        .withColumn("_differs", F.coalesce("_reason", "_differs"))
        .drop("_decision", "_reason")
    )


def _decide(copy, kept) -> tuple[str, str | None]:
    """(status, what differs) of one copy against the kept copy's digests."""
    for row, whose in ((copy, "this copy"), (kept, "the kept copy")):
        if row["error_message"]:
            return "conflict", f"{whose} could not be compared: {row['error_message']}"
    if copy["header_sha256"] != kept["header_sha256"]:
        return "conflict", "another header"
    if copy["pixels_sha256"] != kept["pixels_sha256"]:
        return "conflict", "other pixel values"
    return "duplicate", None


def _quarantine_rows(failures: DataFrame, run_id: str, now: datetime) -> DataFrame:
    key = F.sha2(
        F.concat_ws(
            "|",
            *(F.coalesce(F.col(c).cast("string"), F.lit("")) for c in ("path", "member", "stage", "sop_instance_uid")),
            F.coalesce(F.col("frame_index").cast("string"), F.lit("")),
            F.coalesce(F.col("content_sha256"), F.lit("")),
        ),
        256,
    )
    if "frame_index" not in failures.columns:
        failures = failures.withColumn("frame_index", F.lit(None).cast("int"))
    return failures.withColumns(
        {"quarantine_id": key, "ingest_run_id": F.lit(run_id), "quarantined_at": F.lit(now)}
    ).select(*(f.name for f in S.QUARANTINE.fields))


def _slice_indices(series: DataFrame) -> DataFrame:
    """(sop_instance_uid, frame_index, slice_index) from the ordered stacks."""
    return series.select("series_key", F.posexplode("slices").alias("slice_index", "s")).select(
        "series_key", "s.sop_instance_uid", "s.frame_index", F.col("slice_index").cast("int")
    )


def _pixel_todo(image_rule: str, *, instances: DataFrame, images: DataFrame, quarantine: DataFrame) -> list[dict]:
    """The pixel pass's work list: one metadata record (no pixels) per instance still to decode.

    The instances chosen by ``image_rule`` that have pixels, no image and no pixel failure.
    ``instances`` is that table as it is once this run's commit is in; ``images`` and
    ``quarantine`` as they were before this run (its own quarantine rows are header
    failures and conflicts, not pixel failures). Slice indices are added by
    :func:`_add_slice_indices`.
    """
    done = images.select("sop_instance_uid").distinct()
    failed = quarantine.where(F.col("stage") == QuarantineStage.PIXELS.value).select("sop_instance_uid")
    frames = F.greatest(F.coalesce("number_of_frames", F.lit(1)), F.lit(1))
    work = (
        instances.where(F.expr(image_rule))
        .where("has_pixels")
        .join(done, "sop_instance_uid", "left_anti")
        .join(failed, "sop_instance_uid", "left_anti")
        .select(
            "path",
            "member",
            "content_sha256",
            "sop_instance_uid",
            "series_key",
            "study_instance_uid",
            "series_instance_uid",
            "plane",
            "pixel_spacing",
            "instance_size",
            frames.alias("expected_frames"),
            F.coalesce(F.col("rows").cast("long") * F.col("columns") * frames, F.lit(0)).alias("pixel_count"),
            "transfer_syntax_uid",
        )
    )
    return [row.asDict(recursive=True) for row in work.collect()]


def _add_slice_indices(records: list[dict], stacks: list) -> None:
    """Set each record's ``slice_indices``: per frame index, that frame's position in its stack (None if in none).

    ``stacks`` are rows of ``series_key`` and ``slices`` (the stack's ordered
    ``(sop_instance_uid, frame_index)`` structs) covering the records' series.
    """
    positions: dict[str, dict[int, int]] = {}
    for stack in stacks:
        for position, entry in enumerate(stack["slices"] or []):
            positions.setdefault(entry["sop_instance_uid"], {})[entry["frame_index"]] = position
    for record in records:
        # As long as the frames the stacks hold, not as NumberOfFrames says: a header may claim billions.
        found = positions.get(record["sop_instance_uid"], {})
        record["slice_indices"] = [found.get(frame) for frame in range(max(found) + 1)] if found else []


def _pixel_stage(
    spark, config, refs, run_columns, run_id, records: list[dict], instances: DataFrame
) -> tuple[int, DataFrame | None, Callable[[], None]]:
    """Decode the instances of ``records`` (from :func:`_pixel_todo`, with slice indices) and append their frames to ``images``.

    Returns the image rows written and, if some instance gave fewer frames than it holds,
    its pixel failures (persisted, with file size and time from ``instances``; not written
    here, so that the caller merges them into ``quarantine`` after the run's other
    quarantine MERGE), and the function that frees the retried tasks' lists once the failures are
    consumed (a no-op when there are none).
    """
    ic = config.ingest
    if not records:
        return 0, None, _nothing
    settings = _pixel_settings(config)
    # Image rows written, and instances that gave fewer than their frames, counted on the
    # executors. When every instance gave exactly its frames, the pass needs no second look at
    # what it wrote. A task run twice can only raise the counts, which leads to that look.
    # Spark Connect has no accumulators (``counts`` is None): the look at what was written
    # (this run's image rows, one column) gives the counts there.
    counts = counters(spark, 2)
    frames, release = _decode_tasks(spark, records, settings, ic, counts=counts)
    # The frames stream straight into one append (decoded pixels are never cached: that cost
    # more than the decoding). An append, not a MERGE: ``todo`` already left out every
    # instance with an image, and a Delta commit is atomic, so a killed run leaves all of
    # these rows or none.
    image_columns = [f.name for f in S.IMAGES.fields]
    refs[Table.IMAGES].append(
        frames.where("kind = 'image'").withColumns(run_columns).select(*image_columns),
        compression=ic.images_compression,
    )
    release()
    expected = sum(r["expected_frames"] for r in records)
    if counts is not None and counts[1].value == 0 and counts[0].value == expected:
        return expected, None, _nothing
    written = refs[Table.IMAGES].read(spark).where(F.col("ingest_run_id") == run_id).groupBy("sop_instance_uid")
    frames_written = {r[0]: int(r[1]) for r in written.count().collect()}
    n_images = sum(frames_written.values())
    # Failures were not kept by the write; they are the instances that got fewer frames than
    # they hold (rare), decoded once more to record why.
    short = [r for r in records if frames_written.get(r["sop_instance_uid"], 0) < r["expected_frames"]]
    if not short:
        return n_images, None, _nothing
    retried, release = _decode_tasks(spark, short, settings, ic)
    failures = persist(  # small: no pixels
        retried.where("kind = 'failure'")
        .join(instances.select("sop_instance_uid", "file_size", "modification_time"), "sop_instance_uid")
        .select(
            *_COPY_COLUMNS,
            "frame_index",
            "stage",
            "error_class",
            "error_message",
        )
    )
    failures.count()  # decoded now, once
    return n_images, failures, release


def _nothing() -> None:
    pass


def _decode_tasks(
    spark, records: list[dict], settings: PixelSettings, ic, counts=None
) -> tuple[DataFrame, Callable[[], None]]:
    """The pixel pass over ``records`` (metadata rows), packed into tasks of even expected decoding cost.

    A JPEG 2000 frame costs ~23x an uncompressed one (:func:`radlake.dicom.pixels.decode_cost`);
    the members of one stored file stay in one task, in member order, so that a zip or
    tar file is opened once. Returns the frames (lazy) and the function that frees the task
    lists, to be called once the frames are written.
    """
    by_path: dict[str, list[dict]] = {}
    for record in records:
        by_path.setdefault(record["path"], []).append(record)
    paths = list(by_path)
    slots = default_parallelism(spark)
    assignment = pack_tasks(
        [sum(r["instance_size"] or 0 for r in by_path[p]) for p in paths],
        partition_bytes=ic.partition_bytes,
        partition_files=ic.partition_files,
        min_tasks=2 * slots,
        costs=[sum(decode_cost(r["transfer_syntax_uid"], r["pixel_count"]) for r in by_path[p]) for p in paths],
        slots=slots,
    )
    items = [sorted(by_path[path], key=lambda r: r["member"] or "") for path in paths]
    task = partial(pixel_task, settings=settings, counts=counts)
    return _run_tasks(spark, assignment, items, task, S.PIXEL_RESULT)


def _run_tasks(
    spark, assignment: list[int], items: list[list], task_fn, schema
) -> tuple[DataFrame, Callable[[], None]]:
    """Run ``task_fn`` over packed tasks: ``items[i]`` (a list of records) goes to task ``assignment[i]``.

    Every Spark task gets exactly its own list (``task_fn``'s ``tasks`` argument and input
    batches), by :func:`radlake.spark.map_task_lists`: a broadcast on a classic session,
    rows of the input over Spark Connect. Returns the lazy ``mapInArrow`` result and the
    function that frees the lists, to be called once the result is consumed.
    """
    n_tasks = max(assignment) + 1
    groups: list[list] = [[] for _ in range(n_tasks)]
    for task, records in zip(assignment, items, strict=True):
        groups[task].extend(records)
    return map_task_lists(spark, groups, task_fn, schema)


def _refresh_slice_indices(spark, refs, touched: DataFrame) -> None:
    """Re-number the images of stacks that gained slices in this run (only rows whose index moved)."""
    fresh = _slice_indices(refs[Table.SERIES].read(spark)).alias("f")
    images = refs[Table.IMAGES].read(spark).join(touched, "series_instance_uid", "left_semi")
    moved = (
        images.select("sop_instance_uid", "frame_index", F.col("slice_index").alias("_old"))
        .join(fresh, ["sop_instance_uid", "frame_index"])
        .where("_old IS NULL OR _old <> slice_index")
        .select("sop_instance_uid", "frame_index", "slice_index")
    )
    if moved.limit(1).count():
        refs[Table.IMAGES].merge(
            spark, moved, keys=["sop_instance_uid", "frame_index"], update_columns=["slice_index"], insert=False
        )
