"""Register a training run's model, mark it ``challenger``, and promote it to ``champion`` if it wins.

A model must first clear its detector's absolute floors (``train.<detector>.promotion_floors``,
metric names as the training run logged them, e.g. ``test_map_50``): under any of them
it is registered but never becomes champion, not even on an empty registry, and the
verdict names the metric that failed. Then promotion compares the challenger with the current champion on the same frozen test
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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException

from radlake.config import RadlakeConfig
from radlake.summary import Summary

if TYPE_CHECKING:
    from radlake.train.run import Detector

CHAMPION, CHALLENGER = "champion", "challenger"
#: Smallest difference in a metric that counts as better (metrics equal within it are a tie).
TOLERANCE = 1e-6


@dataclass(frozen=True)
class PromotionSummary(Summary):
    """What registering and comparing did."""

    model_name: str
    version: str
    run_id: str
    promoted: bool
    previous_champion: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    reason: str


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


def floor_failures(metrics: dict[str, float], floors: dict[str, float]) -> list[str]:
    """The floors ``metrics`` (a run's logged metrics) does not reach, each said in words.

    A metric the run did not log fails its floor.

    Examples
    --------
    >>> floor_failures({"test_map_50": 0.0, "test_level_id_rate": 0.9}, {"test_map_50": 0.8, "test_level_id_rate": 0.8})
    ['test_map_50 = 0.000 is under its floor 0.8']
    """
    failed = []
    for name, floor in sorted(floors.items()):
        value = metrics.get(name)
        if value is None:
            failed.append(f"{name} was not logged (floor {floor:g})")
        elif not value >= floor - TOLERANCE:
            failed.append(f"{name} = {value:.3f} is under its floor {floor:g}")
    return failed


def register_and_promote(config: RadlakeConfig, stage: Detector, run_id: str) -> PromotionSummary:
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
    failures = floor_failures(dict(run.data.metrics), getattr(config.train, stage.name).promotion_floors)
    if failures:
        promoted = False
        reason = f"version {mv.version} is under the promotion floors: {'; '.join(failures)}"
    elif current is None:
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
        "radlake.floor_failures": json.dumps(failures),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, mv.version, key, value)
    description = (
        f"Trained by run {run_id}. Test metrics: {json.dumps(challenger, sort_keys=True)}. "
        f"{'Promoted to champion' if promoted else 'Kept as challenger'}: {reason}."
    )
    client.update_model_version(name, mv.version, description=description)
    return PromotionSummary(
        model_name=name,
        version=str(mv.version),
        run_id=run_id,
        promoted=promoted,
        previous_champion=str(current.version) if current is not None else None,
        challenger_metrics=challenger,
        champion_metrics=champion_metrics,
        reason=reason,
    )


def evaluate_on_run_test_split(model_uri: str, run_id: str, stage: Detector) -> dict[str, float]:
    """Metrics of ``model_uri`` on the test cache that run ``run_id`` used (its tag ``radlake.test_cache``).

    The pyfunc's output is already cut at its own score threshold, so every returned
    detection counts.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from radlake.models.detector import detections_as_arrays
    from radlake.models.levels import level_to_class
    from radlake.models.model_input import model_input_rows
    from radlake.train.metrics import ImageResult, evaluate_results

    kind = stage.spec(RadlakeConfig()).kind  # the kind of a detector does not depend on its settings
    cache = mlflow.MlflowClient().get_run(run_id).data.tags.get("radlake.test_cache")
    if not cache:
        raise RuntimeError(f"Run {run_id} does not record its test cache (tag radlake.test_cache)")
    rows = pq.ParquetDataset(cache).read().to_pandas()
    found = mlflow.pyfunc.load_model(model_uri).predict(model_input_rows(rows))["detections"]
    results = []
    for row, detections in zip(rows.to_dict("records"), found, strict=True):
        boxes, scores, classes = detections_as_arrays(
            [
                {
                    "box_xyxy": [d["x0"], d["y0"], d["x1"], d["y1"]],
                    "score": d["score"],
                    # A level detector's body without a named level (uncertain) has no class; lesions have one.
                    "class_index": level_to_class(d["level"]) if d.get("level") else (0 if kind == "level" else 1),
                }
                for d in detections
                if d.get("level_status") != "outside"
            ]
        )
        results.append(
            ImageResult.of_frame(
                row,
                pred_boxes=boxes,
                pred_scores=scores,
                pred_classes=classes,
                true_boxes=np.array(list(row["boxes_xyxy_px"]), np.float32).reshape(-1, 4),
                true_classes=np.asarray(row["labels"], np.int64),
            )
        )
    metrics = evaluate_results(results, score_threshold=0.0, kind=kind)
    return {k: metrics[k] for k in (stage.primary_metric, stage.secondary_metric) if k and k in metrics}
