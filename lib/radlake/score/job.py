"""``radlake score``: both detectors over every frame of ``images``, findings to Delta.

Order of work:

1. both model URIs (``score.vertebra_model`` / ``score.schmorl_model``, default the
   champions of ``models.vertebra`` / ``models.schmorl``) are resolved to concrete
   versions and their pyfunc signatures checked, before any data is read;
2. the frames not yet scored by this model pair are chosen (``images`` anti-joined
   with ``predictions`` on the frame and the two pinned URIs); frames whose stored
   pixels cannot be decoded (no pixels, unknown dtype, wrong byte count) are skipped
   and counted by reason, as are the files that failed decoding at ingest
   (``quarantine``, stage ``pixels``);
3. stage 1, the vertebra detector, runs on each frame as an MLflow pyfunc Spark UDF
   (``params``: ``score_threshold = score.vertebra_threshold``, ``batch_size``);
4. on the executors, each frame's vertebrae are cut into crops
   (:mod:`radlake.models.crops`, ``crops.margin_fraction`` and ``crops.size``: the
   settings the Schmorl's model was trained with);
5. stage 2, the Schmorl's-node detector, runs on each crop as a second UDF
   (``score_threshold = score.schmorl_threshold``); its boxes are mapped back to the
   frame's pixels;
6. per series stack (:mod:`radlake.score.stacks`), the levels of all its vertebrae are
   decoded at once over the stack's frames (``score.level_min_probability``: below it a
   level is ``uncertain`` and not named), the same node found in two overlapping crops
   is merged (NMS at ``score.merge_iou``), each node gets the level of its crop's
   vertebra and the endplate it sits on, and every box is given in millimetres and
   patient coordinates (:func:`radlake.dicom.geometry.box_geometry`, per-frame
   ImagePositionPatient);
7. the rows go into ``predictions`` in one Delta MERGE on the frame and the model pair
   (a killed run adds nothing; a re-run finds every frame done and adds nothing), and
   ``study_findings`` is rebuilt from ``predictions`` for the series that were scored
   (Delta MERGE on the series and model pair).

The unit of work is the series stack, since its levels are decoded together: a stack
with any frame not yet scored by this pair is scored whole again (its earlier rows are
updated), so frames that arrive later are labelled with their whole stack.

The scoring job is one MLflow run (``score``, in ``mlflow.experiment``, nested under
an active run) whose id is written on every row. Pixels stay on the executors; the
driver sees counts and the findings summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, DoubleType, IntegerType, StringType, StructType

from radlake.config import RadlakeConfig
from radlake.errors import RadlakeError
from radlake.models.levels import LEVELS
from radlake.score.schema import MODEL_PAIR_FIELDS, PREDICTIONS, STUDY_FINDINGS
from radlake.score.stacks import FRAME_RESULT, FRAMES_TO_FINISH, IMAGE_COLUMNS, LEVEL_EVIDENCE, finish_stacks
from radlake.tables import Table, struct_fields, table_ref

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from radlake.models.resolve import ResolvedModel


class NothingToScoreError(RadlakeError):
    """The ``images`` table does not exist yet."""


_DOUBLES = ArrayType(DoubleType())
#: A crop of one found vertebra, cut on the executors (stage 2's input); ``vertebra_index`` is
#: the vertebra's place in its frame's detections, ``level_*`` its evidence for the stack's decoding.
SCORE_CROP = StructType(
    struct_fields(("sop_instance_uid", StringType()), ("frame_index", IntegerType()), ("vertebra_index", IntegerType()))
    + LEVEL_EVIDENCE
    + struct_fields(
        ("score", DoubleType()),
        ("box", _DOUBLES),
        ("crop_box_xyxy_px", _DOUBLES),
        ("crop_scale", DoubleType()),
        ("pixels", BinaryType()),
        ("dtype", StringType()),
        ("height", IntegerType()),
        ("width", IntegerType()),
        ("pixel_spacing", _DOUBLES),
    )
)
#: Frames per Arrow batch yielded by the crop cutter (each frame gives ~15 crops of 64 KB).
_CROP_FRAMES_PER_BATCH = 16
_KEYS = ["sop_instance_uid", "frame_index"]
#: Stack of a frame: its series stack, or the frame alone when it has none.
_STACK = "_stack"
_PAIR = ["vertebra_model_uri", "schmorl_model_uri"]


@dataclass(frozen=True)
class ScoreSummary:
    """What one ``radlake score`` run did."""

    run_id: str
    vertebra_model: dict
    schmorl_model: dict
    frames_in_images: int
    frames_already_scored: int
    frames_scored: int
    skipped: dict[str, int]
    vertebrae: int
    schmorl_nodes: int
    frames_with_nodes: int
    series_updated: int
    series_with_nodes: int
    predictions_version: int
    study_findings_version: int
    tables: dict[str, str]
    seconds: float
    findings: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _model_dict(model: ResolvedModel) -> dict[str, Any]:
    return {
        "requested": model.requested,
        "uri": model.uri,
        "name": model.name,
        "version": model.version,
        "run_id": model.run_id,
    }


def cut_scoring_crops(batches: Iterator[pa.RecordBatch], *, margin_fraction: float, size: int):
    """Executor side: frames with their found ``vertebrae`` → one :data:`SCORE_CROP` row per vertebra.

    Input columns: ``sop_instance_uid``, ``frame_index``, the pixel columns and
    ``vertebrae`` (the vertebra UDF's detections, source pixels).
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.models.crops import cut_stored_frame

    schema = to_arrow_schema(SCORE_CROP)
    for batch in batches:
        frames = batch.to_pylist()
        for start in range(0, len(frames), _CROP_FRAMES_PER_BATCH):
            rows = []
            for row in frames[start : start + _CROP_FRAMES_PER_BATCH]:
                found = row["vertebrae"] or []
                if not found:
                    continue
                boxes = [[v["x0"], v["y0"], v["x1"], v["y1"]] for v in found]
                crops = cut_stored_frame(row, boxes, margin_fraction, size)
                for index, (v, box, crop) in enumerate(zip(found, boxes, crops, strict=True)):
                    rows.append(
                        {
                            "sop_instance_uid": row["sop_instance_uid"],
                            "frame_index": row["frame_index"],
                            "vertebra_index": index,
                            "level": v["level"],
                            "level_status": v.get("level_status"),
                            "level_probability": v.get("level_probability"),
                            "level_scores": v.get("level_scores"),
                            "score": v["score"],
                            "box": box,
                            "crop_box_xyxy_px": list(crop.geometry.region_xyxy_px),
                            "crop_scale": crop.geometry.scale,
                            "pixels": crop.pixels,
                            "dtype": crop.dtype,
                            "height": size,
                            "width": size,
                            "pixel_spacing": crop.pixel_spacing,
                        }
                    )
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _stack_key() -> Any:
    """A frame's stack: its ``series_key``, or the frame itself when it belongs to none."""
    return F.coalesce(F.col("series_key"), F.concat_ws("/", "sop_instance_uid", F.col("frame_index").cast("string")))


def _valid_pixels() -> Any:
    """True where a frame's stored pixels can be decoded: known dtype and ``height * width`` values."""
    from radlake.dicom.pixels import STORAGE_DTYPES

    sizes = F.create_map(*[x for d in STORAGE_DTYPES for x in (F.lit(d), F.lit(_itemsize(d)))])
    return F.coalesce(F.length("pixels") == F.col("height") * F.col("width") * sizes[F.col("dtype")], F.lit(False))


def _itemsize(dtype: str) -> int:
    import numpy as np

    return int(np.dtype(dtype).itemsize)


def _skip_reason() -> Any:
    from radlake.dicom.pixels import STORAGE_DTYPES

    return (
        F.when(F.col("pixels").isNull(), "no_pixels")
        .when(~F.col("dtype").isin(*STORAGE_DTYPES), "unknown_dtype")
        .otherwise("pixel_byte_count")
    )


def _frame_geometry(spark: SparkSession, config: RadlakeConfig) -> DataFrame:
    """``(sop_instance_uid, position, orientation, frame_positions)`` of every instance (per-frame IPP)."""
    return (
        table_ref(config, Table.INSTANCES)
        .read(spark)
        .select(
            "sop_instance_uid",
            F.col("image_position_patient").alias("position"),
            F.col("image_orientation_patient").alias("orientation"),
            "frame_positions",
        )
    )


def _level_sort(array_col: str, key: str | None = None) -> Any:
    """``array_col`` sorted head to feet by level (:data:`LEVELS`; unknown levels first, uncertain ones last)."""
    order = "array(" + ", ".join(f"'{level}'" for level in LEVELS) + ")"
    pick = (lambda v: f"{v}.{key}") if key else (lambda v: v)

    def rank(v: str) -> str:
        return f"coalesce(array_position({order}, {pick(v)}), {len(LEVELS) + 1})"

    return F.expr(f"array_sort({array_col}, (l, r) -> int({rank('l')} - {rank('r')}))")


@dataclass(frozen=True)
class CheckedModel:
    """A model resolved to a concrete version, with the inference params its signature declares."""

    model: ResolvedModel
    params: tuple[str, ...]


def check_models(vertebra_uri: str, schmorl_uri: str) -> tuple[CheckedModel, CheckedModel]:
    """Resolve both URIs to concrete versions and check their pyfunc signatures (before any scan).

    Raises
    ------
    ModelNotFoundError
        If a URI names no model, alias, version or run.
    ModelSignatureError
        If a model's signature is not the detector pyfunc's.
    """
    from radlake.models.pyfunc import check_detector_signature
    from radlake.models.resolve import resolve_model_uri

    models = []
    for uri in (vertebra_uri, schmorl_uri):
        model = resolve_model_uri(uri)
        models.append(CheckedModel(model, check_detector_signature(model.uri)))
    return models[0], models[1]


def _detections(spark: SparkSession, checked: CheckedModel, threshold: float, batch_size: int):
    """The model's detections at or above ``threshold``, as a Spark column.

    The threshold goes to the model as a pyfunc param where its signature declares one; the
    output is also filtered in Spark, so a detector logged before params existed is held to
    the same threshold (it cannot go below the threshold it was logged with).
    """
    from radlake.models.pyfunc import detections_column

    params = {k: v for k, v in (("score_threshold", threshold), ("batch_size", batch_size)) if k in checked.params}
    found = detections_column(spark, checked.model.uri, params)
    return F.filter(found, lambda d: d["score"] >= F.lit(float(threshold)))


def score_archive(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    vertebra_model: str | None = None,
    schmorl_model: str | None = None,
) -> ScoreSummary:
    """Score the frames of ``images`` not yet scored by this model pair (see the module docstring).

    Raises
    ------
    ModelNotFoundError, ModelSignatureError
        Before any data is read, for a model that does not resolve or does not fit.
    NothingToScoreError
        If ``images`` does not exist (run ``radlake ingest`` first).
    """
    import mlflow

    import radlake
    from radlake.tracking import configure_mlflow, run_scope

    started = time.perf_counter()
    sc = config.score
    experiment_id = configure_mlflow(config)
    default_vertebra, default_schmorl = sc.model_uris(config.models)
    checked = check_models(vertebra_model or default_vertebra, schmorl_model or default_schmorl)
    vertebra, schmorl = checked[0].model, checked[1].model
    images_ref = table_ref(config, Table.IMAGES)
    if not images_ref.exists(spark):
        raise NothingToScoreError(
            f"Table 'images' does not exist at {images_ref.location}: run `radlake ingest` first."
        )
    predictions_ref = table_ref(config, Table.PREDICTIONS)
    findings_ref = table_ref(config, Table.STUDY_FINDINGS)
    predictions_ref.ensure(spark, PREDICTIONS)
    findings_ref.ensure(spark, STUDY_FINDINGS)

    parent = mlflow.active_run()
    with run_scope(
        run_name="score",
        nested=parent is not None,
        experiment_id=parent.info.experiment_id if parent else experiment_id,
    ) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"radlake.step": "score", "radlake.version": radlake.__version__})
        _log_score_params(config, vertebra, schmorl, images_ref.version(spark))
        plan = _plan_frames(spark, config, images_ref, predictions_ref, vertebra, schmorl)
        if plan.by_reason.get("ok"):
            plan.by_reason["ok"] = (
                plan.todo.count()
            )  # before the MERGE: frames scored again with their stack count here
            _score_frames(spark, config, plan.todo, *checked, run_id)
        summary = _summarize(spark, config, plan, checked, run_id, started)
        _log_score_metrics(summary)
        mlflow.log_dict(summary.as_dict(), "score/summary.json")
    return summary


