"""Register a training run's model, mark it ``challenger``, and promote it to ``champion`` if it wins.

Promotion compares the challenger with the current champion on the same frozen test
split: the training runs record the digest of their test split
(``radlake.test_split_digest``); when the digests agree their logged test metrics
are compared directly, otherwise the champion is evaluated again on the
challenger's test cache. The challenger wins on a higher primary metric (AP at IoU
0.5), ties broken by the secondary one (level identification). The comparison is
kept as tags on the new version and in its description; aliases only, stages are
deprecated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from radlake.config import RadlakeConfig

if TYPE_CHECKING:
    from radlake.train.run import DetectorStage

CHAMPION, CHALLENGER = "champion", "challenger"
#: Smallest difference in a metric that counts as better (metrics equal within it are a tie).
TOLERANCE = 1e-6


@dataclass(frozen=True)
class PromotionResult:
    """What registering and comparing did."""

    model_name: str
    version: str
    run_id: str
    promoted: bool
    previous_champion: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _champion(client: mlflow.MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _wins(challenger: dict[str, float], champion: dict[str, float], primary: str, secondary: str | None) -> bool:
    a, b = challenger.get(primary, 0.0), champion.get(primary, 0.0)
    if abs(a - b) > TOLERANCE:
        return a > b
    if secondary is None:
        return False
    return challenger.get(secondary, 0.0) - champion.get(secondary, 0.0) > TOLERANCE


def register_and_promote(config: RadlakeConfig, stage: DetectorStage, run_id: str) -> PromotionResult:
    """Register ``runs:/<run_id>/model`` under ``models.<detector>``, alias it, promote it if it beats the champion."""
    from radlake.tracking import configure_mlflow, detector_experiment

    configure_mlflow(config, detector_experiment(config, stage.name))
    client = mlflow.MlflowClient()
    name = getattr(config.models, stage.name)
    run = client.get_run(run_id)
    keys = [k for k in (stage.primary_metric, stage.secondary_metric) if k]
    challenger = {k: run.data.metrics[f"test_{k}"] for k in keys if f"test_{k}" in run.data.metrics}
    # The upstream inputs a run recorded (the vertebra model behind a Schmorl's model) follow it into the registry.
    upstream = {k: v for k, v in run.data.tags.items() if k.startswith("radlake.vertebra_model")}
    mv = mlflow.register_model(f"runs:/{run_id}/model", name, tags={"radlake.detector": stage.name, **upstream})
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    current = _champion(client, name)
    champion_metrics = None
    if current is None:
        promoted, reason = True, "no champion yet"
    else:
        champion_run = client.get_run(current.run_id)
        same_split = champion_run.data.tags.get("radlake.test_split_digest") == run.data.tags.get(
            "radlake.test_split_digest"
        )
        if same_split:
            champion_metrics = {k: champion_run.data.metrics.get(f"test_{k}", 0.0) for k in keys}
        else:
            champion_metrics = evaluate_on_run_test_split(f"models:/{name}/{current.version}", run_id, stage)
        promoted = _wins(challenger, champion_metrics, stage.primary_metric, stage.secondary_metric)
        split_note = "same frozen test split" if same_split else "champion re-evaluated on the challenger's test split"
        verdict = "beats" if promoted else "does not beat"
        reason = f"version {mv.version} {verdict} champion version {current.version} ({split_note})"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    tags = {
        "radlake.compared_with": str(current.version) if current is not None else "none",
        "radlake.challenger_metrics": json.dumps(challenger, sort_keys=True),
        "radlake.champion_metrics": json.dumps(champion_metrics, sort_keys=True),
        "radlake.promoted": str(promoted).lower(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
    description = (
        f"Trained by run {run_id}. Test metrics: {json.dumps(challenger, sort_keys=True)}. "
        f"{'Promoted to champion' if promoted else 'Kept as challenger'}: {reason}."
    )
    client.update_model_version(name, mv.version, description=description)
    return PromotionResult(
        model_name=name,
        version=str(mv.version),
        run_id=run_id,
        promoted=promoted,
        previous_champion=str(current.version) if current is not None else None,
        challenger_metrics=challenger,
        champion_metrics=champion_metrics,
        reason=reason,
    )


def evaluate_on_run_test_split(model_uri: str, run_id: str, stage: DetectorStage) -> dict[str, float]:
    """Metrics of ``model_uri`` on the test cache that run ``run_id`` used (its tag ``radlake.test_cache``).

    The pyfunc's output is already cut at its own score threshold, so every returned
    detection counts.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from radlake.models.detector import detections_as_arrays
    from radlake.models.levels import level_to_class
    from radlake.models.pyfunc import INPUT_COLUMNS
    from radlake.train.metrics import ImageResult, evaluate_results

    cache = mlflow.MlflowClient().get_run(run_id).data.tags.get("radlake.test_cache")
    if not cache:
        raise RuntimeError(f"Run {run_id} does not record its test cache (tag radlake.test_cache)")
    rows = pq.ParquetDataset(cache).read().to_pandas()
    found = mlflow.pyfunc.load_model(model_uri).predict(rows[list(INPUT_COLUMNS)])["detections"]
    results = []
    for row, detections in zip(rows.to_dict("records"), found, strict=True):
        boxes, scores, classes = detections_as_arrays(
            [
                {
                    "box_xyxy": [d["x0"], d["y0"], d["x1"], d["y1"]],
                    "score": d["score"],
                    "class_index": level_to_class(d["level"]) if d.get("level") else 1,
                }
                for d in detections
            ]
        )
        results.append(
            ImageResult(
                study_uid=row["study_instance_uid"],
                sop_instance_uid=row["sop_instance_uid"],
                frame_index=int(row["frame_index"]),
                pred_boxes=boxes,
                pred_scores=scores,
                pred_classes=classes,
                true_boxes=np.array(list(row["boxes_xyxy_px"]), np.float32).reshape(-1, 4),
                true_classes=np.asarray(row["labels"], np.int64),
            )
        )
    kind = stage.spec(RadlakeConfig()).kind  # the kind of a detector does not depend on its settings
    metrics = evaluate_results(results, score_threshold=0.0, kind=kind)
    return {k: metrics[k] for k in (stage.primary_metric, stage.secondary_metric) if k and k in metrics}
