"""Logical table names and where each table lives.

radlake code names tables by their logical name (:class:`Table`). Locally each one is
a path-based Delta table ``<warehouse>/<name>``; on Databricks (``storage.catalog``
set) a Unity Catalog table ``catalog.schema.name``. Either way the data is plain
Delta, readable by any Delta reader (Spark, the ``deltalake`` package, Databricks SQL).

Example
-------
>>> from radlake.config import load_config
>>> ref = table_ref(load_config(overrides=["storage.root=/tmp/rl"]), "instances")
>>> ref.location
'/tmp/rl/warehouse/instances'

"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from radlake.config import RadlakeConfig
from radlake.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType


class Table(str, Enum):
    """The tables radlake writes."""

    INSTANCES = "instances"
    """One row per DICOM instance: source location, checksums, promoted header columns."""
    SERIES = "series"
    """One row per geometric stack of slices (a series split by orientation and matrix)."""
    IMAGES = "images"
    """Decoded 2D frames used for training and scoring."""
    QUARANTINE = "quarantine"
    """Files or instances that could not be ingested, with the stage and reason."""
    DUPLICATES = "duplicates"
    """Extra copies of stored instances (same SOPInstanceUID, same content), with the copy kept."""
    INGEST_FILES = "ingest_files"
    """Ledger of stored files already ingested (location, size, modification time), written last."""
    ANNOTATIONS = "annotations"
    """Boxes drawn on image frames (pixels and millimetres), one row per box."""
    SPLITS = "splits"
    """Train / validation / test assignment of every study, fixed by seed."""
    VERTEBRA_CROPS = "vertebra_crops"
    """One row per vertebra crop (pixels, box in the source frame, level, the vertebra model behind it)."""
    PREDICTIONS = "predictions"
    """One row per scored frame and model pair: the vertebrae and Schmorl's nodes found."""
    STUDY_FINDINGS = "study_findings"
    """One row per series and model pair: the levels with a Schmorl's node and their best score."""


@dataclass(frozen=True)
class TableRef:
    """Where one logical table lives.

    Attributes
    ----------
    table
        The logical table.
    name
        Unity Catalog three-level name (``catalog.schema.table``), or ``None`` locally.
    path
        Folder of a path-based Delta table (local), or ``None`` on Unity Catalog.
    """

    table: Table
    name: str | None
    path: str | None

    @property
    def location(self) -> str:
        """The name on Unity Catalog, else the path."""
        return self.name or self.path or ""

    def read(self, spark: SparkSession, *, version: int | None = None) -> DataFrame:
        """Read the table, optionally as of a Delta version (time travel)."""
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        return reader.table(self.name) if self.name else reader.load(self.path)

    def exists(self, spark: SparkSession) -> bool:
        """True if a Delta table is at this location."""
        from delta.tables import DeltaTable

        if self.name:
            return bool(spark.catalog.tableExists(self.name))
        return bool(DeltaTable.isDeltaTable(spark, self.path))

    def delta_table(self, spark: SparkSession):  # -> delta.tables.DeltaTable
        """The ``delta.tables.DeltaTable`` handle (for MERGE, history, vacuum)."""
        from delta.tables import DeltaTable

        return DeltaTable.forName(spark, self.name) if self.name else DeltaTable.forPath(spark, self.path)

    def version(self, spark: SparkSession) -> int:
        """The table's current Delta version (pin it to read the same data again later)."""
        return int(self.delta_table(spark).history(1).select("version").first()["version"])

    def ensure(self, spark: SparkSession, schema: StructType) -> bool:
        """Create the table empty with ``schema`` if it does not exist yet.

        Returns True if this call created it, so that the caller knows it is empty without
        reading it (a no-op returning False if it exists).
        """
        from delta.tables import DeltaTable

        if self.exists(spark):
            return False
        builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
        builder = builder.tableName(self.name) if self.name else builder.location(self.path)
        builder.execute()
        return True

    def merge(
        self,
        spark: SparkSession,
        source: DataFrame,
        *,
        keys: Sequence[str],
        update_columns: Sequence[str] | None = None,
        insert: bool = True,
        schema: StructType | None = None,
    ) -> None:
        """Delta MERGE of ``source`` into the table on ``keys``: insert new rows, optionally update some columns.

        Idempotent: merging the same rows twice leaves one copy, so a run killed halfway
        and started again duplicates nothing. ``schema`` creates the table first if missing.

        Example::

            ref.merge(spark, new_rows, keys=["sop_instance_uid"])                     # insert-only
            ref.merge(spark, stacks, keys=["series_key"], update_columns=["slices"])  # upsert
        """
        if schema is not None:
            self.ensure(spark, schema)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        builder = self.delta_table(spark).alias("t").merge(source.alias("s"), condition)
        if update_columns:
            builder = builder.whenMatchedUpdate(set={c: f"s.`{c}`" for c in update_columns})
        if insert:
            builder = builder.whenNotMatchedInsertAll()
        builder.execute()


def table_ref(config: RadlakeConfig, table: Table | str) -> TableRef:
    """Resolve a logical table to its location under ``config``.

    Parameters
    ----------
    config
        Supplies ``tables.<name>`` (physical name) and ``storage`` (catalog or warehouse).
    table
        A :class:`Table` or its value, e.g. ``"instances"``.

    Raises
    ------
    ConfigError
        If ``table`` is not a known logical table.
    """
    try:
        table_ = Table(table)
    except ValueError:
        known = ", ".join(t.value for t in Table)
        raise ConfigError(f"Unknown table '{table}'. Known tables: {known}.") from None
    physical = getattr(config.tables, table_.value)
    storage = config.storage
    if storage.catalog:
        return TableRef(table_, f"{storage.catalog}.{storage.schema_}.{physical}", None)
    return TableRef(table_, None, str(storage.warehouse_dir / physical))


@dataclass(frozen=True)
class TableStatus:
    """A table's location and current Delta version (``None`` if not created yet)."""

    table: str
    location: str
    version: int | None
    rows: int | None


def list_tables(spark: SparkSession, config: RadlakeConfig) -> list[TableStatus]:
    """Every logical table with its location, current Delta version and row count."""
    statuses = []
    for table in Table:
        ref = table_ref(config, table)
        if ref.exists(spark):
            rows = ref.read(spark).count()
            statuses.append(TableStatus(table.value, ref.location, ref.version(spark), rows))
        else:
            statuses.append(TableStatus(table.value, ref.location, None, None))
    return statuses
