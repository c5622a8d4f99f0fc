"""Vertebra crops: the region around one vertebral body, resampled to a fixed square.

The second stage (Schmorl's nodes) looks at one vertebra at a time. A crop is cut
from a source frame around a vertebra box ``xyxy`` (source pixels, x = column,
y = row, origin at the top-left corner of the frame):

1. the box is widened by ``margin_fraction`` of its height above and below and of its
   width left and right, so that both endplates and a little of each disc are
   inside even when a predicted box is a few pixels short;
2. that region is read from the frame (parts outside the frame are zero);
3. it is resized with its aspect ratio kept (antialiased bilinear) so that its longer
   side is ``size`` pixels, and padded with zeros at the bottom and right to
   ``size × size`` (the same letterbox as :mod:`radlake.models.preprocess`).

A point ``(x, y)`` in source pixels is at ``((x - x0) * scale, (y - y0) * scale)`` in
the crop, where ``(x0, y0)`` is the top-left corner of the region and
``scale = size / max(region width, region height)``; :class:`CropGeometry` maps boxes
both ways. Crop pixel spacing (mm) is the source spacing divided by ``scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from radlake.models.preprocess import letterbox
from radlake.vocabulary import Endplate

#: A node belongs to a crop when at least this share of its box lies inside the vertebra box with margin.
NODE_INSIDE_FRACTION = 0.5


@dataclass(frozen=True)
class CropGeometry:
    """Where a crop sits in its source frame.

    Attributes
    ----------
    region_xyxy_px
        The cropped region ``[x0, y0, x1, y1]`` in source pixels (may reach outside the frame).
    scale
        Crop pixels per source pixel (the same along rows and columns).
    size
        Side of the square crop, pixels.
    """

    region_xyxy_px: tuple[float, float, float, float]
    scale: float
    size: int

    def boxes_to_crop(self, boxes_xyxy_px: np.ndarray) -> np.ndarray:
        """Source-pixel ``(N, 4)`` xyxy boxes → crop pixels (not clipped)."""
        x0, y0 = self.region_xyxy_px[:2]
        boxes = np.asarray(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)
        return (boxes - np.array([x0, y0, x0, y0])) * self.scale

    def boxes_to_source(self, boxes_xyxy_crop: np.ndarray) -> np.ndarray:
        """Crop-pixel ``(N, 4)`` xyxy boxes → source pixels."""
        x0, y0 = self.region_xyxy_px[:2]
        boxes = np.asarray(boxes_xyxy_crop, dtype=np.float64).reshape(-1, 4)
        return boxes / self.scale + np.array([x0, y0, x0, y0])


def crop_region(box_xyxy_px, margin_fraction: float) -> tuple[float, float, float, float]:
    """The vertebra box widened by ``margin_fraction`` of its width (x) and height (y) on each side."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy_px)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"degenerate vertebra box {list(box_xyxy_px)}")
    dx, dy = (x1 - x0) * margin_fraction, (y1 - y0) * margin_fraction
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def cut_crop(frame: np.ndarray, region_xyxy_px, size: int) -> tuple[np.ndarray, CropGeometry]:
    """Cut ``region_xyxy_px`` from an ``(H, W)`` frame and letterbox it to ``(size, size)`` float32.

    The region is cut on whole pixels (its corners rounded outwards); the returned
    geometry is of that integer region, so boxes map exactly.
    """
    height, width = frame.shape
    x0, y0 = math.floor(region_xyxy_px[0]), math.floor(region_xyxy_px[1])
    x1, y1 = math.ceil(region_xyxy_px[2]), math.ceil(region_xyxy_px[3])
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    patch = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    image, box = letterbox(patch, size)
    geometry = CropGeometry(region_xyxy_px=(float(x0), float(y0), float(x1), float(y1)), scale=box.scale, size=size)
    return image[0].numpy(), geometry


def cut_vertebra(
    frame: np.ndarray, vertebra_box_xyxy_px, margin_fraction: float, size: int
) -> tuple[np.ndarray, CropGeometry]:
    """The crop of one vertebra: its box widened by ``margin_fraction`` (:func:`crop_region`), cut and letterboxed."""
    return cut_crop(frame, crop_region(vertebra_box_xyxy_px, margin_fraction), size)


@dataclass(frozen=True)
class StoredCrop:
    """One vertebra's crop as the tables store pixels, with its geometry and pixel spacing.

    Attributes
    ----------
    pixels, dtype
        The ``size x size`` crop's values (float32 modality values, resampled) as
        :func:`radlake.dicom.pixels.encode_pixels` stores them.
    geometry
        Where the crop sits in its source frame.
    pixel_spacing
        ``[row, column]`` mm of the crop's pixels (the source's divided by the scale), or None.
    """

    pixels: bytes
    dtype: str
    geometry: CropGeometry
    pixel_spacing: list[float] | None


def cut_stored_frame(frame_row: dict, vertebra_boxes_xyxy_px, margin_fraction: float, size: int) -> list[StoredCrop]:
    """The crops of these vertebra boxes (source pixels) from one stored frame, decoded once.

    ``frame_row`` holds the frame's pixel columns: ``pixels``, ``dtype``, ``height``,
    ``width``, the transform columns of an ``images`` row (read through
    :func:`radlake.dicom.pixels.row_values`; absent where the row holds its values) and
    ``pixel_spacing`` (row, column mm, or None). What the training crops and the scoring
    job both cut, on the executors. The crops hold their values (no transform).
    """
    from radlake.dicom.pixels import encode_pixels, row_values

    frame = row_values(frame_row)
    spacing = frame_row["pixel_spacing"]
    crops = []
    for box in vertebra_boxes_xyxy_px:
        crop, geometry = cut_vertebra(frame, box, margin_fraction, size)
        buf, dtype = encode_pixels(crop)
        crops.append(StoredCrop(buf, dtype, geometry, [s / geometry.scale for s in spacing] if spacing else None))
    return crops


def nodes_in_crop(node_boxes_xyxy_px: np.ndarray, region_xyxy_px) -> np.ndarray:
    """Indices of the node boxes (source pixels) with at least :data:`NODE_INSIDE_FRACTION` of their area in the region."""
    boxes = np.asarray(node_boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    rx0, ry0, rx1, ry1 = region_xyxy_px
    iw = np.clip(np.minimum(boxes[:, 2], rx1) - np.maximum(boxes[:, 0], rx0), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], ry1) - np.maximum(boxes[:, 1], ry0), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    return np.flatnonzero(iw * ih / area >= NODE_INSIDE_FRACTION)


def endplate_of(box_xyxy_px, vertebra_box_xyxy_px, row_direction_z: float | None = None) -> str:
    """``"superior"`` or ``"inferior"``: the endplate of the vertebra that a node box sits on.

    The node is compared with the vertebra box's centre along the rows. Which way is
    up comes from ``row_direction_z``, the patient z (LPS: + is superior) component of
    the direction in which the row index grows (``ImageOrientationPatient[5]``): negative
    (or unknown: the usual head-up display of a sagittal image) means row 0 is the most
    superior, so a node above the centre is on the superior endplate.
    """
    node_y = (float(box_xyxy_px[1]) + float(box_xyxy_px[3])) / 2
    body_y = (float(vertebra_box_xyxy_px[1]) + float(vertebra_box_xyxy_px[3])) / 2
    above = node_y < body_y
    head_up = row_direction_z is None or row_direction_z <= 0
    return (Endplate.SUPERIOR if above == head_up else Endplate.INFERIOR).value
