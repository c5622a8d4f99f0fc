"""DICOM image-plane geometry in pure numpy: plane normals, plane names, slice order, pixel to patient.

Conventions (the DICOM Image Plane module, PS3.3 C.7.6.2):

* Patient coordinates are LPS in millimetres: +x towards the patient's **L**\\ eft,
  +y towards **P**\\ osterior, +z towards the head (**S**\\ uperior).
* ``ImageOrientationPatient`` (``orientation``) is six direction cosines: the *row*
  direction (the direction of increasing column index, i.e. left to right along a row),
  then the *column* direction (increasing row index, top to bottom).
* ``ImagePositionPatient`` (``position``) is the patient position (mm) of the **centre**
  of the top-left pixel (row 0, column 0).
* ``PixelSpacing`` is ``[row spacing, column spacing]``: the distance (mm) between the
  centres of adjacent rows (vertically), then adjacent columns (horizontally).
* The slice normal is ``cross(row direction, column direction)``.

Only this module converts between pixels and patient coordinates; the synthetic
generator (:mod:`radlake.synth`) and ingestion share it.

Examples
--------
>>> classify_plane([0, 1, 0, 0, 0, -1])
<Plane.SAGITTAL: 'SAGITTAL'>
>>> order_slices([[0, 0, 5.0], [0, 0, 2.5]], [1, 0, 0, 0, 1, 0])
[1, 0]

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "Plane",
    "classify_plane",
    "order_slices",
    "patient_to_pixel",
    "pixel_grid_to_patient",
    "pixel_to_patient",
    "slice_normal",
    "slice_positions_mm",
]

#: Cosines shorter than this (before normalisation) count as a zero vector.
_MIN_NORM = 1e-6


class Plane(str, Enum):
    """Anatomical plane of an image, named after the patient axis closest to its normal."""

    SAGITTAL = "SAGITTAL"
    """Normal along x (left-right): the image shows anterior-posterior by superior-inferior."""

    CORONAL = "CORONAL"
    """Normal along y (anterior-posterior): the image shows left-right by superior-inferior."""

    AXIAL = "AXIAL"
    """Normal along z (superior-inferior): the image shows left-right by anterior-posterior."""

    OBLIQUE = "OBLIQUE"
    """The normal is further than the tolerance from every patient axis."""

    UNKNOWN = "UNKNOWN"
    """The orientation is missing or invalid."""


def _orientation_array(orientation: Any, name: str = "orientation") -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines as unit (3,) float64 vectors; ValueError naming ``name``."""
    try:
        arr = np.asarray(orientation, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"Argument '{name}' must be 6 numbers (ImageOrientationPatient), got {orientation!r}."
        ) from exc
    if arr.shape != (6,):
        raise ValueError(f"Argument '{name}' must have shape (6,), got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Argument '{name}' must be finite, got {arr.tolist()}.")
    row, col = arr[:3], arr[3:]
    row_norm, col_norm = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if row_norm < _MIN_NORM or col_norm < _MIN_NORM:
        raise ValueError(f"Argument '{name}' has a zero row or column direction: {arr.tolist()}.")
    return row / row_norm, col / col_norm


