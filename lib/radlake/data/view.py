"""The training view of a detector: labelled frames with their boxes and split, at pinned table versions.

A study with at least one annotation of the detector's class counts as fully
annotated: its frames without a box are negatives (lateral slices without a
vertebral body, for instance). Every table is read at a pinned Delta version, so a
run can be repeated on exactly the same data (``radlake reproduce``).

Columns: ``sop_instance_uid``, ``frame_index``, ``study_instance_uid``, ``split``,
``pixels``, ``dtype``, ``height``, ``width`` and the transform columns
(:data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`: the frame as stored, its values through
:func:`radlake.dicom.pixels.row_values`), ``pixel_spacing`` (row, column mm),
``series_key`` and ``slice_index`` (the frame's stack and place in it: evaluation decodes
the levels of a stack at once, as scoring does), ``boxes_xyxy_px``
(``array<array<double>>``, source pixels, x = column, y = row) and ``labels``
(``array<int>``, 1-based class indices of the detector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from radlake.config import RadlakeConfig
from radlake.dicom.pixels import TRANSFORM_COLUMNS
from radlake.errors import RadlakeError
from radlake.ingest.schema import with_value_columns
from radlake.tables import Table, table_ref

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Tables every view reads; their versions are the run's data versions.
VIEW_TABLES = (Table.IMAGES, Table.ANNOTATIONS, Table.SPLITS)
SPLITS = ("train", "val", "test")
#: ``images`` columns every view carries (never more: the cache holds exactly what the loader reads). A
#: detection view also carries :data:`radlake.dicom.pixels.TRANSFORM_COLUMNS` (frames as stored); the
#: Schmorl's view of crops does not (crops hold their values).
IMAGE_COLUMNS = (
    "sop_instance_uid",
    "frame_index",
    "study_instance_uid",
    "pixels",
    "dtype",
    "height",
    "width",
    "pixel_spacing",
)
#: ``images`` columns that place a frame in its series stack (level detectors' views carry them).
STACK_COLUMNS = ("series_key", "slice_index")


class NoTrainingDataError(RadlakeError):
    """The tables hold no labelled frames for this detector (or none in a split)."""


def pin_versions(
    spark: SparkSession, config: RadlakeConfig, tables: Sequence[Table], versions: Mapping[str, int] | None = None
) -> dict[str, int]:
    """``{table name: Delta version}``: the given versions, else each table's current one.

    Raises
    ------
    NoTrainingDataError
        If a table does not exist yet (naming the command that creates it).
    """
    pinned = {}
    for table in tables:
        ref = table_ref(config, table)
        if versions and table.value in versions:
            pinned[table.value] = int(versions[table.value])
            continue
        if not ref.exists(spark):
            hint = "radlake ingest" if table == Table.IMAGES else "radlake labels import"
            raise NoTrainingDataError(f"Table '{table.value}' ({ref.location}) does not exist yet: run `{hint}` first.")
        pinned[table.value] = ref.version(spark)
    return pinned


def detection_view(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    label_class: str,
    classes: Sequence[str],
    class_column: str,
    versions: Mapping[str, int],
) -> DataFrame:
    """Labelled ``images`` frames with their boxes of ``label_class`` and split (see the module docstring).

    Parameters
    ----------
    label_class
        ``annotations.label_class`` to train on, e.g. ``"vertebra"``.
    classes
        Detector class names; an annotation's class index is the 1-based position of its
        ``class_column`` value in ``classes`` (annotations with another value are left out).
    class_column
        Annotation column holding the class name (``"level"`` for the vertebra detector).
    versions
        Pinned Delta versions from :func:`pin_versions`.
    """
    read = {t: table_ref(config, t).read(spark, version=versions[t.value]) for t in VIEW_TABLES}
    class_index = F.array_position(F.array(*(F.lit(c) for c in classes)), F.col(class_column)).cast("int")
    annotations = (
        read[Table.ANNOTATIONS]
        .where(F.col("label_class") == label_class)
        .withColumn("_class", class_index)
        .where("_class > 0")
    )
    studies = annotations.select("study_instance_uid").distinct()
    boxes = annotations.groupBy("sop_instance_uid", "frame_index").agg(
        F.sort_array(F.collect_list(F.struct(F.col("box_xyxy_px").alias("box"), F.col("_class").alias("cls")))).alias(
            "_boxes"
        )
    )
    return (
        with_value_columns(read[Table.IMAGES])
        .select(*IMAGE_COLUMNS, *TRANSFORM_COLUMNS, *STACK_COLUMNS)
        .join(studies, "study_instance_uid", "left_semi")
        .join(read[Table.SPLITS].select("study_instance_uid", "split"), "study_instance_uid")
        .join(boxes, ["sop_instance_uid", "frame_index"], "left")
        .select(
            *IMAGE_COLUMNS,
            *TRANSFORM_COLUMNS,
            *STACK_COLUMNS,
            "split",
            F.coalesce(F.expr("transform(_boxes, b -> b.box)"), F.array().cast("array<array<double>>")).alias(
                "boxes_xyxy_px"
            ),
            F.coalesce(F.expr("transform(_boxes, b -> b.cls)"), F.array().cast("array<int>")).alias("labels"),
        )
    )
