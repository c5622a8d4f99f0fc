"""``radlake crops``: vertebra crops of the labelled frames, for the Schmorl's-node stage.

Order of work:

1. the vertebra model URI (``crops.vertebra_model``, default the champion of
   ``models.vertebra``) is resolved to a concrete version before anything is read;
2. the labelled frames (``images`` of studies with vertebra annotations) still
   without crops from this model and source are chosen;
3. ``predicted`` crops: the model runs over those frames as an MLflow pyfunc Spark
   UDF; its boxes at or above ``crops.min_score`` (boxes and scores only, no pixels),
   except those its level decoding puts outside the labelled levels, are kept for the
   cut. ``ground_truth`` crops: the labelled vertebra boxes. ``both``: each;
4. on the executors, each frame is decoded once and every vertebra of it is cut,
   resampled (:mod:`radlake.models.crops`) and given the Schmorl's nodes inside it in
   crop pixels;
5. the rows are appended to ``vertebra_crops`` in one Delta commit (the frames already
   cropped by this model and source were left out in step 2, so a killed run leaves
   all rows or none, and a re-run adds nothing).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from radlake.config import RadlakeConfig
from radlake.data.schema import VERTEBRA_CROPS
from radlake.data.view import NoTrainingDataError
from radlake.dicom.pixels import VALUE_COLUMNS
from radlake.ingest.schema import with_value_columns
from radlake.summary import Summary
from radlake.tables import Table, table_ref

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from radlake.models.resolve import ResolvedModel

#: Columns the executors produce; the run columns are added in Spark.
_RUN_COLUMNS = (
    "vertebra_model_uri",
    "vertebra_model_name",
    "vertebra_model_version",
    "vertebra_model_run_id",
    "crops_run_id",
    "created_at",
)
SOURCES = ("predicted", "ground_truth")
#: What :func:`cut_crops` yields: :data:`VERTEBRA_CROPS` without the run columns.
CROP_RESULT = StructType([f for f in VERTEBRA_CROPS.fields if f.name not in _RUN_COLUMNS])


@dataclass(frozen=True)
class CropsSummary(Summary):
    """What one ``radlake crops`` run did."""

    run_id: str
    vertebra_model: dict
    sources: list[str]
    frames: int
    new_crops: int
    crops_with_nodes: int
    table_version: int
    seconds: float


def crop_id(model_uri: str, source: str, sop_instance_uid: str, frame_index: int, box) -> str:
    """Key of a crop: sha256 of the model URI, source, frame and the vertebra box rounded to 1/1000 pixel."""
    text = "|".join([model_uri, source, sop_instance_uid, str(frame_index), *(f"{float(v):.3f}" for v in box)])
    return hashlib.sha256(text.encode()).hexdigest()


def cut_crops(batches: Iterator[pa.RecordBatch], *, margin_fraction: float, size: int, model_uri: str):
    """Executor side: frames with their ``vertebrae`` and ``nodes`` → one row per crop.

    Input columns: the ``images`` key and pixel columns, ``series_instance_uid``,
    ``vertebrae`` (``array<struct<source, level, score, box>>``, source pixels) and
    ``nodes`` (``array<struct<box, parent_level, endplate>>``). Output: the columns of
    :data:`VERTEBRA_CROPS` except the run columns.
    """
    import numpy as np

    from radlake.models.crops import cut_stored_frame, nodes_in_crop

    out_schema = _executor_schema()
    for batch in batches:
        rows: list[dict[str, Any]] = []
        for frame_row in batch.to_pylist():
            vertebrae = frame_row["vertebrae"] or []
            if not vertebrae:
                continue
            nodes = frame_row["nodes"] or []
            node_boxes = np.array([n["box"] for n in nodes], dtype=np.float64).reshape(-1, 4)
            crops = cut_stored_frame(frame_row, [v["box"] for v in vertebrae], margin_fraction, size)
            for v, crop in zip(vertebrae, crops, strict=True):
                geometry = crop.geometry
                inside = nodes_in_crop(node_boxes, geometry.region_xyxy_px)
                mapped = np.clip(geometry.boxes_to_crop(node_boxes[inside]), 0, size)
                kept = [(int(i), b) for i, b in zip(inside, mapped, strict=True) if b[2] > b[0] and b[3] > b[1]]
                boxes = [np.round(b, 3).tolist() for _, b in kept]
                keep = [i for i, _ in kept]
                rows.append(
                    {
                        "crop_id": crop_id(
                            model_uri, v["source"], frame_row["sop_instance_uid"], frame_row["frame_index"], v["box"]
                        ),
                        **{
                            k: frame_row[k]
                            for k in ("sop_instance_uid", "frame_index", "study_instance_uid", "series_instance_uid")
                        },
                        "source": v["source"],
                        "level": v["level"],
                        "vertebra_score": v["score"],
                        "vertebra_box_xyxy_px": [float(x) for x in v["box"]],
                        "crop_box_xyxy_px": list(geometry.region_xyxy_px),
                        "crop_scale": geometry.scale,
                        "source_height": frame_row["height"],
                        "source_width": frame_row["width"],
                        "pixels": crop.pixels,
                        "dtype": crop.dtype,
                        "height": size,
                        "width": size,
                        "pixel_spacing": crop.pixel_spacing,
                        "boxes_xyxy_px": boxes,
                        "labels": [1] * len(boxes),
                        "node_parent_levels": [nodes[i]["parent_level"] for i in keep],
                        "node_endplates": [nodes[i]["endplate"] for i in keep],
                    }
                )
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=out_schema)


def _executor_schema() -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(CROP_RESULT)


def labelled_frames(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """``images`` frames of the studies with vertebra annotations (the frames the stages train and test on)."""
    images = with_value_columns(table_ref(config, Table.IMAGES).read(spark))
    annotations = table_ref(config, Table.ANNOTATIONS).read(spark)
    studies = annotations.where("label_class = 'vertebra'").select("study_instance_uid").distinct()
    return images.join(studies, "study_instance_uid", "left_semi")


def _box_struct(source: str, level, score, box):
    return F.struct(
        F.lit(source).alias("source"), level.alias("level"), score.cast("double").alias("score"), box.alias("box")
    )


def predicted_vertebrae(frames: DataFrame, model: ResolvedModel, min_score: float) -> DataFrame:
    """``(sop_instance_uid, frame_index, vertebrae)`` from the vertebra model run as a pyfunc Spark UDF.

    ``frames`` are ``images`` rows (with their transform columns): the model gets their values.
    """
    from radlake.models.model_input import model_input_frames
    from radlake.models.pyfunc import detections_column

    inputs = model_input_frames(frames.select("sop_instance_uid", "frame_index", *VALUE_COLUMNS, "pixel_spacing"))
    scored = inputs.select(
        "sop_instance_uid", "frame_index", detections_column(frames.sparkSession, model.uri).alias("_d")
    )
    box = F.array(F.col("d.x0"), F.col("d.y0"), F.col("d.x1"), F.col("d.y1"))
    # Bodies the model's decoding puts outside the labelled levels (a sacral segment, a false
    # detection) get no crop, as in scoring; detectors without a level status keep every body.
    return (
        scored.select("sop_instance_uid", "frame_index", F.explode("_d").alias("d"))
        .where(F.col("d.score") >= min_score)
        .where(~F.coalesce(F.col("d.level_status") == "outside", F.lit(False)))
        .groupBy("sop_instance_uid", "frame_index")
        .agg(F.collect_list(_box_struct("predicted", F.col("d.level"), F.col("d.score"), box)).alias("vertebrae"))
    )


def labelled_vertebrae(annotations: DataFrame) -> DataFrame:
    """``(sop_instance_uid, frame_index, vertebrae)`` from the labelled vertebra boxes (no score)."""
    return (
        annotations.where("label_class = 'vertebra'")
        .groupBy("sop_instance_uid", "frame_index")
        .agg(
            F.collect_list(_box_struct("ground_truth", F.col("level"), F.lit(None), F.col("box_xyxy_px"))).alias(
                "vertebrae"
            )
        )
    )


def frame_nodes(annotations: DataFrame) -> DataFrame:
    """``(sop_instance_uid, frame_index, nodes)``: the labelled Schmorl's nodes of each frame (source pixels)."""
    return (
        annotations.where("label_class = 'schmorl_node'")
        .groupBy("sop_instance_uid", "frame_index")
        .agg(
            F.collect_list(F.struct(F.col("box_xyxy_px").alias("box"), F.col("parent_level"), F.col("endplate"))).alias(
                "nodes"
            )
        )
    )


