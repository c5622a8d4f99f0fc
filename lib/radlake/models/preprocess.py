"""From an ``images`` row to the network input, and back to source pixels.

Intensities: MR has no absolute units, so a frame is scaled to [0, 1] between its 0.5th
and 99.5th percentiles (:func:`normalize_intensity`).

Geometry, two ways:

- **Physical** (:func:`resample_to_spacing`, detectors with ``input_spacing_mm``): the
  frame is resampled so that one input pixel is ``input_spacing_mm`` mm along rows and
  columns, from its PixelSpacing (``[row spacing, column spacing]`` mm; anisotropic
  pixels are resampled per axis). A 256 px frame of 1.2 mm pixels and a 512 px frame of
  0.6 mm pixels then show the network the same anatomy at the same size, and the
  input is as large as the field of view needs (the detector does not resize it).
- **Letterbox** (:func:`letterbox`, crops and detectors logged without
  ``input_spacing_mm``): resized by ``scale = size / max(height, width)`` (aspect kept)
  and padded with zeros at the bottom and right to ``size × size``.

Either way a point ``(x, y)`` in source pixels (x = column, y = row, origin at the
top-left corner) is at ``(x * scale_x + offset_x, y * scale_y + offset_y)`` in the
network input (:class:`FrameGeometry`); boxes ``xyxy`` map the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from radlake.dicom.pixels import frame_values

#: Percentiles of the intensity window (a robust min/max of one frame).
WINDOW_PERCENTILES = (0.5, 99.5)
#: Pixel spacings (mm) accepted for physical resampling; outside it a frame is letterboxed.
PLAUSIBLE_SPACING_MM = (0.05, 10.0)
#: Longest side (input pixels) of a physically resampled frame; a larger one is scaled down to it.
MAX_INPUT_SIDE = 1024


def normalize_intensity(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` modality values → float32 in [0, 1] between the frame's :data:`WINDOW_PERCENTILES`."""
    values = np.asarray(pixels, dtype=np.float32)
    lo, hi = np.percentile(
        values[:: max(1, values.shape[0] // 128), :: max(1, values.shape[1] // 128)], WINDOW_PERCENTILES
    )
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


@dataclass(frozen=True)
class FrameGeometry:
    """Where a source frame sits in the network input: ``input = source * scale + offset`` per axis.

    Attributes
    ----------
    scale_x, scale_y
        Input pixels per source pixel along columns (x) and rows (y).
    offset_x, offset_y
        Input pixels of the source frame's top-left corner.
    """

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    @property
    def scale(self) -> float:
        """The one scale of an isotropic geometry (letterbox, crops).

        Raises
        ------
        ValueError
            If rows and columns are scaled differently.
        """
        if not np.isclose(self.scale_x, self.scale_y, rtol=1e-6):
            raise ValueError(f"Geometry scales rows and columns differently ({self.scale_y} vs {self.scale_x})")
        return self.scale_x

    def _affine(self, boxes, inverse: bool):
        scale = [self.scale_x, self.scale_y, self.scale_x, self.scale_y]
        offset = [self.offset_x, self.offset_y, self.offset_x, self.offset_y]
        if isinstance(boxes, torch.Tensor):
            scale_t = torch.tensor(scale, dtype=boxes.dtype)
            offset_t = torch.tensor(offset, dtype=boxes.dtype)
            return (boxes - offset_t) / scale_t if inverse else boxes * scale_t + offset_t
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return (arr - offset) / scale if inverse else arr * scale + offset

    def boxes_to_input(self, boxes_xyxy_px):
        """Source-pixel ``(N, 4)`` xyxy boxes (tensor or array) → network-input pixels."""
        return self._affine(boxes_xyxy_px, inverse=False)

    def boxes_to_source(self, boxes_xyxy_input):
        """Network-input ``(N, 4)`` xyxy boxes (tensor or array) → source pixels."""
        return self._affine(boxes_xyxy_input, inverse=True)


#: The letterbox is a frame geometry with one scale and no offset (kept as a name for readers of crops).
Letterbox = FrameGeometry


def letterbox(image01: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, FrameGeometry]:
    """Resize an ``(H, W)`` image (aspect kept, antialiased) and pad it to ``(1, size, size)``."""
    image = torch.as_tensor(np.asarray(image01, dtype=np.float32))
    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(
        image[None, None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )
    out = torch.zeros((1, size, size), dtype=torch.float32)
    out[0, :new_h, :new_w] = resized[0, 0, :size, :size]
    return out, FrameGeometry(scale, scale)


def usable_spacing(pixel_spacing: Sequence[float] | None) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm if both values are plausible (:data:`PLAUSIBLE_SPACING_MM`), else ``None``."""
    if pixel_spacing is None or len(pixel_spacing) != 2:
        return None
    row, col = (float(v) for v in pixel_spacing)
    lo, hi = PLAUSIBLE_SPACING_MM
    if not (lo <= row <= hi and lo <= col <= hi):
        return None
    return row, col


def resample_to_spacing(
    image01: np.ndarray | torch.Tensor, pixel_spacing: Sequence[float], spacing_mm: float
) -> tuple[torch.Tensor, FrameGeometry]:
    """Resample an ``(H, W)`` image to ``spacing_mm`` mm per pixel along rows and columns.

    Parameters
    ----------
    image01
        ``(H, W)`` float image.
    pixel_spacing
        ``[row spacing, column spacing]`` of the source, mm (DICOM PixelSpacing order).
    spacing_mm
        Pixel size of the output, mm.

    Returns
    -------
    tuple[torch.Tensor, FrameGeometry]
        ``(1, H', W')`` float32 with ``H' ≈ H * row spacing / spacing_mm`` (at most
        :data:`MAX_INPUT_SIDE` per side), and the source → input geometry.
    """
    image = torch.as_tensor(np.asarray(image01, dtype=np.float32))
    height, width = image.shape
    row, col = (float(v) for v in pixel_spacing)
    new_h = max(1, round(height * row / spacing_mm))
    new_w = max(1, round(width * col / spacing_mm))
    shrink = min(1.0, MAX_INPUT_SIDE / max(new_h, new_w))
    new_h, new_w = max(1, round(new_h * shrink)), max(1, round(new_w * shrink))
    resized = F.interpolate(
        image[None, None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0], FrameGeometry(new_w / width, new_h / height)


def prepare_frame(
    pixels: bytes,
    dtype: str,
    height: int,
    width: int,
    size: int,
    *,
    pixel_spacing: Sequence[float] | None = None,
    input_spacing_mm: float | None = None,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    invert: bool | None = None,
    bits_stored: int | None = None,
) -> tuple[torch.Tensor, FrameGeometry]:
    """An ``images`` row's pixel columns → the network input ``(1, H', W')`` and its geometry.

    The frame's values are :func:`radlake.dicom.pixels.frame_values` of ``pixels``,
    ``dtype``, ``height``, ``width`` and the transform columns (``rescale_slope``,
    ``rescale_intercept``, ``invert``, ``bits_stored``; left out, or None, for rows that
    hold their values: crops, a model's input). With ``input_spacing_mm`` and a usable
    ``pixel_spacing`` the frame is resampled to that pixel size
    (:func:`resample_to_spacing`); otherwise it is letterboxed to ``(1, size, size)``.
    """
    values = frame_values(
        pixels,
        dtype,
        int(height),
        int(width),
        rescale_slope=rescale_slope,
        rescale_intercept=rescale_intercept,
        invert=invert,
        bits_stored=bits_stored,
    )
    frame = normalize_intensity(values)
    spacing = usable_spacing(pixel_spacing)
    if input_spacing_mm and spacing is not None:
        return resample_to_spacing(frame, spacing, input_spacing_mm)
    return letterbox(frame, size)
