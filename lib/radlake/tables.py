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
    from pyspark.sql import DataFrame, SparkSession


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
            last = ref.delta_table(spark).history(1).select("version").first()
            rows = ref.read(spark).count()
            statuses.append(TableStatus(table.value, ref.location, int(last["version"]), rows))
        else:
            statuses.append(TableStatus(table.value, ref.location, None, None))
    return statuses