def _positions_array(positions: Any, name: str = "positions") -> np.ndarray:
    """``positions`` as an (N, 3) float64 array with N >= 1; ValueError naming ``name``."""
    try:
        arr = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Argument '{name}' must be an (N, 3) array of numbers, got {positions!r}.") from exc
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"Argument '{name}' must have shape (N, 3) with N >= 1, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Argument '{name}' must be finite.")
    return arr


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Get the unit normal of an image plane: row direction x column direction.

    Parameters
    ----------
    orientation: Sequence[float]
        ImageOrientationPatient: row direction cosines, then column direction cosines,
        patient (LPS) coordinates. Shape (6,). Each half is normalised first.

    Returns
    -------
    numpy.ndarray
        Unit normal, shape (3,), float64, LPS.

    Raises
    ------
    ValueError
        If ``orientation`` is not 6 finite numbers, either direction is a zero vector,
        or the two directions are parallel.

    Examples
    --------
    >>> slice_normal([0, 1, 0, 0, 0, -1]).tolist()
    [-1.0, 0.0, 0.0]

    """
    row, col = _orientation_array(orientation)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < _MIN_NORM:
        raise ValueError(f"Argument 'orientation' has parallel row and column directions: {list(orientation)}.")
    return normal / norm


def classify_plane(orientation: Sequence[float] | None, *, oblique_tolerance_deg: float = 30.0) -> Plane:
    """Name the anatomical plane of an image from its orientation.

    The largest absolute component of the slice normal names the plane (x: sagittal,
    y: coronal, z: axial); the plane is :attr:`Plane.OBLIQUE` when the normal is more
    than ``oblique_tolerance_deg`` away from that axis.

    Parameters
    ----------
    orientation: Sequence[float] | None
        ImageOrientationPatient, shape (6,), LPS direction cosines; ``None`` or an
        invalid value gives :attr:`Plane.UNKNOWN` (no error).
    oblique_tolerance_deg: float
        Largest angle, in degrees, between the normal and its nearest patient axis for
        the image still to count as that axis' plane. In [0, 90].

    Returns
    -------
    Plane
        The plane.

    Raises
    ------
    ValueError
        If ``oblique_tolerance_deg`` is not in [0, 90].

    Examples
    --------
    >>> classify_plane([1, 0, 0, 0, 1, 0]).value
    'AXIAL'
    >>> classify_plane([1, 0, 0, 0, 0.5, -0.866]).value  # normal 60 degrees from z
    'OBLIQUE'
    >>> classify_plane(None).value
    'UNKNOWN'

    """
    if not (0.0 <= float(oblique_tolerance_deg) <= 90.0):
        raise ValueError(f"Argument 'oblique_tolerance_deg' must be in [0, 90], got {oblique_tolerance_deg}.")
    if orientation is None:
        return Plane.UNKNOWN
    try:
        normal = slice_normal(orientation)
    except ValueError:
        return Plane.UNKNOWN
    axis = int(np.argmax(np.abs(normal)))
    angle = math.degrees(math.acos(min(1.0, float(abs(normal[axis])))))
    if angle > oblique_tolerance_deg + 1e-9:
        return Plane.OBLIQUE
    return (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)[axis]


def slice_positions_mm(positions: Sequence[Sequence[float]], orientation: Sequence[float]) -> np.ndarray:
    """Get each slice's distance along the shared slice normal.

    Parameters
    ----------
    positions: Sequence[Sequence[float]]
        ImagePositionPatient per slice: (x, y, z) of the top-left pixel centre, in mm,
        patient (LPS) coordinates. Shape (N, 3), N >= 1.
    orientation: Sequence[float]
        ImageOrientationPatient shared by all slices. Shape (6,).

    Returns
    -------
    numpy.ndarray
        ``dot(normal, position)`` per slice, mm, shape (N,), float64.

    Raises
    ------
    ValueError
        If ``positions`` is not (N, 3) with N >= 1, or ``orientation`` is invalid
        (see :func:`slice_normal`).

    Examples
    --------
    >>> slice_positions_mm([[0, 0, 5.0], [0, 0, 2.5]], [1, 0, 0, 0, 1, 0]).tolist()
    [5.0, 2.5]

    """
    pos = _positions_array(positions)
    return pos @ slice_normal(orientation)


def order_slices(positions: Sequence[Sequence[float]], orientation: Sequence[float]) -> list[int]:
    """Get the order of slices along the normal of their shared plane.

    InstanceNumber is never used: it is often unrelated to the spatial order.

    Parameters
    ----------
    positions: Sequence[Sequence[float]]
        ImagePositionPatient per slice: (x, y, z) of the top-left pixel
        centre, in mm, patient (LPS) coordinates. Shape (N, 3), N >= 1.
    orientation: Sequence[float]
        ImageOrientationPatient shared by all slices: row cosines, then
        column cosines. Shape (6,).

    Returns
    -------
    list[int]
        Zero-based sort index: element i is the input index of the slice
        placed i-th, by increasing distance (mm) along row x column cosines.
        Ties keep the input order (stable sort).

    Raises
    ------
    ValueError
        If ``positions`` is not (N, 3) with N >= 1, or ``orientation``
        is not (6,).

    Examples
    --------
    >>> order_slices([[0, 0, 5.0], [0, 0, 2.5]], [1, 0, 0, 0, 1, 0])
    [1, 0]

    """
    distances = slice_positions_mm(positions, orientation)
    return [int(i) for i in np.argsort(distances, kind="stable")]


def _spacing_array(pixel_spacing: Any) -> np.ndarray:
    try:
        spacing = np.asarray(pixel_spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Argument 'pixel_spacing' must be 2 numbers, got {pixel_spacing!r}.") from exc
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"Argument 'pixel_spacing' must be 2 positive numbers [row, column], got {pixel_spacing!r}.")
    return spacing


def _position_vector(position: Any) -> np.ndarray:
    try:
        origin = np.asarray(position, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Argument 'position' must be 3 numbers, got {position!r}.") from exc
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ValueError(f"Argument 'position' must have shape (3,) and be finite, got {origin.shape}.")
    return origin


def pixel_to_patient(
    xy: Any,
    *,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> np.ndarray:
    """Map pixel coordinates of one image to patient coordinates.

    ``P = position + x * pixel_spacing[1] * row_direction + y * pixel_spacing[0] * column_direction``
    (the DICOM Image Plane equation).

    Parameters
    ----------
    xy: array_like
        Pixel coordinates, shape (..., 2), float: x = column index, y = row index, in
        pixels, measured from the **centre** of the top-left pixel (DICOM's and
        highdicom's index convention), so that (0, 0) maps to ``position``. To map a
        box corner given with the origin at the top-left *corner* of the image
        (torchvision's box convention), subtract 0.5 from x and y first.
    position: Sequence[float]
        ImagePositionPatient, shape (3,), mm, LPS.
    orientation: Sequence[float]
        ImageOrientationPatient, shape (6,).
    pixel_spacing: Sequence[float]
        PixelSpacing: [row spacing, column spacing] in mm, both > 0.

    Returns
    -------
    numpy.ndarray
        Patient coordinates, shape (..., 3), float64, mm, LPS.

    Raises
    ------
    ValueError
        If ``xy`` does not end in a dimension of 2, or any geometry argument has the
        wrong shape or invalid values.

    Examples
    --------
    >>> pixel_to_patient([2, 1], position=[10, 0, 0], orientation=[1, 0, 0, 0, 1, 0],
    ...                  pixel_spacing=[0.5, 2.0]).tolist()
    [14.0, 0.5, 0.0]

    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim < 1 or pts.shape[-1] != 2:
        raise ValueError(f"Argument 'xy' must have shape (..., 2), got {pts.shape}.")
    row_dir, col_dir = _orientation_array(orientation)
    spacing = _spacing_array(pixel_spacing)
    origin = _position_vector(position)
    return origin + pts[..., 0:1] * (spacing[1] * row_dir) + pts[..., 1:2] * (spacing[0] * col_dir)


def pixel_grid_to_patient(
    columns: Any,
    rows: Any,
    *,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> np.ndarray:
    """Map a grid of pixel centres (every row index by every column index) to patient coordinates.

    Equivalent to :func:`pixel_to_patient` on the grid ``(x, y) = (columns[j], rows[i])``,
    without building the (H, W, 2) index array.

    Parameters
    ----------
    columns: array_like
        Column indices (x), shape (W,), pixels from the centre of the top-left pixel.
    rows: array_like
        Row indices (y), shape (H,), pixels from the centre of the top-left pixel.
    position, orientation, pixel_spacing
        As for :func:`pixel_to_patient`.

    Returns
    -------
    numpy.ndarray
        Shape (H, W, 3), float64, mm, LPS: element [i, j] is the centre of pixel (rows[i], columns[j]).

    Raises
    ------
    ValueError
        If ``columns`` or ``rows`` is not one-dimensional, or a geometry argument is invalid.

    Examples
    --------
    >>> pixel_grid_to_patient([0, 2], [1], position=[10, 0, 0], orientation=[1, 0, 0, 0, 1, 0],
    ...                       pixel_spacing=[0.5, 2.0]).tolist()
    [[[10.0, 0.5, 0.0], [14.0, 0.5, 0.0]]]

    """
    xs = np.asarray(columns, dtype=np.float64)
    ys = np.asarray(rows, dtype=np.float64)
    if xs.ndim != 1:
        raise ValueError(f"Argument 'columns' must have shape (W,), got {xs.shape}.")
    if ys.ndim != 1:
        raise ValueError(f"Argument 'rows' must have shape (H,), got {ys.shape}.")
    row_dir, col_dir = _orientation_array(orientation)
    spacing = _spacing_array(pixel_spacing)
    origin = _position_vector(position)
    along_row = xs[:, None] * (spacing[1] * row_dir)  # (W, 3)
    along_col = ys[:, None] * (spacing[0] * col_dir) + origin  # (H, 3)
    return along_col[:, None, :] + along_row[None, :, :]


def patient_to_pixel(
    points: Any,
    *,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
) -> np.ndarray:
    """Project patient coordinates onto one image plane, in pixels (the inverse of :func:`pixel_to_patient`).

    Parameters
    ----------
    points: array_like
        Patient coordinates, shape (..., 3), mm, LPS. The component along the slice
        normal is dropped (orthogonal projection onto the plane).
    position, orientation, pixel_spacing
        As for :func:`pixel_to_patient`.

    Returns
    -------
    numpy.ndarray
        Shape (..., 2), float64: x = column, y = row, in pixels from the centre of the
        top-left pixel.

    Raises
    ------
    ValueError
        If ``points`` does not end in a dimension of 3, or any geometry argument has the
        wrong shape or invalid values.

    Examples
    --------
    >>> patient_to_pixel([14.0, 0.5, 7.0], position=[10, 0, 0], orientation=[1, 0, 0, 0, 1, 0],
    ...                  pixel_spacing=[0.5, 2.0]).tolist()
    [2.0, 1.0]

    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim < 1 or pts.shape[-1] != 3:
        raise ValueError(f"Argument 'points' must have shape (..., 3), got {pts.shape}.")
    row_dir, col_dir = _orientation_array(orientation)
    spacing = _spacing_array(pixel_spacing)
    rel = pts - _position_vector(position)
    x = (rel @ row_dir) / spacing[1]
    y = (rel @ col_dir) / spacing[0]
    return np.stack([x, y], axis=-1)


def box_geometry(
    box_xyxy_px: Sequence[float],
    *,
    pixel_spacing: Sequence[float] | None,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One box in the frame's pixels → millimetres in the image plane and patient coordinates.

    Parameters
    ----------
    box_xyxy_px
        ``[x0, y0, x1, y1]``, pixels, x = column, y = row, origin at the top-left **corner**
        of the frame (torchvision's box convention).
    pixel_spacing
        ``[row spacing, column spacing]`` mm, or ``None``.
    position, orientation
        ImagePositionPatient of this frame (mm, LPS, the centre of its top-left pixel) and
        ImageOrientationPatient, or ``None``.

    Returns
    -------
    dict
        ``box_xyxy_mm`` (``[x0 * column spacing, y0 * row spacing, …]``, same origin);
        ``center_patient_mm`` (3 numbers, LPS) and ``corners_patient_mm`` (top-left,
        top-right, bottom-right, bottom-left, each 3 numbers). A value that the geometry
        given does not allow is ``None``; invalid geometry (wrong shapes, non-finite or
        non-positive spacing) counts as missing.

    Examples
    --------
    >>> g = box_geometry([0.5, 0.5, 2.5, 1.5], pixel_spacing=[0.5, 2.0], position=[10, 0, 0],
    ...                  orientation=[1, 0, 0, 0, 1, 0])
    >>> g["box_xyxy_mm"], g["center_patient_mm"]
    ([1.0, 0.25, 5.0, 0.75], [12.0, 0.25, 0.0])

    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy_px)
    out: dict[str, Any] = {"box_xyxy_mm": None, "center_patient_mm": None, "corners_patient_mm": None}
    try:
        spacing = _spacing_array(pixel_spacing)
    except ValueError:
        return out
    row_mm, col_mm = float(spacing[0]), float(spacing[1])
    out["box_xyxy_mm"] = [x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm]
    if position is None or orientation is None:
        return out
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [(x0 + x1) / 2, (y0 + y1) / 2]]) - 0.5
    try:
        points = pixel_to_patient(corners, position=position, orientation=orientation, pixel_spacing=spacing)
    except ValueError:
        return out
    out["corners_patient_mm"] = points[:4].tolist()
    out["center_patient_mm"] = points[4].tolist()
    return out


def in_plane_frame(
    *,
    position: Sequence[float] | None,
    orientation: Sequence[float] | None,
    pixel_spacing: Sequence[float] | None,
    origin: Sequence[float] | None,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Where one frame of a stack sits in the stack's image plane, for comparing boxes across frames.

    Frames of one stack are parallel, so a point of any of them has in-plane coordinates
    ``(u, v)``: mm along the row direction (x) and the column direction (y) from
    ``origin``. A pixel ``(x, y)`` of this frame is at ``(u0 + x * column spacing,
    v0 + y * row spacing)``.

    Parameters
    ----------
    position, orientation
        ImagePositionPatient of this frame (mm, LPS) and ImageOrientationPatient.
    pixel_spacing
        ``[row spacing, column spacing]`` mm.
    origin
        A point shared by the stack (e.g. its first frame's ImagePositionPatient), mm, LPS.

    Returns
    -------
    tuple
        ``(u0, v0)`` mm, ``(column spacing, row spacing)`` mm per pixel, and ``caudal``:
        the unit vector in the plane, in ``(u, v)``, pointing to the patient's feet
        (−z in LPS). Missing or invalid geometry gives ``(0, 0)``, 1 mm per pixel and
        ``(0, 1)`` (rows run head to feet, as sagittal and coronal images are displayed).
    """
    try:
        spacing = _spacing_array(pixel_spacing)
        steps = (float(spacing[1]), float(spacing[0]))
    except ValueError:
        steps = (1.0, 1.0)
    try:
        row_dir, col_dir = _orientation_array(orientation)
    except ValueError:
        return (0.0, 0.0), steps, (0.0, 1.0)
    feet = np.array([0.0, 0.0, -1.0])
    caudal = np.array([feet @ row_dir, feet @ col_dir])
    norm = float(np.linalg.norm(caudal))
    caudal_uv = (float(caudal[0] / norm), float(caudal[1] / norm)) if norm > 1e-6 else (0.0, 1.0)
    try:
        offset = _position_vector(position) - _position_vector(origin)
    except ValueError:
        return (0.0, 0.0), steps, caudal_uv
    return (float(offset @ row_dir), float(offset @ col_dir)), steps, caudal_uv
