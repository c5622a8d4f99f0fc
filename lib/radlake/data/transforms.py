"""Per-sample transforms of the training loader: an ``images`` row (+ its boxes) → network input and target.

:class:`DetectionTransform` runs in the loader's worker processes. It decodes the
frame and applies the model's preprocessing (:mod:`radlake.models.preprocess`): the
intensity window, then either resampling to the detector's physical pixel size
(``input_spacing_mm``) or the letterbox to ``image_size``. For training it adds random
augmentations that keep boxes exact, so that a model trained on one archive holds up
on scanners and sites it never saw:

- **Geometry.** A zoom in ``scale_range`` (anatomy of other sizes). Physical inputs are
  then cut to a random ``image_size`` square window of the field of view, shifted up to
  ``translate_fraction`` of the window past the frame's edges: fields of view that cut
  bodies at the edges. Letterboxed inputs are shifted by up to ``translate_fraction``
  instead. Boxes move with the pixels and are clipped; a box with under
  :data:`MIN_VISIBLE_FRACTION` of its area left inside is dropped (the labelling rule of
  truncated bodies).
- **Appearance**, in the order a scanner makes it: a smooth multiplicative bias field
  (coil sensitivity, ``bias_strength``), blur (point-spread function, Gaussian of up to
  ``blur_sigma_px`` input pixels), Rician noise of up to ``noise_std`` (lower SNR),
  coarse quantisation (bit depth, ``min_bits`` to 8 bits), then the contrast
  (``contrast_range``) and gamma (``gamma_range``) of another weighting or window.

- **Flips** (``flip_vertical``, ``flip_horizontal``), off unless configured: a whole
  sagittal frame has a top (the head) and a front, a Schmorl's crop is symmetric enough
  (a node of either endplate, anywhere along it). The target's ``geometry`` keeps the
  unflipped mapping (flips are training-only; nothing maps training outputs back).

Randomness comes from torch's generator of the worker process, which the
DataLoader seeds from the training seed, so a run is repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from radlake.config import AugmentConfig
from radlake.dicom.pixels import TRANSFORM_COLUMNS
from radlake.models.preprocess import FrameGeometry, prepare_frame

#: A box left with less than this share of its area inside an augmented input is dropped.
MIN_VISIBLE_FRACTION = 0.4


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(()).uniform_(float(lo), float(hi)))


class DetectionTransform:
    """``row → (image (1, H, W) float32 in [0, 1], target {"boxes": (N, 4) xyxy input px, "labels": (N,)})``.

    Parameters
    ----------
    image_size
        Side ``S`` of the training input (and of every letterboxed input), pixels.
    augment
        Augmentation settings; ``None`` (or ``enabled: false``) for evaluation.
    input_spacing_mm
        Physical pixel size of the input (mm), or ``None`` to letterbox.
    class_of_label
        Detector class (1-based) of each label value ``v`` at index ``v - 1``
        (:meth:`radlake.models.detector.DetectorSpec.class_of_label`): the training
        target's ``labels`` are mapped through it. Without it (evaluation) the target
        keeps the row's labels.

    The row needs ``pixels``, ``dtype``, ``height``, ``width`` and, for ``images``
    rows, the transform columns of :data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`
    (crops have none: they hold their values), and ``pixel_spacing`` for physical inputs; for training also ``boxes_xyxy_px`` (list of ``[x0, y0, x1,
    y1]`` source pixels) and ``labels`` (1-based). The target also carries the source →
    input ``geometry`` (:class:`~radlake.models.preprocess.FrameGeometry`) and the row's
    ``sop_instance_uid`` / ``frame_index`` / ``study_instance_uid`` / ``series_key`` /
    ``slice_index`` / ``pixel_spacing`` when present.
    """

    def __init__(
        self,
        image_size: int,
        augment: AugmentConfig | None = None,
        *,
        input_spacing_mm: float | None = None,
        class_of_label: Sequence[int] | None = None,
    ) -> None:
        self.image_size = int(image_size)
        self.augment = augment if augment is not None and augment.enabled else None
        self.input_spacing_mm = input_spacing_mm
        self.class_of_label = list(class_of_label) if class_of_label is not None else None

    def __call__(self, row: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        spacing = self.input_spacing_mm
        zoom = _uniform(*self.augment.scale_range) if self.augment is not None else 1.0
        if spacing and self.augment is not None:
            spacing = spacing / zoom  # resample once, at the zoomed pixel size
        image, geometry = prepare_frame(
            row["pixels"],
            row["dtype"],
            row["height"],
            row["width"],
            self.image_size,
            pixel_spacing=row.get("pixel_spacing"),
            input_spacing_mm=spacing,
            **{name: row.get(name) for name in TRANSFORM_COLUMNS},
        )
        boxes = torch.as_tensor(row.get("boxes_xyxy_px") or [], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(row.get("labels") or [], dtype=torch.int64)
        if self.augment is not None:
            physical = image.shape[-2:] != (self.image_size, self.image_size) or bool(spacing)
            if physical:
                image, geometry = self._window(image, geometry)
            else:
                image, geometry = self._zoom_shift(image, geometry, zoom)
            boxes, labels = self._boxes_inside(geometry.boxes_to_input(boxes), labels, image.shape[-2:])
            image, boxes = self._flip(image, boxes)
            image = self._appearance(image)
        else:
            boxes = geometry.boxes_to_input(boxes)
        if self.class_of_label is not None and len(labels):
            labels = torch.as_tensor([self.class_of_label[int(v) - 1] for v in labels], dtype=torch.int64)
        target = {"boxes": boxes, "labels": labels, "geometry": geometry}
        for key in (
            "sop_instance_uid",
            "frame_index",
            "study_instance_uid",
            "series_key",
            "slice_index",
            "pixel_spacing",
        ):
            if key in row:
                target[key] = row[key]
        return image, target

    # Geometry -----------------------------------------------------------------------------

    def _window(self, image: torch.Tensor, geometry: FrameGeometry) -> tuple[torch.Tensor, FrameGeometry]:
        """A random ``S × S`` window of a physically resampled frame (zeros where it leaves the frame)."""
        size, slack = self.image_size, self.augment.translate_fraction * self.image_size
        height, width = image.shape[-2:]
        x0 = round(_uniform(min(0, width - size) - slack, max(0, width - size) + slack))
        y0 = round(_uniform(min(0, height - size) - slack, max(0, height - size) + slack))
        out = torch.zeros((1, size, size), dtype=image.dtype)
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(width, x0 + size), min(height, y0 + size)
        if sx1 > sx0 and sy1 > sy0:
            out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
        moved = FrameGeometry(geometry.scale_x, geometry.scale_y, geometry.offset_x - x0, geometry.offset_y - y0)
        return out, moved

    def _zoom_shift(
        self, image: torch.Tensor, geometry: FrameGeometry, zoom: float
    ) -> tuple[torch.Tensor, FrameGeometry]:
        """Zoom about the centre and shift a letterboxed ``S × S`` input (an affine resampling)."""
        size = self.image_size
        shift = (torch.rand(2) * 2 - 1) * self.augment.translate_fraction * size  # (dx, dy) input pixels
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
        # input' = (input - c) * zoom + c + shift, applied to the geometry's output.
        moved = FrameGeometry(
            geometry.scale_x * zoom,
            geometry.scale_y * zoom,
            (geometry.offset_x - centre) * zoom + centre + float(shift[0]),
            (geometry.offset_y - centre) * zoom + centre + float(shift[1]),
        )
        return image, moved

    @staticmethod
    def _boxes_inside(
        boxes: torch.Tensor, labels: torch.Tensor, shape: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(boxes):
            return boxes, labels
        height, width = int(shape[0]), int(shape[1])
        clipped = torch.stack(
            [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width),
             boxes[:, 3].clamp(0, height)],
            dim=1,
        )  # fmt: skip
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1).clamp(min=1e-6)
        inside = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(1)
        keep = inside / area >= MIN_VISIBLE_FRACTION
        return clipped[keep], labels[keep]

    def _flip(self, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip top-bottom and left-right with the configured probabilities; ``boxes`` (xyxy input px) follow."""
        height, width = image.shape[-2:]
        if self.augment.flip_vertical > 0 and torch.rand(()) < self.augment.flip_vertical:
            image = image.flip(-2)
            boxes = torch.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], dim=1)
        if self.augment.flip_horizontal > 0 and torch.rand(()) < self.augment.flip_horizontal:
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, boxes

    # Appearance ---------------------------------------------------------------------------

    def _appearance(self, image: torch.Tensor) -> torch.Tensor:
        a = self.augment
        height, width = image.shape[-2:]
        if a.bias_strength > 0:
            coarse = torch.randn(1, 1, 3, 3) * a.bias_strength
            field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]
            image = image * torch.exp(field.clamp(-1.5, 1.5))
        if a.blur_sigma_px > 0 and torch.rand(()) < 0.5:
            image = _gaussian_blur(image, _uniform(0.3, a.blur_sigma_px))
        if a.noise_std > 0:
            sigma = _uniform(0.0, a.noise_std)
            image = torch.sqrt((image + torch.randn_like(image) * sigma) ** 2 + (torch.randn_like(image) * sigma) ** 2)
        image = image.clamp(0, 1)
        if a.min_bits < 8 and torch.rand(()) < 0.3:
            levels = 2 ** int(torch.randint(a.min_bits, 9, ()))
            image = torch.round(image * (levels - 1)) / (levels - 1)
        contrast = _uniform(*a.contrast_range)
        image = ((image - 0.5) * contrast + 0.5).clamp(0, 1)
        return image ** _uniform(*a.gamma_range)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(1, H, W)`` image blurred by a separable Gaussian of ``sigma`` pixels (reflected edges)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[0]


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists (boxes per image differ in number, physical inputs in size)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