def _log_score_params(config: RadlakeConfig, vertebra, schmorl, images_version: int) -> None:
    import mlflow

    sc = config.score
    mlflow.log_params(
        {
            "vertebra_model": vertebra.uri,
            "schmorl_model": schmorl.uri,
            "vertebra_threshold": sc.vertebra_threshold,
            "schmorl_threshold": sc.schmorl_threshold,
            "batch_size": sc.batch_size,
            "merge_iou": sc.merge_iou,
            "crop_margin_fraction": config.crops.margin_fraction,
            "crop_size": config.crops.size,
            "images_version": images_version,
        }
    )


@dataclass
class _FramePlan:
    """Which frames this run scores, and why the others are not."""

    #: The frames to score: every valid frame of a stack with a frame not yet scored by the pair.
    todo: DataFrame
    #: ``ok`` (frames to score) or a skip reason → frames not yet scored by the pair.
    by_reason: dict
    #: Skip reason → frames (the ingest's pixel failures included).
    skipped: dict
    frames_total: int


def _plan_frames(
    spark: SparkSession, config: RadlakeConfig, images_ref, predictions_ref, vertebra, schmorl
) -> _FramePlan:
    """The frames of ``images`` this model pair has not scored, whole stacks at a time, and the skipped ones."""
    images = images_ref.read(spark).withColumn(_STACK, _stack_key())
    done = (
        predictions_ref.read(spark)
        .where((F.col("vertebra_model_uri") == vertebra.uri) & (F.col("schmorl_model_uri") == schmorl.uri))
        .select(*_KEYS)
    )
    unscored = images.join(done, _KEYS, "left_anti").withColumn("_ok", _valid_pixels())
    counts = unscored.groupBy(F.when(F.col("_ok"), F.lit("ok")).otherwise(_skip_reason()).alias("r")).count()
    by_reason = {r["r"]: int(r["count"]) for r in counts.collect()}
    frames_total = images.count()
    # A stack with a new frame is scored whole: its levels are decoded over all its frames.
    stacks = unscored.where("_ok").select(_STACK).distinct()
    todo = images.join(stacks, _STACK, "left_semi").where(_valid_pixels())
    skipped = {k: v for k, v in by_reason.items() if k != "ok"}
    quarantine_ref = table_ref(config, Table.QUARANTINE)
    if quarantine_ref.exists(spark):
        failed = quarantine_ref.read(spark).where("stage = 'pixels'").count()
        if failed:
            skipped["pixels_failed_at_ingest"] = failed
    return _FramePlan(todo=todo, by_reason=by_reason, skipped=skipped, frames_total=frames_total)


