"""The Schmorl's-node stage: its training view over ``vertebra_crops`` and its end-to-end evaluation.

The stage trains on the crops that one vertebra model version produced
(``crops.vertebra_model``, resolved to a concrete version before the run starts and
recorded in the run's tags ``radlake.vertebra_model_*``), from the sources that
``crops.source`` names. Everything else (loader, DDP, MLflow, pyfunc, registry) is the
shared training stage of :mod:`radlake.train.run`.

End to end (:func:`end_to_end_metrics`): on the whole test frames, the vertebra
model's crops (``predicted``) are scored by the trained Schmorl's model as a pyfunc
Spark UDF, the boxes mapped back to source pixels, duplicates from overlapping crops
merged by NMS, and the lesion metrics computed against every labelled node of those
frames, including nodes in vertebrae that the first stage missed. FP per image counts
per whole frame, so the compounded error of the two stages is visible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from radlake.config import RadlakeConfig
from radlake.data.view import IMAGE_COLUMNS, NoTrainingDataError
from radlake.tables import Table, table_ref

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from radlake.models.resolve import ResolvedModel

#: Tables the Schmorl's stage reads (pinned per run).
SCHMORL_TABLES = (Table.VERTEBRA_CROPS, Table.ANNOTATIONS, Table.SPLITS, Table.IMAGES)
#: NMS IoU that merges the same node found in two overlapping crops (mapped back to the frame).
MERGE_IOU = 0.3


@dataclass(frozen=True)
class VertebraModelInput:
    """The vertebra model behind a Schmorl's run: pinned config and the tags that record it."""

    config: RadlakeConfig
    model: ResolvedModel

    @property
    def tags(self) -> dict[str, str]:
        m = self.model
        return {
            "radlake.vertebra_model_uri": m.uri,
            "radlake.vertebra_model_name": m.name or "",
            "radlake.vertebra_model_version": m.version or "",
            "radlake.vertebra_model_run_id": m.run_id,
        }


def pin_vertebra_model(config: RadlakeConfig) -> VertebraModelInput:
    """Resolve ``crops.vertebra_model`` and return a config that names the concrete version."""
    from radlake.models.resolve import resolve_model_uri

    model = resolve_model_uri(config.crops.model_uri(config.models))
    pinned = config.with_vertebra_model(model.uri)
    return VertebraModelInput(pinned, model)


def _crops(spark: SparkSession, config: RadlakeConfig, versions: Mapping[str, int]) -> DataFrame:
    from radlake.data.crops import sources_of

    uri = config.crops.vertebra_model
    crops = (
        table_ref(config, Table.VERTEBRA_CROPS)
        .read(spark, version=versions[Table.VERTEBRA_CROPS.value])
        .where(F.col("vertebra_model_uri") == uri)
    )
    return crops.where(F.col("source").isin(sources_of(config)))


def schmorl_view(spark: SparkSession, config: RadlakeConfig, versions: Mapping[str, int]) -> DataFrame:
    """Crops of ``crops.vertebra_model`` (pinned) with their node boxes and the study split.

    With ``crops.source`` ``both``, the validation and test splits keep the vertebra
    model's crops alone (what scoring cuts, and half the crops to evaluate), unless the
    model found nothing in a split (an untrained model): that split keeps its
    ground-truth crops. The ground-truth crops add training examples.

    Raises
    ------
    NoTrainingDataError
        If the table holds no crops of that model and source.
    """
    crops = _crops(spark, config, versions)
    if crops.limit(1).count() == 0:
        raise NoTrainingDataError(
            f"vertebra_crops (version {versions[Table.VERTEBRA_CROPS.value]}) holds no {config.crops.source} crops "
            f"of {config.crops.vertebra_model}: run `radlake crops --vertebra-model {config.crops.vertebra_model}` first."
        )
    splits = table_ref(config, Table.SPLITS).read(spark, version=versions[Table.SPLITS.value])
    view = crops.join(splits.select("study_instance_uid", "split"), "study_instance_uid")
    if config.crops.source == "both":
        scored = view.groupBy("split").agg(F.max((F.col("source") == "predicted").cast("int")).alias("_scored"))
        view = (
            view.join(F.broadcast(scored), "split")
            .where((F.col("split") == "train") | (F.col("source") == "predicted") | (F.col("_scored") == 0))
            .drop("_scored")
        )
    return view.select(*IMAGE_COLUMNS, "split", "boxes_xyxy_px", "labels")


