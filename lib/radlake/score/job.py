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
3. stage 1, the vertebra detector, runs on each frame's values as an MLflow pyfunc Spark UDF
   (``params``: ``score_threshold = score.vertebra_threshold``, ``batch_size``); a frame
   stored with a rescale or an inversion is turned into its values on the executors first
   (:func:`radlake.models.model_input.model_input_frames`);
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
driver sees counts and the findings summary. The run's description says what it scored
and found; its artifacts hold ``score/summary.json`` and, when it scored frames, the
review PNGs and DICOM SR of its ``score.artifact_studies`` top studies
(:mod:`radlake.score.run_artifacts`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType

from radlake.config import RadlakeConfig
from radlake.console import say
from radlake.dicom.pixels import VALUE_COLUMNS
from radlake.errors import RadlakeError
from radlake.ingest.schema import with_value_columns
from radlake.models.model_input import model_input_frames
from radlake.score.executors import SCORE_CROP, cut_scoring_crops
from radlake.score.findings import findings_summary, update_study_findings
from radlake.score.pair import CheckedModel, check_models, thresholded_detections
from radlake.score.schema import MODEL_PAIR_KEYS, PREDICTIONS, STUDY_FINDINGS, model_pair_filter
from radlake.score.stacks import FRAME_RESULT, FRAMES_TO_FINISH, IMAGE_COLUMNS, LEVEL_EVIDENCE, finish_stacks
from radlake.spark import scan_tasks_per_slot, task_progress
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.vocabulary import QuarantineStage

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class NothingToScoreError(RadlakeError):
    """The ``images`` table does not exist yet."""


_DOUBLES = ArrayType(DoubleType())
_KEYS = ["sop_instance_uid", "frame_index"]
#: Stack of a frame: its series stack, or the frame alone when it has none.
_STACK = "_stack"


@dataclass(frozen=True)
class ScoreSummary(Summary):
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
    #: Paths of the review PNGs and SR files logged into the run (:mod:`radlake.score.run_artifacts`).
    artifacts: list[str] = field(default_factory=list)


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


def score_note(summary: ScoreSummary) -> str:
    """A score run's one-line description once it is done: what it scored with which models, and what it found."""
    pair = f"{summary.vertebra_model['uri']} + {summary.schmorl_model['uri']}"
    if not summary.frames_scored:
        return f"Nothing new to score: the {summary.frames_in_images} frames of images were already scored by {pair}."
    pngs, srs = (sum(1 for a in summary.artifacts if a.endswith(suffix)) for suffix in (".png", ".dcm"))
    studies = len({a.split("/")[1] for a in summary.artifacts if a.startswith("review/")})
    top = "its top study" if studies == 1 else f"its {studies} top studies"
    artifacts = f"; {pngs} review PNGs and {srs} DICOM SR of {top} in the artifacts" if summary.artifacts else ""
    return (
        f"Scored {summary.frames_scored} frames ({summary.frames_already_scored} already scored) with {pair}: "
        f"{summary.vertebrae} vertebrae, {summary.schmorl_nodes} Schmorl's nodes on {summary.frames_with_nodes} "
        f"frames, {summary.series_with_nodes} series with nodes{artifacts}."
    )


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
    from radlake.score.run_artifacts import log_score_artifacts
    from radlake.tracking import configure_mlflow, describe_run, run_scope

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
        describe_run(f"Scores the frames of images not yet scored by {vertebra.uri} + {schmorl.uri}.")
        _log_score_params(config, vertebra, schmorl, images_ref.version(spark))
        plan = _plan_frames(spark, config, images_ref, predictions_ref, vertebra, schmorl)
        if plan.by_reason.get("ok"):
            plan.by_reason["ok"] = (
                plan.todo.count()
            )  # before the MERGE: frames scored again with their stack count here
            frames = f"{plan.by_reason['ok']:,} frames"
            say("score: %s to score with %s and %s", frames, vertebra.uri, schmorl.uri)
            # Even tasks on every core: the scan is split between the images table's row groups.
            with task_progress(spark, "score", frames), scan_tasks_per_slot(spark, config.score.scan_tasks_per_slot):
                _score_frames(spark, config, plan.todo, *checked, run_id)
        else:
            say("score: every frame is already scored by %s and %s", vertebra.uri, schmorl.uri)
        summary = _summarize(spark, config, plan, checked, run_id, started)
        _log_score_metrics(summary)
        if summary.frames_scored:
            logged = log_score_artifacts(spark, config, run_id=run_id, model_pair=(vertebra.uri, schmorl.uri))
            summary = replace(summary, artifacts=logged["artifacts"])
        describe_run(score_note(summary))
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
    images = with_value_columns(images_ref.read(spark)).withColumn(_STACK, _stack_key())
    done = predictions_ref.read(spark).where(model_pair_filter(vertebra.uri, schmorl.uri)).select(*_KEYS)
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
        failed = quarantine_ref.read(spark).where(F.col("stage") == QuarantineStage.PIXELS.value).count()
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
    pair = findings_ref.read(spark).where(model_pair_filter(vertebra.uri, schmorl.uri))
    return ScoreSummary(
        run_id=run_id,
        vertebra_model=vertebra.as_dict(),
        schmorl_model=schmorl.as_dict(),
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

    # Stage 1 on every frame (its values: stored frames with a rescale or an inversion are turned
    # into their values on the executors first), then crops of its vertebrae, then stage 2 on every crop.
    stage1 = model_input_frames(todo.select(*_KEYS, *VALUE_COLUMNS, "pixel_spacing")).select(
        *_KEYS,
        "pixels",
        "dtype",
        "height",
        "width",
        "pixel_spacing",
        thresholded_detections(spark, vertebra_checked, sc.vertebra_threshold, sc.batch_size).alias("vertebrae"),
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
        thresholded_detections(spark, schmorl_checked, sc.schmorl_threshold, sc.batch_size).alias("d"),
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
    keys = [*_KEYS, *MODEL_PAIR_KEYS]
    predictions_ref.merge(spark, new, keys=keys, update_columns=[c for c in PREDICTIONS.fieldNames() if c not in keys])