def _summarize(
    spark: SparkSession, config: RadlakeConfig, plan: _FramePlan, checked, run_id: str, started: float
) -> ScoreSummary:
    """What this run wrote, after study_findings is rebuilt for the series it scored."""
    from radlake.spark import persist, unpersist

    vertebra, schmorl = checked[0].model, checked[1].model
    predictions_ref = table_ref(config, Table.PREDICTIONS)
    findings_ref = table_ref(config, Table.STUDY_FINDINGS)
    written = persist(predictions_ref.read(spark).where(F.col("score_run_id") == run_id))
    stats = written.agg(
        F.count("*").alias("frames"),
        F.coalesce(F.sum("n_vertebrae"), F.lit(0)).alias("vertebrae"),
        F.coalesce(F.sum("n_schmorl_nodes"), F.lit(0)).alias("nodes"),
        F.coalesce(F.sum(F.expr("int(n_schmorl_nodes > 0)")), F.lit(0)).alias("with_nodes"),
    ).first()
    series_keys = written.select("series_key").distinct()
    series_updated = series_keys.count()
    unpersist(written)
    if series_updated:
        update_study_findings(spark, config, vertebra.uri, schmorl.uri, series_keys, run_id)
    findings = findings_summary(spark, config, vertebra.uri, schmorl.uri)
    pair = findings_ref.read(spark).where(
        (F.col("vertebra_model_uri") == vertebra.uri) & (F.col("schmorl_model_uri") == schmorl.uri)
    )
    return ScoreSummary(
        run_id=run_id,
        vertebra_model=_model_dict(vertebra),
        schmorl_model=_model_dict(schmorl),
        frames_in_images=plan.frames_total,
        frames_already_scored=plan.frames_total - sum(plan.by_reason.values()),
        frames_scored=int(stats["frames"]),
        skipped=plan.skipped,
        vertebrae=int(stats["vertebrae"]),
        schmorl_nodes=int(stats["nodes"]),
        frames_with_nodes=int(stats["with_nodes"]),
        series_updated=series_updated,
        series_with_nodes=pair.where(F.size("levels_with_nodes") > 0).count(),
        predictions_version=predictions_ref.version(spark),
        study_findings_version=findings_ref.version(spark),
        tables={"predictions": predictions_ref.location, "study_findings": findings_ref.location},
        seconds=round(time.perf_counter() - started, 2),
        findings=findings,
    )