def sources_of(config: RadlakeConfig) -> list[str]:
    """The crop sources that ``crops.source`` asks for."""
    return list(SOURCES) if config.crops.source == "both" else [config.crops.source]


def make_crops(spark: SparkSession, config: RadlakeConfig, *, vertebra_model: str | None = None) -> CropsSummary:
    """Build the missing crops of the labelled frames (see the module docstring).

    Raises
    ------
    ModelNotFoundError
        If the vertebra model URI does not resolve (before any data is read).
    NoTrainingDataError
        If ``images`` or ``annotations`` does not exist, or no frame is labelled.
    """
    from radlake.models.resolve import resolve_model_uri
    from radlake.spark import persist, unpersist
    from radlake.tracking import configure_mlflow

    started = time.perf_counter()
    configure_mlflow(config)
    model = resolve_model_uri(vertebra_model or config.crops.model_uri(config.models))
    for table, hint in ((Table.IMAGES, "radlake ingest"), (Table.ANNOTATIONS, "radlake labels import")):
        if not table_ref(config, table).exists(spark):
            raise NoTrainingDataError(f"Table '{table.value}' does not exist yet: run `{hint}` first.")
    ref = table_ref(config, Table.VERTEBRA_CROPS)
    ref.ensure(spark, VERTEBRA_CROPS)
    run_id = uuid.uuid4().hex
    annotations = table_ref(config, Table.ANNOTATIONS).read(spark)
    frames = labelled_frames(spark, config)
    n_frames = frames.count()
    if n_frames == 0:
        raise NoTrainingDataError("No labelled frames: import labels with `radlake labels import` first.")
    existing = ref.read(spark).where(F.col("vertebra_model_uri") == model.uri)
    sources = sources_of(config)
    parts = []
    for source in sources:
        done = existing.where(F.col("source") == source).select("sop_instance_uid", "frame_index").distinct()
        todo = frames.join(done, ["sop_instance_uid", "frame_index"], "left_anti")
        if source == "predicted":
            boxes = persist(predicted_vertebrae(todo, model, config.crops.min_score))
        else:
            boxes = labelled_vertebrae(annotations).join(
                todo.select("sop_instance_uid", "frame_index"), ["sop_instance_uid", "frame_index"], "left_semi"
            )
        parts.append((todo, boxes))
    now = datetime.now(UTC)
    run_columns = {
        "vertebra_model_uri": F.lit(model.uri),
        "vertebra_model_name": F.lit(model.name),
        "vertebra_model_version": F.lit(model.version),
        "vertebra_model_run_id": F.lit(model.run_id),
        "crops_run_id": F.lit(run_id),
        "created_at": F.lit(now),
    }
    cut = partial(cut_crops, margin_fraction=config.crops.margin_fraction, size=config.crops.size, model_uri=model.uri)
    nodes = frame_nodes(annotations)
    new = None
    for todo, boxes in parts:
        work = (
            todo.select(
                "sop_instance_uid",
                "frame_index",
                "study_instance_uid",
                "series_instance_uid",
                *VALUE_COLUMNS,
                "pixel_spacing",
            )
            .join(boxes, ["sop_instance_uid", "frame_index"])
            .join(nodes, ["sop_instance_uid", "frame_index"], "left")
        )
        crops = work.mapInArrow(cut, CROP_RESULT)
        new = crops if new is None else new.unionByName(crops)
    columns = [f.name for f in VERTEBRA_CROPS.fields]
    ref.append(new.withColumns(run_columns).select(*columns))
    for _, boxes in parts:
        unpersist(boxes)
    written = ref.read(spark).where(F.col("crops_run_id") == run_id)
    stats = written.agg(F.count("*").alias("n"), F.sum(F.expr("int(size(labels) > 0)")).alias("with_nodes")).first()
    return CropsSummary(
        run_id=run_id,
        vertebra_model=model.as_dict(),
        sources=sources,
        frames=n_frames,
        new_crops=int(stats["n"] or 0),
        crops_with_nodes=int(stats["with_nodes"] or 0),
        table_version=ref.version(spark),
        seconds=round(time.perf_counter() - started, 2),
    )
