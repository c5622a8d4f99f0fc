"""From an ``images`` row to the network input, and back to source pixels.

The network sees a square ``size × size`` grey image: the frame's intensities scaled
to [0, 1] between its 0.5th and 99.5th percentiles (MR has no absolute units), then
*letterboxed*: resized by ``scale = size / max(height, width)`` (aspect ratio kept)
and padded with zeros at the bottom and right. A point ``(x, y)`` in source pixels is
at ``(x * scale, y * scale)`` in the network input; boxes map the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from radlake.dicom.pixels import decode_pixels

#: Percentiles of the intensity window (a robust min/max of one frame).
WINDOW_PERCENTILES = (0.5, 99.5)


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
class Letterbox:
    """How a source frame sits in the network input: ``input_px = source_px * scale``, top-left aligned."""

    scale: float
    size: int

    def boxes_to_input(self, boxes_xyxy_px: torch.Tensor) -> torch.Tensor:
        """Source-pixel ``xyxy`` boxes → network-input pixels."""
        return boxes_xyxy_px * self.scale

    def boxes_to_source(self, boxes_xyxy_input: torch.Tensor) -> torch.Tensor:
        """Network-input ``xyxy`` boxes → source pixels."""
        return boxes_xyxy_input / self.scale


def letterbox(image01: np.ndarray | torch.Tensor, size: int) -> tuple[torch.Tensor, Letterbox]:
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
    return out, Letterbox(scale=scale, size=size)


def prepare_frame(pixels: bytes, dtype: str, height: int, width: int, size: int) -> tuple[torch.Tensor, Letterbox]:
    """An ``images`` row's pixel columns → the ``(1, size, size)`` network input and its letterbox."""
    frame = decode_pixels(pixels, dtype, int(height), int(width))
    return letterbox(normalize_intensity(frame), size)