def _log_score_metrics(summary: ScoreSummary) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "frames_scored": summary.frames_scored,
            "frames_skipped": sum(summary.skipped.values()),
            "vertebrae": summary.vertebrae,
            "schmorl_nodes": summary.schmorl_nodes,
            "frames_with_nodes": summary.frames_with_nodes,
            "series_with_nodes": summary.series_with_nodes,
            "seconds": summary.seconds,
            "frames_per_s": summary.frames_scored / summary.seconds if summary.seconds else 0.0,
        }
    )


def _score_frames(
    spark: SparkSession,
    config: RadlakeConfig,
    todo: DataFrame,
    vertebra_checked: CheckedModel,
    schmorl_checked: CheckedModel,
    run_id: str,
) -> None:
    """Steps 3 to 6 of the module docstring for the frames ``todo``: one Delta append to ``predictions``."""
    sc = config.score
    predictions_ref = table_ref(config, Table.PREDICTIONS)
    vertebra, schmorl = vertebra_checked.model, schmorl_checked.model

    # Stage 1 on every frame, then crops of its vertebrae, then stage 2 on every crop.
    stage1 = todo.select(
        *_KEYS,
        "pixels",
        "dtype",
        "height",
        "width",
        "pixel_spacing",
        _detections(spark, vertebra_checked, sc.vertebra_threshold, sc.batch_size).alias("vertebrae"),
    )
    cut = partial(cut_scoring_crops, margin_fraction=config.crops.margin_fraction, size=config.crops.size)
    crops = stage1.mapInArrow(cut, SCORE_CROP)
    evidence = [f.name for f in LEVEL_EVIDENCE]
    stage2 = crops.select(
        *_KEYS,
        "vertebra_index",
        *evidence,
        "score",
        "box",
        "crop_box_xyxy_px",
        "crop_scale",
        _detections(spark, schmorl_checked, sc.schmorl_threshold, sc.batch_size).alias("d"),
    )
    to_frame = (
        "transform(d, x -> struct(vertebra_index, box AS vertebra_box, crop_box_xyxy_px, x.score AS score, array("
        "x.x0 / crop_scale + crop_box_xyxy_px[0], x.y0 / crop_scale + crop_box_xyxy_px[1], "
        "x.x1 / crop_scale + crop_box_xyxy_px[0], x.y1 / crop_scale + crop_box_xyxy_px[1]) AS box))"
    )
    found = F.struct(F.col("vertebra_index").alias("index"), *evidence, "score", "box")
    per_frame = stage2.groupBy(*_KEYS).agg(
        F.collect_list(found).alias("vertebrae"),
        F.flatten(F.collect_list(F.expr(to_frame))).alias("nodes"),
    )
    geometry = _frame_geometry(spark, config)
    frames = (
        todo.select(*_KEYS, *IMAGE_COLUMNS, _STACK)
        .join(geometry, "sop_instance_uid", "left")
        .withColumn(
            "position",
            F.when(
                F.size("frame_positions") > F.col("frame_index"),
                F.element_at("frame_positions", F.col("frame_index") + 1),
            ).otherwise(F.col("position")),
        )
        .join(per_frame, _KEYS, "left")
        .select(*FRAMES_TO_FINISH.fieldNames(), _STACK)
    )
    merge_iou, min_probability = sc.merge_iou, sc.level_min_probability

    def finish(table: pa.Table) -> pa.Table:  # typed: pyspark infers the grouped-Arrow UDF kind from the hints
        return finish_stacks(table, merge_iou=merge_iou, min_probability=min_probability)

    finished = frames.groupBy(_STACK).applyInArrow(finish, FRAME_RESULT)
    now = datetime.now(UTC)
    run_columns = {
        **{
            f"{stage}_model_{k}": F.lit(v)
            for stage, m in (("vertebra", vertebra), ("schmorl", schmorl))
            for k, v in (("uri", m.uri), ("name", m.name), ("version", m.version), ("run_id", m.run_id))
        },
        "vertebra_threshold": F.lit(float(sc.vertebra_threshold)),
        "schmorl_threshold": F.lit(float(sc.schmorl_threshold)),
        "crop_margin_fraction": F.lit(float(config.crops.margin_fraction)),
        "crop_size": F.lit(int(config.crops.size)),
        "score_run_id": F.lit(run_id),
        "scored_at": F.lit(now),
    }
    new = finished.withColumns(run_columns).select(*PREDICTIONS.fieldNames())
    # One atomic MERGE on the frame and the model pair: a stack scored again updates its rows,
    # and a re-run or a run after a killed one adds each frame once.
    keys = [*_KEYS, *_PAIR]
    predictions_ref.merge(spark, new, keys=keys, update_columns=[c for c in PREDICTIONS.fieldNames() if c not in keys])


