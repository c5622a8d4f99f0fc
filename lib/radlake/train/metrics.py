"""Detection metrics that radiology readers expect, on boxes in source pixels.

- ``map_50`` / ``map``: COCO average precision at IoU 0.5 and averaged over IoU
  0.5:0.95 (torchmetrics' ``MeanAveragePrecision`` on pycocotools), class-agnostic:
  it scores finding the object; the class (level) is scored apart.
- ``detection_rate``: share of true boxes matched by a prediction at or above the
  score threshold with IoU ≥ 0.5 (greedy by score, one prediction per true box).
- ``level_id_rate`` (level detectors): share of matched true boxes whose predicted
  level is right; ``study_all_levels``: share of studies where every true box of every
  image is matched with the right level.
- ``fp_per_image``: unmatched predictions at or above the threshold, per image.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

MATCH_IOU = 0.5


@dataclass
class ImageResult:
    """Predictions and truth for one frame; boxes ``(N, 4)`` xyxy source pixels, classes 1-based."""

    study_uid: str
    sop_instance_uid: str
    frame_index: int
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_classes: np.ndarray
    true_boxes: np.ndarray
    true_classes: np.ndarray
    extra: dict = field(default_factory=dict)


def match(result: ImageResult, score_threshold: float, iou: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by score: (index of the matched prediction per true box or -1, matched flag per prediction)."""
    keep = np.flatnonzero(result.pred_scores >= score_threshold)
    keep = keep[np.argsort(-result.pred_scores[keep], kind="stable")]
    matched_pred = np.zeros(len(result.pred_scores), dtype=bool)
    truth_to_pred = np.full(len(result.true_boxes), -1, dtype=np.int64)
    if len(keep) and len(result.true_boxes):
        ious = box_iou(torch.as_tensor(result.pred_boxes[keep]), torch.as_tensor(result.true_boxes)).numpy()
        for row, p in enumerate(keep):
            candidates = np.where(truth_to_pred < 0, ious[row], -1.0)
            t = int(candidates.argmax())
            if candidates[t] >= iou:
                truth_to_pred[t] = p
                matched_pred[p] = True
    return truth_to_pred, matched_pred


def coco_ap(results: list[ImageResult]) -> dict[str, float | np.ndarray]:
    """Class-agnostic ``map_50``, ``map`` and the precision-recall curve at IoU 0.5 (``pr_recall``, ``pr_precision``)."""
    from torchmetrics.detection import MeanAveragePrecision

    # Rank 0 evaluates alone: no sync with the other DDP ranks.
    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", extended_summary=True, backend="pycocotools", sync_on_compute=False
    )
    for r in results:
        metric.update(
            [
                {
                    "boxes": torch.as_tensor(r.pred_boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.as_tensor(r.pred_scores, dtype=torch.float32),
                    "labels": torch.ones(len(r.pred_scores), dtype=torch.int64),
                }
            ],
            [
                {
                    "boxes": torch.as_tensor(r.true_boxes, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.ones(len(r.true_boxes), dtype=torch.int64),
                }
            ],
        )
    out = metric.compute()
    recall = np.asarray(metric.rec_thresholds if hasattr(metric, "rec_thresholds") else np.linspace(0, 1, 101))
    precision = out["precision"][0, :, 0, 0, -1].numpy() if out["precision"].numel() else np.zeros_like(recall)
    return {
        "map_50": max(0.0, float(out["map_50"])),
        "map": max(0.0, float(out["map"])),
        "pr_recall": np.asarray(recall, dtype=np.float64),
        "pr_precision": np.clip(precision, 0, 1),
    }


def detection_metrics(results: list[ImageResult], *, score_threshold: float, levels: bool) -> dict[str, float]:
    """Every metric of the module docstring (``levels`` adds the level metrics)."""
    ap = coco_ap(results)
    n_true = n_found = n_right = n_fp = 0
    study_ok: dict[str, bool] = defaultdict(lambda: True)
    for r in results:
        truth_to_pred, matched = match(r, score_threshold)
        n_true += len(truth_to_pred)
        found = truth_to_pred >= 0
        n_found += int(found.sum())
        n_fp += int(((r.pred_scores >= score_threshold) & ~matched).sum())
        if levels:
            predicted = r.pred_classes[truth_to_pred] if len(r.pred_classes) else np.zeros(len(truth_to_pred), np.int64)
            right = found & (predicted == r.true_classes)
            n_right += int(right.sum())
            study_ok[r.study_uid] &= bool(right.all())
    metrics = {
        "map_50": ap["map_50"],
        "map": ap["map"],
        "detection_rate": n_found / n_true if n_true else 0.0,
        "fp_per_image": n_fp / len(results) if results else 0.0,
        "n_images": float(len(results)),
        "n_true_boxes": float(n_true),
    }
    if levels:
        metrics["level_id_rate"] = n_right / n_found if n_found else 0.0
        metrics["study_all_levels"] = sum(study_ok.values()) / len(study_ok) if study_ok else 0.0
    return metrics