def end_to_end_metrics(
    spark: SparkSession,
    config: RadlakeConfig,
    versions: Mapping[str, int],
    model_uri: str,
    *,
    split: str | None = "test",
) -> dict[str, float]:
    """Stage 1 then stage 2 on whole frames (see the module docstring); metrics prefixed ``e2e_``.

    ``split`` chooses the frames (of studies with vertebra annotations): one split, or
    every labelled frame (``None``: an archive of other studies).
    """
    import numpy as np
    import torch
    from torchvision.ops import nms

    from radlake.models.pyfunc import detections_column
    from radlake.train.metrics import ImageResult, lesion_metrics

    read = {t: table_ref(config, t).read(spark, version=versions[t.value]) for t in SCHMORL_TABLES}
    annotations = read[Table.ANNOTATIONS]
    studies = annotations.where("label_class = 'vertebra'").select("study_instance_uid").distinct()
    if split is not None:
        chosen = read[Table.SPLITS].where(F.col("split") == split).select("study_instance_uid")
        studies = studies.join(chosen, "study_instance_uid")
    frames = (
        read[Table.IMAGES]
        .select("sop_instance_uid", "frame_index", "study_instance_uid")
        .join(studies, "study_instance_uid", "left_semi")
    )
    truth = (
        annotations.where("label_class = 'schmorl_node'")
        .groupBy("sop_instance_uid", "frame_index")
        .agg(F.collect_list("box_xyxy_px").alias("nodes"))
    )
    crops = (
        _crops(spark, config, versions)
        .where("source = 'predicted'")
        .join(frames, ["sop_instance_uid", "frame_index"], "left_semi")
    )
    found = crops.select(
        "sop_instance_uid",
        "frame_index",
        "crop_box_xyxy_px",
        "crop_scale",
        detections_column(spark, model_uri).alias("d"),
    ).select(
        "sop_instance_uid",
        "frame_index",
        F.expr(
            "transform(d, x -> struct(x.score AS score, array("
            "x.x0 / crop_scale + crop_box_xyxy_px[0], x.y0 / crop_scale + crop_box_xyxy_px[1], "
            "x.x1 / crop_scale + crop_box_xyxy_px[0], x.y1 / crop_scale + crop_box_xyxy_px[1]) AS box))"
        ).alias("found"),
    )
    per_frame = found.groupBy("sop_instance_uid", "frame_index").agg(F.flatten(F.collect_list("found")).alias("found"))
    rows = (
        frames.join(per_frame, ["sop_instance_uid", "frame_index"], "left")
        .join(truth, ["sop_instance_uid", "frame_index"], "left")
        .collect()  # boxes and scores only: a few numbers per test frame
    )
    results = []
    for row in rows:
        boxes = np.array([f["box"] for f in row["found"] or []], np.float32).reshape(-1, 4)
        scores = np.array([f["score"] for f in row["found"] or []], np.float32)
        if len(boxes):
            keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), MERGE_IOU).numpy()
            boxes, scores = boxes[keep], scores[keep]
        true = np.array(list(row["nodes"] or []), np.float32).reshape(-1, 4)
        results.append(
            ImageResult.of_frame(
                row,
                pred_boxes=boxes,
                pred_scores=scores,
                pred_classes=np.ones(len(scores), np.int64),
                true_boxes=true,
                true_classes=np.ones(len(true), np.int64),
            )
        )
    if not results:
        return {}
    metrics = lesion_metrics(results, score_threshold=config.train.schmorl.score_threshold)
    return {f"e2e_{k}": v for k, v in metrics.items()}