def update_study_findings(
    spark: SparkSession, config: RadlakeConfig, vertebra_uri: str, schmorl_uri: str, series_keys: DataFrame, run_id: str
) -> None:
    """Rebuild the ``study_findings`` rows of ``series_keys`` for one model pair from all its ``predictions``."""
    predictions = (
        table_ref(config, Table.PREDICTIONS)
        .read(spark)
        .where((F.col("vertebra_model_uri") == vertebra_uri) & (F.col("schmorl_model_uri") == schmorl_uri))
        .join(series_keys, "series_key", "left_semi")
    )
    pair_columns = [f.name for f in MODEL_PAIR_FIELDS]
    series = predictions.groupBy("series_key").agg(
        F.first("study_instance_uid").alias("study_instance_uid"),
        F.first("series_instance_uid").alias("series_instance_uid"),
        F.first("plane").alias("plane"),
        F.count("*").cast("int").alias("frames_scored"),
        F.array_distinct(
            F.flatten(F.collect_list(F.expr("filter(transform(vertebrae, v -> v.level), x -> x IS NOT NULL)")))
        ).alias("levels_seen"),
        F.sum(F.expr("size(filter(vertebrae, v -> v.level_status = 'uncertain'))"))
        .cast("int")
        .alias("vertebrae_uncertain"),
        F.sum(F.expr("size(filter(schmorl_nodes, n -> n.parent_level_status = 'uncertain'))"))
        .cast("int")
        .alias("nodes_level_uncertain"),
        F.max("max_schmorl_score").alias("max_score"),
        *[F.first(c).alias(c) for c in pair_columns],
    )
    nodes = predictions.select("series_key", "sop_instance_uid", "frame_index", F.explode("schmorl_nodes").alias("n"))
    levels = nodes.groupBy(
        "series_key", F.col("n.parent_level").alias("level"), F.col("n.parent_level_status").alias("level_status")
    ).agg(
        F.max("n.score").alias("max_score"),
        F.count("*").cast("int").alias("nodes"),
        F.countDistinct("sop_instance_uid", "frame_index").cast("int").alias("frames"),
        F.array_sort(F.collect_set("n.endplate")).alias("endplates"),
        F.max_by(F.struct("sop_instance_uid", "frame_index"), "n.score").alias("best"),
    )
    per_series = levels.groupBy("series_key").agg(
        F.collect_list(
            F.struct(
                "level",
                "level_status",
                "max_score",
                "nodes",
                "frames",
                "endplates",
                F.col("best.sop_instance_uid").alias("best_sop_instance_uid"),
                F.col("best.frame_index").alias("best_frame_index"),
            )
        ).alias("level_findings")
    )
    rows = (
        series.join(per_series, "series_key", "left")
        .withColumn("level_findings", F.coalesce(_level_sort("level_findings", "level"), F.array()))
        .withColumn("levels_seen", _level_sort("levels_seen"))
        .withColumn("levels_with_nodes", F.expr("filter(transform(level_findings, f -> f.level), x -> x IS NOT NULL)"))
        .withColumn("score_run_id", F.lit(run_id))
        .withColumn("updated_at", F.lit(datetime.now(UTC)))
        .select(*STUDY_FINDINGS.fieldNames())
    )
    table_ref(config, Table.STUDY_FINDINGS).merge(
        spark,
        rows,
        keys=["series_key", *_PAIR],
        update_columns=[c for c in STUDY_FINDINGS.fieldNames() if c not in ("series_key", *_PAIR)],
        schema=STUDY_FINDINGS,
    )


