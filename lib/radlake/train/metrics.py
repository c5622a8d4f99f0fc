"""Detection metrics that radiology readers expect, on boxes in source pixels.

- ``map_50`` / ``map``: COCO average precision at IoU 0.5 and averaged over IoU
  0.5:0.95 (torchmetrics' ``MeanAveragePrecision`` on pycocotools), class-agnostic:
  it scores finding the object; the class (level) is scored apart.
- ``detection_rate``: share of true boxes matched by a prediction at or above the
  score threshold with IoU ≥ 0.5 (greedy by score, one prediction per true box).
- ``level_id_rate`` (level detectors): share of matched true boxes whose predicted
  level is right (a body whose level is uncertain, class 0, is not right);
  ``level_uncertain_rate``: share of them whose level is uncertain; ``level_wrong_rate``:
  share named with another level (what misleads a reader), ``level_right_or_uncertain_rate``
  its complement; ``study_all_levels``:
  share of studies where every true box of every image is matched with the right level.
- ``fp_per_image``: unmatched predictions at or above the threshold, per image.

Lesion metrics (``lesion_metrics``), for a second-stage detector of small lesions
(Schmorl's nodes) inside vertebra crops. An "image" is one element of ``results``:
a crop for the crop detector, a whole frame for a whole-image detector, so every
"per image" below means per crop or per frame accordingly. Small boxes shift IoU a
lot for a pixel of error, so a lesion counts as found at IoU ≥ 0.3 (``LESION_IOU``).

- ``ap_30`` / ``ap_50``: class-agnostic COCO AP at IoU 0.3 and at IoU 0.5.
- ``crop_auc``: ROC AUC of "the image holds at least one lesion", scoring each image
  by its highest prediction score (0.0 without predictions).
- ``froc_sens_at_{r}fp``: lesion-level FROC, the best sensitivity (found lesions /
  true lesions, IoU ≥ 0.3) at any score threshold with at most ``r`` false positives
  per image, for ``r`` in ``FROC_RATES``; ``froc_mean`` is their mean.
- ``detection_rate`` / ``fp_per_image``: as above, at the score threshold, IoU ≥ 0.3.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

MATCH_IOU = 0.5
LESION_IOU = 0.3
FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)


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

    @classmethod
    def of_frame(cls, row, **boxes: np.ndarray) -> ImageResult:
        """The result of the frame a table row names (``study_instance_uid``, ``sop_instance_uid``,
        ``frame_index``), with the ``pred_*`` and ``true_*`` arrays given."""
        return cls(
            study_uid=row["study_instance_uid"],
            sop_instance_uid=row["sop_instance_uid"],
            frame_index=int(row["frame_index"]),
            **boxes,
        )


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


def operating_point(results: list[ImageResult], score_threshold: float, *, iou: float) -> tuple[int, int, int]:
    """(true boxes, true boxes found, false positives) over ``results`` at one score threshold and IoU."""
    n_true = n_found = n_fp = 0
    for r in results:
        truth_to_pred, matched = match(r, score_threshold, iou=iou)
        n_true += len(truth_to_pred)
        n_found += int((truth_to_pred >= 0).sum())
        n_fp += int(((r.pred_scores >= score_threshold) & ~matched).sum())
    return n_true, n_found, n_fp


def _update_class_agnostic(metric, results: list[ImageResult]) -> None:
    """Feed ``results`` to a torchmetrics ``MeanAveragePrecision`` with every box as class 1."""
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


def coco_ap(results: list[ImageResult]) -> dict[str, float | np.ndarray]:
    """Class-agnostic ``map_50``, ``map`` and the precision-recall curve at IoU 0.5 (``pr_recall``, ``pr_precision``)."""
    from torchmetrics.detection import MeanAveragePrecision

    # Rank 0 evaluates alone: no sync with the other DDP ranks.
    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", extended_summary=True, backend="pycocotools", sync_on_compute=False
    )
    _update_class_agnostic(metric, results)
    out = metric.compute()
    recall = np.asarray(metric.rec_thresholds if hasattr(metric, "rec_thresholds") else np.linspace(0, 1, 101))
    precision = out["precision"][0, :, 0, 0, -1].numpy() if out["precision"].numel() else np.zeros_like(recall)
    return {
        "map_50": max(0.0, float(out["map_50"])),
        "map": max(0.0, float(out["map"])),
        "pr_recall": np.asarray(recall, dtype=np.float64),
        "pr_precision": np.clip(precision, 0, 1),
    }


def _level_rates(found: int, right: int, uncertain: int) -> dict[str, float]:
    """Of ``found`` vertebrae: the shares named right (``level_id_rate``), uncertain and named wrong."""
    if not found:
        return {"level_id_rate": 0.0, "level_uncertain_rate": 0.0, "level_wrong_rate": 0.0}
    return {
        "level_id_rate": right / found,
        "level_uncertain_rate": uncertain / found,
        "level_wrong_rate": (found - right - uncertain) / found,
    }


def detection_metrics(results: list[ImageResult], *, score_threshold: float, levels: bool) -> dict[str, float]:
    """Every metric of the module docstring (``levels`` adds the level metrics)."""
    ap = coco_ap(results)
    n_true = n_found = n_right = n_fp = n_unsure = 0
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
            n_unsure += int((found & (predicted == 0)).sum())
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
        metrics.update(_level_rates(n_found, n_right, n_unsure))
        metrics["level_right_or_uncertain_rate"] = 1.0 - metrics["level_wrong_rate"] if n_found else 0.0
        metrics["study_all_levels"] = sum(study_ok.values()) / len(study_ok) if study_ok else 0.0
    return metrics


def ap_at_iou(results: list[ImageResult], iou: float) -> float:
    """Class-agnostic COCO average precision at the one IoU threshold ``iou``.

    Parameters
    ----------
    results : list of ImageResult
        Images with neither truth nor predictions are allowed.
    iou : float
        IoU a prediction needs with a true box to count as a hit.

    Returns
    -------
    float
        AP in [0, 1]; 0.0 where pycocotools has nothing to score (it reports -1).
    """
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", iou_thresholds=[iou], backend="pycocotools", sync_on_compute=False
    )
    _update_class_agnostic(metric, results)
    return max(0.0, float(metric.compute()["map"]))


def crop_auc(results: list[ImageResult], score_threshold: float = 0.0) -> float:
    """Image-level ROC AUC of "the image holds at least one true box".

    Parameters
    ----------
    results : list of ImageResult
        One element per image (per crop for the crop detector).
    score_threshold : float
        Predictions scored below it are ignored.

    Returns
    -------
    float
        AUC of the image score, the highest kept prediction score (0.0 without one),
        against the image label; ``nan`` when all images have the same label (AUC is
        undefined with a single class), including when ``results`` is empty.
    """
    from torchmetrics.functional.classification import binary_auroc

    labels = torch.tensor([len(r.true_boxes) > 0 for r in results], dtype=torch.int64)
    if labels.numel() == 0 or labels.min() == labels.max():
        return float("nan")
    scores = torch.tensor(
        [float(r.pred_scores[r.pred_scores >= score_threshold].max(initial=0.0)) for r in results],
        dtype=torch.float32,
    )
    return float(binary_auroc(scores, labels))


def _rate_key(rate: float) -> str:
    return f"froc_sens_at_{f'{rate:g}'.replace('.', 'p')}fp"


def froc(
    results: list[ImageResult], rates: tuple[float, ...] = FROC_RATES, iou: float = LESION_IOU
) -> dict[str, float]:
    """Lesion-level free-response ROC: sensitivity at fixed false positives per image.

    Each image's predictions are matched greedily by descending score, each to the
    unmatched true box of highest IoU when that IoU is at least ``iou`` (a true
    positive), else a false positive (so a second prediction on a found lesion is a
    false positive). Greedy-by-score matching makes these flags the same at every
    score threshold, so the predictions of all images are pooled and swept by score;
    predictions of equal score enter together, as one threshold.

    Parameters
    ----------
    results : list of ImageResult
        One element per image. False positives are counted per element: per crop for
        the crop detector, per frame for a whole-image detector.
    rates : tuple of float
        False positives per image at which to read the sensitivity.
    iou : float
        IoU a prediction needs with a true box to find it.

    Returns
    -------
    dict of str to float
        ``froc_sens_at_{r}fp`` (``r`` as ``f"{rate:g}"`` with ``.`` as ``p``, e.g.
        ``froc_sens_at_0p25fp``): the highest sensitivity, true positives / all true
        boxes, at any threshold with false positives / number of images ≤ ``r`` (0.0
        when none); ``froc_mean``: their mean. All ``nan`` when there is no true box.
    """
    n_true = sum(len(r.true_boxes) for r in results)
    if n_true == 0:
        return {**{_rate_key(rate): float("nan") for rate in rates}, "froc_mean": float("nan")}
    scores = np.concatenate([np.asarray(r.pred_scores, np.float64).reshape(-1) for r in results])
    hits = np.concatenate([match(r, -np.inf, iou)[1] for r in results])
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    # Only the last prediction of each run of equal scores is a threshold.
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)
    sens = np.r_[0.0, tp[last] / n_true]
    fp_rate = np.r_[0.0, fp[last] / len(results)]
    out = {_rate_key(rate): float(sens[fp_rate <= rate].max()) for rate in rates}
    out["froc_mean"] = float(np.mean(list(out.values())))
    return out


def lesion_metrics(results: list[ImageResult], *, score_threshold: float) -> dict[str, float]:
    """The lesion metrics of the module docstring, at lesion IoU ``LESION_IOU``.

    Parameters
    ----------
    results : list of ImageResult
        One element per image (per crop for the crop detector).
    score_threshold : float
        Operating point of ``detection_rate`` and ``fp_per_image``.

    Returns
    -------
    dict of str to float
        ``ap_30``, ``ap_50``, ``crop_auc``, the ``froc`` keys, ``detection_rate``,
        ``fp_per_image``, ``n_images``, ``n_true_boxes``. A metric that is undefined
        (``nan``: ``crop_auc`` with a single class, FROC without true boxes) is left
        out rather than logged, since MLflow cannot plot ``nan``.
    """
    n_true, n_found, n_fp = operating_point(results, score_threshold, iou=LESION_IOU)
    metrics = {
        "ap_30": ap_at_iou(results, 0.3),
        "ap_50": ap_at_iou(results, 0.5),
        "crop_auc": crop_auc(results),
        **froc(results),
        "detection_rate": n_found / n_true if n_true else 0.0,
        "fp_per_image": n_fp / len(results) if results else 0.0,
        "n_images": float(len(results)),
        "n_true_boxes": float(n_true),
    }
    return {k: v for k, v in metrics.items() if not np.isnan(v)}


def evaluate_results(results: list[ImageResult], *, score_threshold: float, kind: str) -> dict[str, float]:
    """The metrics of one detector kind: :func:`detection_metrics`, and for ``plain`` (lesion) detectors
    :func:`lesion_metrics` on top (its ``detection_rate`` and ``fp_per_image`` at IoU :data:`LESION_IOU`)."""
    metrics = detection_metrics(results, score_threshold=score_threshold, levels=kind == "level")
    if kind == "plain":
        metrics.update(lesion_metrics(results, score_threshold=score_threshold))
    return metrics


def level_metrics(results: list[ImageResult], *, score_threshold: float = 0.0) -> dict[str, float]:
    """How well the levels of the found vertebrae are named, over frames and over series stacks.

    Parameters
    ----------
    results : list of ImageResult
        One per frame: predicted classes are 1-based level indices, 0 for a body whose
        level was not named (``extra["uncertain"]``, a bool array per prediction, says
        which of those are uncertain); ``extra["series_key"]`` groups frames into stacks.
    score_threshold : float
        Predictions below it are ignored.

    Returns
    -------
    dict of str to float
        Over the found vertebrae (true boxes matched at IoU 0.5): ``level_id_rate`` (level
        named and right; an uncertain body counts as not right), ``level_uncertain_rate``
        and ``level_wrong_rate`` (named, but another level). Over series stacks:
        ``series_all_levels_right``, the share of stacks in which every found vertebra has
        its right level named, and ``series_all_found_and_right``, in which moreover every
        labelled vertebra was found; a stack with no vertebra found counts as neither.
        ``n_series``.
    """
    found = right = unsure = 0
    series_right: dict[str, bool] = defaultdict(lambda: True)
    series_complete: dict[str, bool] = defaultdict(lambda: True)
    series_found: dict[str, int] = defaultdict(int)
    for r in results:
        key = str(r.extra.get("series_key") or r.study_uid)
        truth_to_pred, _ = match(r, score_threshold)
        hit = truth_to_pred >= 0
        uncertain = np.asarray(r.extra.get("uncertain", np.zeros(len(r.pred_scores), bool)), bool)
        named = r.pred_classes[truth_to_pred[hit]] if hit.any() else np.zeros(0, np.int64)
        ok = named == r.true_classes[hit]
        found += int(hit.sum())
        right += int(ok.sum())
        unsure += int(uncertain[truth_to_pred[hit]].sum()) if hit.any() else 0
        series_right[key] &= bool(ok.all())
        series_complete[key] &= bool(ok.all() and hit.all())
        series_found[key] += int(hit.sum())
    for key, n in series_found.items():
        if n == 0:
            series_right[key] = series_complete[key] = False
    return {
        **_level_rates(found, right, unsure),
        "series_all_levels_right": sum(series_right.values()) / len(series_right) if series_right else 0.0,
        "series_all_found_and_right": sum(series_complete.values()) / len(series_complete) if series_complete else 0.0,
        "n_series": float(len(series_right)),
    }


def archive_metrics(
    vertebrae: list[ImageResult], nodes: list[ImageResult], *, schmorl_threshold: float
) -> dict[str, float]:
    """Both detectors end to end on labelled frames, as ``radlake evaluate`` reports them.

    Parameters
    ----------
    vertebrae : list of ImageResult
        Per frame: the vertebrae reported (classes as in :func:`level_metrics`) and the
        labelled ones.
    nodes : list of ImageResult
        The same frames: Schmorl's nodes reported and labelled.
    schmorl_threshold : float
        The operating point of ``schmorl_sensitivity`` / ``schmorl_fp_per_image``.

    Returns
    -------
    dict of str to float
        ``vertebra_*`` (:func:`detection_metrics`: ``ap_50``, ``map``, ``detection_rate``,
        ``fp_per_image``), the :func:`level_metrics`, ``schmorl_froc_*`` (false positives
        per frame), ``schmorl_ap_30``, ``schmorl_sensitivity`` and ``schmorl_fp_per_image``
        at ``schmorl_threshold``, and the counts ``n_frames``, ``n_true_vertebrae``,
        ``n_true_nodes``. FROC values are left out when no node is labelled.
    """
    out: dict[str, float] = {}
    det = detection_metrics(vertebrae, score_threshold=0.0, levels=False)
    out.update({f"vertebra_{k}": det[k] for k in ("map_50", "map", "detection_rate", "fp_per_image")})
    out["vertebra_ap_50"] = out.pop("vertebra_map_50")
    out.update(level_metrics(vertebrae))
    lesions = froc(nodes)
    out.update({f"schmorl_{k}": v for k, v in lesions.items() if not np.isnan(v)})
    n_true, n_found, n_fp = operating_point(nodes, schmorl_threshold, iou=LESION_IOU)
    if n_true:
        out["schmorl_ap_30"] = ap_at_iou(nodes, LESION_IOU)
        out["schmorl_sensitivity"] = n_found / n_true
    out["schmorl_fp_per_image"] = n_fp / len(nodes) if nodes else 0.0
    out["n_frames"] = float(len(vertebrae))
    out["n_true_vertebrae"] = float(sum(len(r.true_boxes) for r in vertebrae))
    out["n_true_nodes"] = float(n_true)
    return out
