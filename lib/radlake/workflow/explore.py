"""Summaries of radlake's tables for people: what the notebooks show.

Every function returns a lazy Spark DataFrame of aggregates (or, for thumbnails, a few
small PNGs rendered on the executors); nothing reads pixel data on the driver.

* :func:`archive_counts`, :func:`series_by_plane`, :func:`transfer_syntaxes`,
  :func:`quarantine_reasons`, :func:`thumbnails`: ``notebooks/01_explore_archive``.
* :func:`scoring_coverage`, :func:`findings_of_pair`, :func:`level_counts`,
  :func:`latest_model_pair`: ``notebooks/03_review_findings``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructType

from radlake.config import RadlakeConfig
from radlake.dicom.pixels import VALUE_COLUMNS
from radlake.ingest.schema import with_value_columns
from radlake.models.levels import LEVELS
from radlake.score.schema import model_pair_filter
from radlake.spark import local_frame
from radlake.tables import Table, struct_fields, table_ref

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: What :func:`render_thumbnails` yields per frame.
THUMBNAIL = StructType(
    struct_fields(
        ("series_key", StringType()),
        ("study_instance_uid", StringType()),
        ("plane", StringType()),
        ("slice_index", IntegerType()),
        ("height", IntegerType()),
        ("width", IntegerType()),
        ("png", BinaryType()),
    )
)


def _read(spark: SparkSession, config: RadlakeConfig, table: Table) -> DataFrame:
    ref = table_ref(config, table)
    if not ref.exists(spark):
        raise FileNotFoundError(
            f"Table '{table.value}' does not exist at {ref.location}: run the step that writes it "
            f"({'radlake score' if table in (Table.PREDICTIONS, Table.STUDY_FINDINGS) else 'radlake ingest'})."
        )
    return ref.read(spark)


def archive_counts(spark: SparkSession, config: RadlakeConfig) -> dict[str, int]:
    """Studies, series stacks, instances, frames and quarantined items (one small aggregate per table)."""
    instances = _read(spark, config, Table.INSTANCES)
    row = instances.agg(
        F.countDistinct("study_instance_uid").alias("studies"),
        F.countDistinct("series_instance_uid").alias("series"),
        F.count("*").alias("instances"),
    ).first()
    counts = {k: int(row[k]) for k in ("studies", "series", "instances")}
    counts["series_stacks"] = _read(spark, config, Table.SERIES).count()
    counts["frames"] = _read(spark, config, Table.IMAGES).count()
    quarantine = table_ref(config, Table.QUARANTINE)
    counts["quarantined"] = quarantine.read(spark).count() if quarantine.exists(spark) else 0
    return counts


def series_by_plane(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """Series stacks per plane and modality, with their slice counts (min / median / max)."""
    return (
        _read(spark, config, Table.SERIES)
        .groupBy("plane", "modality")
        .agg(
            F.count("*").alias("series_stacks"),
            F.countDistinct("study_instance_uid").alias("studies"),
            F.min("slice_count").alias("min_slices"),
            F.percentile_approx("slice_count", 0.5).alias("median_slices"),
            F.max("slice_count").alias("max_slices"),
        )
        .orderBy(F.desc("series_stacks"), "plane")
    )


def transfer_syntaxes(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """Instances per transfer syntax, with its name from pydicom's UID dictionary."""
    from pydicom.uid import UID_dictionary

    names = local_frame(
        spark,
        [(uid, entry[0]) for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"],
        "transfer_syntax_uid string, transfer_syntax string",
    )
    return (
        _read(spark, config, Table.INSTANCES)
        .groupBy("transfer_syntax_uid")
        .agg(F.count("*").alias("instances"), F.countDistinct("series_instance_uid").alias("series"))
        .join(F.broadcast(names), "transfer_syntax_uid", "left")
        .select(
            "transfer_syntax_uid",
            F.coalesce("transfer_syntax", F.lit("(unknown)")).alias("name"),
            "instances",
            "series",
        )
        .orderBy(F.desc("instances"))
    )


def quarantine_reasons(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """Quarantined items per stage and error class, with one example message and path each."""
    ref = table_ref(config, Table.QUARANTINE)
    if not ref.exists(spark):
        return spark.createDataFrame([], "stage string, error_class string, items long, example string, path string")
    return (
        ref.read(spark)
        .groupBy("stage", "error_class")
        .agg(
            F.count("*").alias("items"),
            F.min("error_message").alias("example"),
            F.min(F.concat_ws("!", "path", "member")).alias("path"),
        )
        .orderBy(F.desc("items"), "stage", "error_class")
    )


def render_thumbnails(batches: Iterator[pa.RecordBatch], *, size_px: int) -> Iterator[pa.RecordBatch]:
    """Executor side: frames → PNG thumbnails whose longer side is ``size_px`` pixels.

    The display window is that of ``radlake review`` (1st–99th percentile,
    :func:`radlake.score.review.window_to_uint8`); resampling is PIL's area filter on the
    stored pixel grid (row and column spacing are not equalised).
    """
    from PIL import Image
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.dicom.pixels import row_values
    from radlake.score.review import window_to_uint8

    schema = to_arrow_schema(THUMBNAIL)
    for batch in batches:
        rows = []
        for row in batch.to_pylist():
            grey = window_to_uint8(row_values(row))
            image = Image.fromarray(grey, mode="L")
            scale = size_px / max(row["height"], row["width"])
            image = image.resize(
                (max(1, round(row["width"] * scale)), max(1, round(row["height"] * scale))), Image.Resampling.BOX
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            rows.append({k: row[k] for k in THUMBNAIL.names if k != "png"} | {"png": buffer.getvalue()})
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def thumbnails(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    count: int = 4,
    planes: Sequence[str] = ("SAGITTAL",),
    size_px: int = 128,
) -> DataFrame:
    """The central slice of up to ``count`` series stacks of the given planes, as PNG thumbnails.

    Stacks are taken in order of ``series_key`` (a hash: an arbitrary but repeatable sample).
    Rendered on the executors (:func:`render_thumbnails`); collect the result, it is small
    (``count`` PNGs of at most ``size_px`` x ``size_px`` pixels).

    Raises
    ------
    ValueError
        If ``count`` or ``size_px`` < 1.
    """
    from radlake.score.review import central_slices

    if count < 1 or size_px < 1:
        raise ValueError(f"Arguments 'count' and 'size_px' must be >= 1, got {count} and {size_px}.")
    images = with_value_columns(_read(spark, config, Table.IMAGES)).where(F.col("plane").isin(list(planes)))
    stacks = images.select("series_key").distinct().orderBy("series_key").limit(count)
    frames = central_slices(images.join(stacks, "series_key", "left_semi"), 1).select(
        "series_key", "study_instance_uid", "plane", "slice_index", *VALUE_COLUMNS
    )
    return frames.mapInArrow(partial(render_thumbnails, size_px=int(size_px)), THUMBNAIL).orderBy("series_key")


def latest_model_pair(spark: SparkSession, config: RadlakeConfig) -> tuple[str, str]:
    """``(vertebra_model_uri, schmorl_model_uri)`` of the most recent scoring run in ``predictions``.

    Raises
    ------
    FileNotFoundError
        If nothing has been scored yet.
    """
    row = (
        _read(spark, config, Table.PREDICTIONS)
        .groupBy("vertebra_model_uri", "schmorl_model_uri")
        .agg(F.max("scored_at").alias("last"))
        .orderBy(F.desc("last"), F.desc("vertebra_model_uri"), F.desc("schmorl_model_uri"))
        .first()
    )
    if row is None:
        raise FileNotFoundError("Table 'predictions' is empty: run `radlake score` first.")
    return row["vertebra_model_uri"], row["schmorl_model_uri"]


def scoring_coverage(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """Per model pair: frames scored out of the sagittal frames in ``images``, boxes found, last run."""
    sagittal = _read(spark, config, Table.IMAGES).where(F.col("plane") == "SAGITTAL").count()
    return (
        _read(spark, config, Table.PREDICTIONS)
        .groupBy("vertebra_model_uri", "schmorl_model_uri")
        .agg(
            F.count("*").alias("frames_scored"),
            F.sum(F.size("vertebrae")).alias("vertebrae"),
            F.sum(F.size("schmorl_nodes")).alias("schmorl_nodes"),
            F.sum((F.size("schmorl_nodes") > 0).cast("int")).alias("frames_with_nodes"),
            F.max("scored_at").alias("last_scored_at"),
        )
        .withColumn("sagittal_frames_in_images", F.lit(sagittal))
        .orderBy(F.desc("last_scored_at"))
    )


def findings_of_pair(spark: SparkSession, config: RadlakeConfig, model_pair: Sequence[str]) -> DataFrame:
    """``study_findings`` of one model pair, strongest first (max Schmorl's-node score)."""
    vertebra_uri, schmorl_uri = model_pair
    return (
        _read(spark, config, Table.STUDY_FINDINGS)
        .where(model_pair_filter(vertebra_uri, schmorl_uri))
        .select(
            "study_instance_uid",
            "series_key",
            "frames_scored",
            F.array_join("levels_with_nodes", ", ").alias("levels_with_nodes"),
            F.size("levels_seen").alias("levels_seen"),
            F.round("max_score", 3).alias("max_score"),
        )
        .orderBy(F.desc_nulls_last("max_score"), "series_key")
    )


def level_counts(spark: SparkSession, config: RadlakeConfig, model_pair: Sequence[str]) -> DataFrame:
    """Per vertebral level (head to feet): series with nodes, nodes, frames and the highest score.

    Levels with no finding are listed with zeros, so the table always has every level of
    :data:`radlake.models.levels.LEVELS`.
    """
    vertebra_uri, schmorl_uri = model_pair
    found = (
        _read(spark, config, Table.STUDY_FINDINGS)
        .where(model_pair_filter(vertebra_uri, schmorl_uri))
        .select("series_key", F.explode("level_findings").alias("f"))
        .groupBy(F.col("f.level").alias("level"))
        .agg(
            F.countDistinct("series_key").alias("series_with_nodes"),
            F.sum("f.nodes").alias("nodes"),
            F.sum("f.frames").alias("frames"),
            F.round(F.max("f.max_score"), 3).alias("max_score"),
        )
    )
    levels = local_frame(spark, list(enumerate(LEVELS)), "order int, level string")
    return (
        levels.join(found, "level", "left")
        .fillna(0, subset=["series_with_nodes", "nodes", "frames"])
        .orderBy("order")
        .drop("order")
    )


def level_counts_figure(counts: Any, title: str = "Schmorl's nodes per level"):
    """Bar chart of ``nodes`` per level from the (small, collected) :func:`level_counts` pandas frame."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend needed, display() on Databricks shows it

    fig = Figure(figsize=(max(4, 0.35 * len(counts)), 3))
    ax = fig.subplots()
    ax.bar(counts["level"], counts["nodes"], color="#c0399c")
    ax.set_xlabel("vertebral level (head → feet)")
    ax.set_ylabel("Schmorl's nodes")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    return fig


def thumbnail_sheet(rows: Sequence[Any], *, columns: int = 4, caption_px: int = 14):
    """One PIL image of collected :func:`thumbnails` rows in a grid, each captioned with plane and series.

    Parameters
    ----------
    rows
        Rows (or mappings) with ``png``, ``plane``, ``series_key`` and ``slice_index``.
    columns
        Thumbnails per row of the sheet.
    caption_px
        Height of the caption strip under each thumbnail, in pixels.

    Raises
    ------
    ValueError
        If ``rows`` is empty.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("No thumbnails to arrange: the table has no frame of the requested planes.")
    tiles = [Image.open(io.BytesIO(r["png"])).convert("L") for r in rows]
    cell_w = max(t.width for t in tiles)
    cell_h = max(t.height for t in tiles) + caption_px
    cols = max(1, min(columns, len(tiles)))
    n_rows = -(-len(tiles) // cols)
    sheet = Image.new("L", (cols * cell_w, n_rows * cell_h), color=0)
    draw = ImageDraw.Draw(sheet)
    for i, (tile, row) in enumerate(zip(tiles, rows, strict=True)):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        sheet.paste(tile, (x, y))
        draw.text(
            (x + 2, y + tile.height + 1), f"{row['plane'][:3]} {row['series_key'][:8]} #{row['slice_index']}", fill=255
        )
    return sheet
