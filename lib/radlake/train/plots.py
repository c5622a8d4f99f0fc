"""Figures logged with every training run: curves, the precision-recall curve and validation images with boxes.

Each function returns a matplotlib ``Figure`` (Agg backend, no display needed) for
``mlflow.log_figure``. Boxes are drawn in source pixels: truth in green, predictions
in orange with their level (or class) and score.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from radlake.train.metrics import ImageResult  # noqa: E402


def training_curves(history: list[dict[str, float]]) -> Figure:
    """Loss parts (left) and validation metrics (right) per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k.startswith("train_")}):
        if key in ("train_steps", "train_seconds"):
            continue
        left.plot(epochs, [h.get(key, np.nan) for h in history], label=key.removeprefix("train_"))
    left.set(xlabel="epoch", ylabel="loss", title="training loss")
    left.legend(fontsize=8)
    for key in ("val_map_50", "val_map", "val_detection_rate", "val_level_id_rate"):
        validated = [h for h in history if key in h]  # validation may run every few epochs only
        if validated:
            right.plot(
                [h["epoch"] for h in validated], [h[key] for h in validated], marker=".", label=key.removeprefix("val_")
            )
    right.set(xlabel="epoch", ylim=(0, 1.02), title="validation")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def precision_recall(recall: np.ndarray, precision: np.ndarray, title: str) -> Figure:
    """COCO-interpolated precision against recall at IoU 0.5."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    valid = precision >= 0
    ax.plot(recall[valid], precision[valid])
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def draw_detections(
    image01: np.ndarray, result: ImageResult, class_names: tuple[str, ...], score_threshold: float
) -> Figure:
    """One frame (intensities in [0, 1], source pixels) with true and predicted boxes.

    Classes are 1-based indices into ``class_names``; a prediction of class 0 (a level
    detector's uncertain body) is drawn with ``?``.
    """

    def name(cls) -> str:
        return class_names[int(cls) - 1] if int(cls) > 0 else "?"

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image01, cmap="gray", vmin=0, vmax=1)
    for box, cls in zip(result.true_boxes, result.true_classes, strict=True):
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="lime", lw=1))
        ax.text(box[0] - 2, box[1], name(cls), color="lime", fontsize=6, ha="right", va="top")
    for box, score, cls in zip(result.pred_boxes, result.pred_scores, result.pred_classes, strict=True):
        if score < score_threshold:
            continue
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="orange", lw=1))
        ax.text(box[2] + 2, box[1], f"{name(cls)} {score:.2f}", color="orange", fontsize=6, va="top")
    ax.set_title(f"{result.sop_instance_uid[-24:]} frame {result.frame_index}", fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    return fig
