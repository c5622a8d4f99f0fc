"""Logical table names and where each table lives.

radlake code names tables by their logical name (:class:`Table`). Locally each one is
a path-based Delta table ``<warehouse>/<name>``; on Databricks (``storage.catalog``
set) a Unity Catalog table ``catalog.schema.name``. Either way the data is plain
Delta, readable by any Delta reader (Spark, the ``deltalake`` package, Databricks SQL).

:class:`TableRef` creates, versions and MERGEs tables on both kinds of session: through
``delta.tables.DeltaTable`` on a classic one, through SQL (``DESCRIBE HISTORY``, ``CREATE
TABLE IF NOT EXISTS ... USING delta``, ``MERGE INTO ... USING <temporary view>``) over Spark
Connect, where ``DeltaTable`` needs Delta Connect's server plugin (a plain Spark Connect
server has none). A path-based table is ``delta.`<path>``` in SQL.

Example
-------
>>> from radlake.config import load_config
>>> ref = table_ref(load_config(overrides=["storage.root=/tmp/rl"]), "instances")
>>> ref.location
'/tmp/rl/warehouse/instances'

"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from radlake.config import RadlakeConfig
from radlake.errors import ConfigError
from radlake.spark import is_connect

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructField, StructType


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

    @property
    def sql_name(self) -> str:
        """The table in SQL: its Unity Catalog name, else ``delta.`<path>```."""
        if self.name:
            return self.name
        return "delta.`{}`".format((self.path or "").replace("`", "``"))

    def read(self, spark: SparkSession, *, version: int | None = None) -> DataFrame:
        """Read the table, optionally as of a Delta version (time travel)."""
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        return reader.table(self.name) if self.name else reader.load(self.path)

    def exists(self, spark: SparkSession) -> bool:
        """True if a Delta table is at this location."""
        if self.name:
            return bool(spark.catalog.tableExists(self.name))
        if _delta_api(spark):
            from delta.tables import DeltaTable

            return bool(DeltaTable.isDeltaTable(spark, self.path))
        return self._last_commit(spark) is not None

    def delta_table(self, spark: SparkSession):  # -> delta.tables.DeltaTable
        """The ``delta.tables.DeltaTable`` handle (vacuum, optimize...) on a classic session.

        Over Spark Connect the handle needs Delta Connect's server plugin, which a plain
        Spark Connect server lacks: radlake's own code uses :meth:`version`, :meth:`ensure`
        and :meth:`merge`, which work on both kinds of session.
        """
        from delta.tables import DeltaTable

        return DeltaTable.forName(spark, self.name) if self.name else DeltaTable.forPath(spark, self.path)

    def version(self, spark: SparkSession) -> int:
        """The table's current Delta version (pin it to read the same data again later).

        Raises
        ------
        ValueError
            Over Spark Connect, if no Delta table is at this location.
        """
        if _delta_api(spark):
            return int(self.delta_table(spark).history(1).select("version").first()["version"])
        version = self._last_commit(spark)
        if version is None:
            raise ValueError(f"No Delta table at {self.location}.")
        return version

    def _last_commit(self, spark: SparkSession) -> int | None:
        """The version of the table's latest commit (``DESCRIBE HISTORY``), or None if no Delta table is here."""
        from pyspark.errors import AnalysisException

        try:
            row = spark.sql(f"DESCRIBE HISTORY {self.sql_name} LIMIT 1").select("version").first()
        except AnalysisException:  # not a Delta table (or no folder at all)
            return None
        return None if row is None else int(row["version"])

    def ensure(self, spark: SparkSession, schema: StructType, *, properties: Mapping[str, str] | None = None) -> bool:
        """Create the table empty with ``schema`` (and table ``properties``) if it does not exist yet.

        Returns True if this call created it, so that the caller knows it is empty without
        reading it (a no-op returning False if it exists: see :meth:`set_properties` for its properties).
        """
        if self.exists(spark):
            return False
        if _delta_api(spark):
            from delta.tables import DeltaTable

            builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
            for key, value in (properties or {}).items():
                builder = builder.property(key, value)
            builder = builder.tableName(self.name) if self.name else builder.location(self.path)
            builder.execute()
        else:
            with_properties = f" TBLPROPERTIES ({_properties_sql(properties)})" if properties else ""
            spark.sql(f"CREATE TABLE IF NOT EXISTS {self.sql_name} ({schema_ddl(schema)}) USING delta{with_properties}")
        return True

    def set_properties(self, spark: SparkSession, properties: Mapping[str, str]) -> dict[str, str]:
        """Set the table ``properties`` whose value differs, in one Delta commit; returns those it set.

        Delta hands a table's properties to the Parquet writer of every later write to it
        (appends, MERGE rewrites, OPTIMIZE): ``parquet.block.row.count.limit``, for example,
        bounds the rows of each row group. Files written before keep their layout.
        """
        current = {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {self.sql_name}").collect()}
        changed = {key: str(value) for key, value in properties.items() if current.get(key) != str(value)}
        if changed:
            spark.sql(f"ALTER TABLE {self.sql_name} SET TBLPROPERTIES ({_properties_sql(changed)})")
        return changed

    def add_missing_columns(self, spark: SparkSession, schema: StructType) -> list[str]:
        """Add the columns of ``schema`` that the table lacks (at the end, nullable), in one Delta commit.

        For a table written before a column existed: its rows read the new columns as null.
        Returns the names added; none (and no commit) if the table has them all.

        Example::

            ref.add_missing_columns(spark, IMAGES)  # ['rescale_slope', ...] once, then []
        """
        from pyspark.sql.types import StructType

        present = {name.lower() for name in self.read(spark).columns}
        missing = [f for f in schema.fields if f.name.lower() not in present]
        if missing:
            spark.sql(f"ALTER TABLE {self.sql_name} ADD COLUMNS ({schema_ddl(StructType(missing))})")
        return [f.name for f in missing]

    def append(self, df: DataFrame, *, compression: str | None = None) -> None:
        """Append ``df``'s rows in one Delta commit (``compression``: the Parquet codec, default Spark's)."""
        self._write(df, "append", compression)

    def overwrite(self, df: DataFrame) -> None:
        """Replace the table's rows with ``df``'s in one Delta commit (older versions stay readable)."""
        self._write(df, "overwrite", None)

    def _write(self, df: DataFrame, mode: str, compression: str | None) -> None:
        writer = df.write.format("delta").mode(mode)
        if compression:
            writer = writer.option("compression", compression)
        writer.saveAsTable(self.name) if self.name else writer.save(self.path)

    def merge(
        self,
        spark: SparkSession,
        source: DataFrame,
        *,
        keys: Sequence[str],
        update_columns: Sequence[str] | None = None,
        insert: bool = True,
        schema: StructType | None = None,
        delete_when: str | None = None,
        insert_when: str | None = None,
        insert_columns: Sequence[str] | None = None,
    ) -> None:
        """Delta MERGE of ``source`` into the table on ``keys``: insert new rows, optionally update some columns.

        Idempotent: merging the same rows twice leaves one copy, so a run killed halfway
        and started again duplicates nothing. ``schema`` creates the table first if missing.

        A classic session merges through ``delta.tables.DeltaTable``; Spark Connect, which
        has no ``DeltaTable`` without Delta Connect's server plugin, through the same MERGE in
        SQL from a temporary view of ``source`` (dropped afterwards). Conditions are SQL on
        the target ``t`` and the source ``s``.

        Parameters
        ----------
        keys
            Columns that identify a row (compared null-safe: ``t.k <=> s.k``).
        update_columns
            Columns of a matched row set from the source (none: matched rows are kept).
        insert
            Insert the source rows that match none (all columns, or ``insert_columns``).
        schema
            Create the table with this schema first if it does not exist.
        delete_when
            Delete the matched rows for which this condition holds (checked before the update).
        insert_when
            Insert only the unmatched source rows for which this condition holds.
        insert_columns
            Insert these columns of the source (the table's columns), not all of them.

        Example::

            ref.merge(spark, new_rows, keys=["sop_instance_uid"])                     # insert-only
            ref.merge(spark, stacks, keys=["series_key"], update_columns=["slices"])  # upsert
            ref.merge(spark, actions, keys=["annotation_id"], delete_when="s._action = 'delete'",
                      insert_when="s._action = 'insert'", insert_columns=table_columns)
        """
        if not keys:
            raise ValueError("Argument 'keys' must name at least one column, got none.")
        if schema is not None:
            self.ensure(spark, schema)
        condition = " AND ".join(f"t.{_quote(k)} <=> s.{_quote(k)}" for k in keys)
        updates = {c: f"s.{_quote(c)}" for c in update_columns or ()}  # column name -> source expression
        values = {c: f"s.{_quote(c)}" for c in insert_columns} if insert_columns else None
        if _delta_api(spark):
            builder = self.delta_table(spark).alias("t").merge(source.alias("s"), condition)
            if delete_when:
                builder = builder.whenMatchedDelete(condition=delete_when)
            if updates:
                builder = builder.whenMatchedUpdate(set=updates)
            if insert:
                if values is None:
                    builder = builder.whenNotMatchedInsertAll(condition=insert_when)
                else:
                    builder = builder.whenNotMatchedInsert(condition=insert_when, values=values)
            builder.execute()
            return
        clauses = []
        if delete_when:
            clauses.append(f"WHEN MATCHED AND ({delete_when}) THEN DELETE")
        if updates:
            clauses.append(
                "WHEN MATCHED THEN UPDATE SET " + ", ".join(f"t.{_quote(c)} = {v}" for c, v in updates.items())
            )
        if insert:
            when = f"WHEN NOT MATCHED AND ({insert_when})" if insert_when else "WHEN NOT MATCHED"
            if values is None:
                clauses.append(f"{when} THEN INSERT *")
            else:
                names = ", ".join(_quote(c) for c in values)
                clauses.append(f"{when} THEN INSERT ({names}) VALUES ({', '.join(values.values())})")
        if not clauses:
            return  # nothing to do: no update, no delete, no insert
        view = f"radlake_merge_{uuid.uuid4().hex}"
        source.createOrReplaceTempView(view)
        try:
            spark.sql(f"MERGE INTO {self.sql_name} t USING {view} s ON {condition} " + " ".join(clauses))
        finally:
            spark.catalog.dropTempView(view)


def _delta_api(spark: SparkSession) -> bool:
    """Whether ``delta.tables.DeltaTable`` serves this session: a classic one (Spark Connect needs a server plugin)."""
    return not is_connect(spark)


def _quote(name: str) -> str:
    return "`{}`".format(name.replace("`", "``"))


def _properties_sql(properties: Mapping[str, str]) -> str:
    """``'key' = 'value', ...`` for ``TBLPROPERTIES`` (single quotes in a value doubled)."""
    return ", ".join(f"'{key}' = '{str(value).replace(chr(39), chr(39) * 2)}'" for key, value in properties.items())


def schema_ddl(schema: StructType) -> str:
    """``schema`` as the column list of a ``CREATE TABLE`` (names quoted; NOT NULL and comments kept).

    Without a session (``StructType.toDDL`` asks the active one). Nested types are written
    in Spark's simple form, so a nested field's NOT NULL and an array's ``containsNull=False``
    are not expressed (radlake's tables have neither).

    Examples
    --------
    >>> from pyspark.sql.types import LongType, StringType, StructField, StructType
    >>> schema_ddl(StructType([StructField("id", LongType(), False), StructField("name", StringType())]))
    '`id` bigint NOT NULL, `name` string'
    """
    columns = []
    for field in schema.fields:
        column = f"{_quote(field.name)} {field.dataType.simpleString()}"
        if not field.nullable:
            column += " NOT NULL"
        if comment := field.metadata.get("comment"):
            column += " COMMENT '{}'".format(str(comment).replace("\\", "\\\\").replace("'", "\\'"))
        columns.append(column)
    return ", ".join(columns)


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


def struct_fields(*spec: tuple[str, object]) -> list[StructField]:
    """Nullable ``StructField``s from ``(name, type)`` pairs (every radlake table's columns are nullable)."""
    from pyspark.sql.types import StructField

    return [StructField(name, dtype, True) for name, dtype in spec]  # type: ignore[arg-type]
