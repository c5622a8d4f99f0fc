"""Signed-distance shapes in local frames: the primitives the synthetic anatomy is built from.

A :class:`Frame` places a shape in patient space (LPS, mm). Local coordinates are
``(u, v, w)``: ``u`` along the frame's first axis (for a vertebra: cranial), ``v`` along
the second (anterior) and ``w`` along the third (the patient's left). Every shape
returns a signed distance in mm (negative inside, positive outside); the distances are
exact or first-order approximations, good enough to rasterise soft edges of a pixel or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BodyShape", "Ellipsoid", "Frame", "RoundBox", "Shape", "frame_from_tilt"]

_EPS = 1e-6


@dataclass(frozen=True)
class Frame:
    """A local coordinate frame in patient space.

    Attributes
    ----------
    origin: numpy.ndarray
        Shape (3,), float64: the frame's origin, mm, LPS.
    axes: numpy.ndarray
        Shape (3, 3), float64, orthonormal rows: the u, v and w axes as LPS unit vectors.
    """

    origin: np.ndarray
    axes: np.ndarray

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """Patient points (..., 3) in mm to local (u, v, w) (..., 3) in mm, float32."""
        rel = (points - self.origin.astype(points.dtype)).reshape(-1, 3)
        return (rel @ self.axes.T.astype(points.dtype)).reshape(points.shape).astype(np.float32, copy=False)

    def to_patient(self, local: np.ndarray) -> np.ndarray:
        """Local (u, v, w) (..., 3) in mm to patient points (..., 3) in mm, float64."""
        return self.origin + np.asarray(local, dtype=np.float64) @ self.axes

    def shifted(self, local_offset: tuple[float, float, float] | np.ndarray) -> Frame:
        """The same axes with the origin moved by an offset given in local coordinates (mm)."""
        return Frame(self.to_patient(np.asarray(local_offset, dtype=np.float64)), self.axes)

    def rotated(self, angle_rad: float, *, about: int = 2) -> Frame:
        """The frame turned by ``angle_rad`` about one of its own axes (0: u, 1: v, 2: w).

        About w, a positive angle turns u towards v (a vertebra's top tilts anteriorly).
        """
        i, j = [k for k in range(3) if k != about]
        c, s = np.cos(angle_rad), np.sin(angle_rad)
        axes = self.axes.copy()
        axes[i] = c * self.axes[i] + s * self.axes[j]
        axes[j] = -s * self.axes[i] + c * self.axes[j]
        return Frame(self.origin, axes)


def frame_from_tilt(origin: np.ndarray, tilt_rad: float, roll_rad: float = 0.0) -> Frame:
    """A vertebral frame: u cranial tilted anteriorly by ``tilt_rad``, v anterior, w left.

    Parameters
    ----------
    origin: numpy.ndarray
        (3,) mm, LPS.
    tilt_rad: float
        Rotation in the sagittal plane, radians; positive tips the top anteriorly (towards -y).
    roll_rad: float
        Rotation about the anterior axis (scoliosis), radians; positive tips the top to the left (+x).
    """
    c, s = np.cos(tilt_rad), np.sin(tilt_rad)
    u = np.array([0.0, -s, c])
    v = np.array([0.0, -c, -s])
    w = np.array([1.0, 0.0, 0.0])
    if roll_rad:
        cr, sr = np.cos(roll_rad), np.sin(roll_rad)
        u, w = cr * u + sr * w, -sr * u + cr * w
    return Frame(np.asarray(origin, dtype=np.float64), np.stack([u, v, w]))


class Shape:
    """Base class: a solid in local coordinates with a signed distance and a local bounding box."""

    def sd(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of local points ``p`` (N, 3) float32; returns (N,) float32."""
        raise NotImplementedError

    @property
    def half_extent(self) -> np.ndarray:
        """Half sizes (3,) in mm of an axis-aligned local box around the origin holding the shape."""
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """An ellipsoid centred on the origin with semi-axes ``radii`` (u, v, w) in mm."""

    radii: tuple[float, float, float]

    def sd(self, p: np.ndarray) -> np.ndarray:
        r = np.asarray(self.radii, dtype=np.float32)
        k0 = np.sqrt(np.sum((p / r) ** 2, axis=-1))
        k1 = np.sqrt(np.sum((p / (r * r)) ** 2, axis=-1))
        return (k0 * (k0 - 1.0) / np.maximum(k1, _EPS)).astype(np.float32)

    @property
    def half_extent(self) -> np.ndarray:
        return np.asarray(self.radii, dtype=np.float64)


@dataclass(frozen=True)
class RoundBox(Shape):
    """A box centred on the origin with half sizes ``half`` (u, v, w) and edges rounded by ``radius`` (mm)."""

    half: tuple[float, float, float]
    radius: float = 1.0

    def sd(self, p: np.ndarray) -> np.ndarray:
        h = np.asarray(self.half, dtype=np.float32)
        q = np.abs(p) - h + self.radius
        outside = np.sqrt(np.sum(np.maximum(q, 0.0) ** 2, axis=-1))
        inside = np.minimum(np.max(q, axis=-1), 0.0)
        return (outside + inside - self.radius).astype(np.float32)

    @property
    def half_extent(self) -> np.ndarray:
        return np.asarray(self.half, dtype=np.float64)


@dataclass(frozen=True)
class BodyShape(Shape):
    """A vertebral body (or, with negative concavities, an intervertebral disc).

    The axial cross-section is D-shaped: a flat posterior wall at ``v = -depth/2`` and a
    rounded anterior and lateral outline (an ellipse reaching ``v = +depth/2`` and
    ``|w| = width/2``). The height is ``h_post`` at the posterior wall and ``h_ant`` at the
    anterior wall (a wedge when they differ), minus ``concavity_sup``/``concavity_inf`` at
    the centre of each endplate (concave endplates; negative values make domes, as the
    disc that fills a concavity). Edges are rounded by ``corner`` (mm).

    Attributes
    ----------
    depth, width, h_ant, h_post: float
        Anterior-posterior depth, left-right width, anterior and posterior heights (mm).
    concavity_sup, concavity_inf: float
        Depth (mm) of the superior and inferior endplate's central depression.
    corner: float
        Rounding radius of the edges (mm).
    front_round: float
        Anterior semi-axis of the outline as a multiple of ``depth``; larger is boxier.
    """

    depth: float
    width: float
    h_ant: float
    h_post: float
    concavity_sup: float = 1.0
    concavity_inf: float = 1.0
    corner: float = 2.5
    front_round: float = 0.75

    def top(self, v: np.ndarray, w: np.ndarray, *, superior: bool = True) -> np.ndarray:
        """Local u (mm) of the superior (or, negated, inferior) surface above (v, w)."""
        hc = 0.5 * (self.h_ant + self.h_post)
        slope = (self.h_ant - self.h_post) / (2.0 * self.depth)
        r2 = np.clip((v / (0.5 * self.depth)) ** 2 + (w / (0.5 * self.width)) ** 2, 0.0, 1.0)
        conc = self.concavity_sup if superior else self.concavity_inf
        return 0.5 * hc + slope * v - conc * (1.0 - r2)

    def sd(self, p: np.ndarray) -> np.ndarray:
        u, v, w = p[..., 0], p[..., 1], p[..., 2]
        a_v = self.front_round * self.depth
        a_w = 0.5 * self.width
        v_e = 0.5 * self.depth - a_v
        dv, dw = (v - v_e) / a_v, w / a_w
        k = np.sqrt(dv * dv + dw * dw)
        grad = np.sqrt((dv / a_v) ** 2 + (dw / a_w) ** 2)
        sd_ell = (k - 1.0) * k / np.maximum(grad, _EPS)
        sd_cross = np.maximum(sd_ell, -0.5 * self.depth - v)
        sd_h = np.maximum(u - self.top(v, w, superior=True), -u - self.top(v, w, superior=False))
        r = self.corner
        q1, q2 = sd_h + r, sd_cross + r
        outside = np.sqrt(np.maximum(q1, 0.0) ** 2 + np.maximum(q2, 0.0) ** 2)
        return (outside + np.minimum(np.maximum(q1, q2), 0.0) - r).astype(np.float32)

    @property
    def half_extent(self) -> np.ndarray:
        h = 0.5 * max(self.h_ant, self.h_post) + max(0.0, -self.concavity_sup, -self.concavity_inf)
        return np.array([h + 0.5, 0.5 * self.depth + 0.5, 0.5 * self.width + 0.5])