def findings_summary(
    spark: SparkSession, config: RadlakeConfig, vertebra_uri: str, schmorl_uri: str, *, limit: int = 10
) -> list[dict]:
    """The series of one model pair with the highest Schmorl's-node scores: study, series, levels and scores."""
    rows = (
        table_ref(config, Table.STUDY_FINDINGS)
        .read(spark)
        .where((F.col("vertebra_model_uri") == vertebra_uri) & (F.col("schmorl_model_uri") == schmorl_uri))
        .where(F.size("levels_with_nodes") > 0)
        .orderBy(F.desc("max_score"), "series_key")
        .limit(limit)
        .collect()
    )
    return [
        {
            "study_instance_uid": r["study_instance_uid"],
            "series_key": r["series_key"],
            "levels": {(f["level"] or "uncertain"): round(float(f["max_score"]), 3) for f in r["level_findings"]},
        }
        for r in rows
    ]


def format_summary(summary: ScoreSummary) -> str:
    """A few lines for the terminal: what was scored, the findings, where the tables are."""
    lines = [
        f"Scored {summary.frames_scored} frames with {summary.vertebra_model['uri']} + {summary.schmorl_model['uri']} "
        f"({summary.frames_already_scored} already scored, skipped {json.dumps(summary.skipped)}) "
        f"in {summary.seconds:.0f} s: {summary.vertebrae} vertebrae, {summary.schmorl_nodes} Schmorl's nodes "
        f"on {summary.frames_with_nodes} frames; {summary.series_with_nodes} series with nodes.",
    ]
    for f in summary.findings:
        levels = ", ".join(f"{level} {score:.2f}" for level, score in f["levels"].items())
        lines.append(f"  study {f['study_instance_uid']}  series {f['series_key']}: {levels}")
    lines.append(
        f"Tables: predictions {summary.tables['predictions']}, study_findings {summary.tables['study_findings']}"
    )
    return "\n".join(lines)
