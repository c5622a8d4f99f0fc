"""Per-sample transforms of the training loader: an ``images`` row (+ its boxes) → network input and target.

:class:`DetectionTransform` runs in the loader's worker processes. It decodes the
frame, applies the model's preprocessing (:mod:`radlake.models.preprocess`: intensity
window and letterbox to ``image_size``) and, for training, random augmentations
that keep boxes exact:

- zoom by a factor in ``scale_range`` and shift by up to ``translate_fraction`` of the
  side (an affine resampling of the image; boxes are mapped by the same affine and
  clipped; a box left with under half its area inside is dropped);
- intensity gamma in ``gamma_range`` and Gaussian noise of ``noise_std``.

No left-right flip: on sagittal images it swaps anterior and posterior.
Randomness comes from torch's generator of the worker process, which the
DataLoader seeds from the training seed, so a run is repeatable.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from radlake.config import AugmentConfig
from radlake.models.preprocess import prepare_frame


class DetectionTransform:
    """``row → (image (1, S, S) float32 in [0, 1], target {"boxes": (N, 4) xyxy input px, "labels": (N,)})``.

    Parameters
    ----------
    image_size
        Side ``S`` of the network input, pixels.
    augment
        Augmentation settings; ``None`` (or ``enabled: false``) for evaluation.

    The row needs ``pixels``, ``dtype``, ``height``, ``width``; for training also
    ``boxes_xyxy_px`` (list of ``[x0, y0, x1, y1]`` source pixels) and ``labels``
    (class indices, 1-based). The target also carries the letterbox ``scale`` and the
    row's ``sop_instance_uid`` / ``frame_index`` when present.
    """

    def __init__(self, image_size: int, augment: AugmentConfig | None = None) -> None:
        self.image_size = int(image_size)
        self.augment = augment if augment is not None and augment.enabled else None

    def __call__(self, row: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        image, box = prepare_frame(row["pixels"], row["dtype"], row["height"], row["width"], self.image_size)
        boxes = torch.as_tensor(row.get("boxes_xyxy_px") or [], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(row.get("labels") or [], dtype=torch.int64)
        boxes = box.boxes_to_input(boxes)
        if self.augment is not None:
            image, boxes, labels = self._augment(image, boxes, labels)
        target = {"boxes": boxes, "labels": labels, "scale": box.scale}
        for key in ("sop_instance_uid", "frame_index", "study_instance_uid"):
            if key in row:
                target[key] = row[key]
        return image, target

    def _augment(
        self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.augment
        size = self.image_size
        zoom = float(torch.empty(()).uniform_(*a.scale_range))
        shift = (torch.rand(2) * 2 - 1) * a.translate_fraction * size  # (dx, dy) input pixels
        # Output pixel p comes from input pixel (p - c - shift) / zoom + c, c the image centre.
        centre = (size - 1) / 2
        theta = torch.tensor(
            [
                [1 / zoom, 0.0, -2 * float(shift[0]) / (size * zoom)],
                [0.0, 1 / zoom, -2 * float(shift[1]) / (size * zoom)],
            ]
        )
        grid = F.affine_grid(theta[None], [1, 1, size, size], align_corners=False)
        image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        if len(boxes):
            mapped = (boxes - centre) * zoom + centre + shift.repeat(2)
            clipped = mapped.clamp(0, size)
            area = (mapped[:, 2:] - mapped[:, :2]).prod(1).clamp(min=1e-6)
            inside = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(1)
            keep = inside / area >= 0.5
            boxes, labels = clipped[keep], labels[keep]
        gamma = float(torch.empty(()).uniform_(*a.gamma_range))
        image = image.clamp(0, 1) ** gamma
        if a.noise_std > 0:
            image = (image + torch.randn_like(image) * a.noise_std).clamp(0, 1)
        return image, boxes, labels


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists (boxes per image differ in number)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
