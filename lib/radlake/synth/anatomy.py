"""The per-study random spine: levels, curve, body shapes, discs, lesions and soft tissue.

:func:`sample_spine` draws one patient's lumbar spine (plus the lower thoracic spine,
the sacrum and the coccyx) in patient coordinates (LPS, mm) and returns a
:class:`Spine`: an ordered list of :class:`Item` (solid shapes with their T2-weighted
signal, painted in order) and the smooth profiles of the soft tissue around the spine
(canal, muscles, fat, abdomen) that :mod:`radlake.synth.render` rasterises.

How the spine is built
----------------------
The superior endplate of S1 is the anchor. Going up, each disc and each body is a wedge
(anterior and posterior heights differ), so the lordosis of the lumbar spine and the
kyphosis of the thoracic spine come out of the stacking; going down, the sacral segments
and the coccyx curve the other way. Body sizes follow adult averages per level, scaled
per patient. All angles are in the sagittal plane: a *tilt* is the angle of a body's
cranial axis from the patient's superior direction, positive towards anterior.

Lesions
-------
*Schmorl's nodes* are small ellipsoids of disc-like signal centred on an endplate and
clipped to the body: rounded indentations of the endplate into the marrow, with a dark
sclerotic rim in some and marrow oedema around a few. Look-alikes that are **not**
nodes: haemangiomas (bright round lesions inside a body), Modic changes (bands along the
endplates next to a degenerate disc) and the basivertebral vein (posterior, mid-height).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from radlake.synth.params import SynthConfig
from radlake.synth.shapes import BodyShape, Ellipsoid, Frame, RoundBox, Shape, frame_from_tilt
from radlake.vocabulary import Endplate

__all__ = [
    "LABELLED_LEVELS",
    "Centerline",
    "Endplate",
    "Fracture",
    "Item",
    "ItemKind",
    "Paint",
    "Spine",
    "Tissue",
    "Vertebra",
    "sample_spine",
]


class Fracture(str, Enum):
    """Shape of a vertebral compression fracture."""

    NONE = "none"
    """An intact body."""

    WEDGE = "wedge"
    """Anterior height lost: the body is a wedge pointing forwards."""

    BICONCAVE = "biconcave"
    """Both endplates depressed in their centre ("fish vertebra")."""


class ItemKind(str, Enum):
    """What a painted solid is (decides labels and the order of painting)."""

    SOFT = "soft"
    """Soft tissue or an organ drawn before the spine (bladder, vessels)."""

    POSTERIOR = "posterior"
    """Posterior elements: pedicles, articular pillars, laminae, spinous processes, nerve roots."""

    DISC = "disc"
    """An intervertebral disc (or a fused sacral remnant)."""

    BODY = "body"
    """A vertebral body."""

    LESION = "lesion"
    """Something inside a body that is not a Schmorl's node (haemangioma, Modic band, vein)."""

    NODE = "node"
    """A Schmorl's node."""


#: Levels that get ground-truth boxes (cranial to caudal). S2 and below are fused and unlabelled.
LABELLED_LEVELS = ("T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")

# Adult average sizes (mm): posterior height, anterior - posterior height, AP depth, width.
_BODY_SIZES: dict[str, tuple[float, float, float, float]] = {
    "T5": (18.0, -2.0, 24.0, 30.0),
    "T6": (18.5, -2.0, 25.0, 31.0),
    "T7": (19.0, -2.0, 26.0, 32.0),
    "T8": (19.5, -2.0, 27.0, 33.0),
    "T9": (20.5, -1.8, 28.0, 34.0),
    "T10": (21.5, -1.6, 29.0, 36.0),
    "T11": (22.5, -1.4, 30.0, 38.0),
    "T12": (24.0, -1.2, 31.0, 40.0),
    "L1": (25.5, -1.0, 32.0, 42.0),
    "L2": (26.5, -0.5, 33.0, 44.0),
    "L3": (27.0, 0.0, 34.0, 46.0),
    "L4": (27.0, 1.0, 34.5, 48.0),
    "L5": (26.0, 3.0, 34.0, 50.0),
    "S1": (27.0, -2.0, 35.0, 48.0),
}
# Disc below each level (mm): anterior height, posterior height.
_DISC_SIZES: dict[str, tuple[float, float]] = {
    "T5": (4.0, 4.8),
    "T6": (4.0, 4.8),
    "T7": (4.2, 5.0),
    "T8": (4.4, 5.0),
    "T9": (4.6, 5.2),
    "T10": (5.0, 5.4),
    "T11": (5.6, 5.6),
    "T12": (7.5, 6.0),
    "L1": (9.5, 6.0),
    "L2": (11.0, 6.5),
    "L3": (12.0, 7.0),
    "L4": (13.5, 7.5),
    "L5": (13.5, 6.0),
}
# Sacral and coccygeal segments below S1: posterior height, anterior - posterior, depth, width, fused gap.
_SACRAL_SIZES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("S2", 21.0, -3.0, 28.0, 40.0, 3.0),
    ("S3", 17.0, -3.0, 22.0, 32.0, 2.5),
    ("S4", 13.0, -2.5, 17.0, 24.0, 2.0),
    ("S5", 10.0, -2.0, 13.0, 18.0, 2.0),
    ("Co1", 8.0, -1.0, 10.0, 14.0, 2.0),
    ("Co2", 6.0, -1.0, 8.0, 10.0, 1.8),
    ("Co3", 5.0, -0.5, 6.0, 8.0, 1.5),
)


@dataclass(frozen=True)
class Tissue:
    """T2-weighted signal of each tissue of one study, relative units (CSF = 1).

    Marrow brightens and discs darken with age; the values are drawn per study.
    """

    csf: float
    fat: float
    marrow: float
    cortex: float
    nucleus: float
    annulus: float
    degenerate: float
    muscle: float
    ligament: float
    cord: float
    nerve: float
    vessel: float
    bowel_fluid: float
    bowel_wall: float
    gas: float
    urine: float


@dataclass(frozen=True)
class Paint:
    """How a solid is painted over what is below it (all intensities in :class:`Tissue` units).

    Attributes
    ----------
    intensity: float
        Signal inside the solid.
    rim_intensity, rim_mm: float | None, float
        A shell of ``rim_mm`` just inside the surface (cortical bone, sclerosis); none if ``None``.
    core_intensity, core_scale, core_soft_mm: float | None, tuple, float
        An inner region: the same shape shrunk by ``core_scale`` (u, v, w factors) with a
        soft edge of ``core_soft_mm`` (the nucleus of a disc).
    cleft_intensity, cleft_mm: float | None, float
        A dark band of ``cleft_mm`` at ``u = 0`` inside the core (intranuclear cleft).
    texture: float
        Amplitude of the multiplicative fine texture (marrow trabeculae), 0 for none.
    soft_mm: float
        Width of the edge blur in mm (0: one pixel).
    opacity: float
        0..1, how much of what lies below is replaced.
    """

    intensity: float
    rim_intensity: float | None = None
    rim_mm: float = 0.0
    core_intensity: float | None = None
    core_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    core_soft_mm: float = 1.0
    cleft_intensity: float | None = None
    cleft_mm: float = 0.0
    texture: float = 0.0
    soft_mm: float = 0.0
    opacity: float = 1.0


@dataclass(frozen=True)
class Item:
    """A painted solid.

    Attributes
    ----------
    kind: ItemKind
        What it is.
    frame, shape, paint
        Where, what shape and what signal.
    level: str | None
        The vertebral level a body, node or lesion belongs to (e.g. ``"L3"``).
    labelled: bool
        Whether boxes of it go into the ground truth (bodies T5-S1, nodes).
    endplate: Endplate | None
        For a node: the endplate it indents.
    clip_to: int | None
        Index (in :attr:`Spine.items`) of the body whose outline clips this item.
    subsamples: int
        Sub-planes across the slice thickness averaged for partial volume (1 or 3).
    """

    kind: ItemKind
    frame: Frame
    shape: Shape
    paint: Paint
    level: str | None = None
    labelled: bool = False
    endplate: Endplate | None = None
    clip_to: int | None = None
    subsamples: int = 3


@dataclass(frozen=True)
class Vertebra:
    """One vertebral body of the model (labelled or not) with what was drawn for it."""

    level: str
    frame: Frame
    shape: BodyShape
    labelled: bool
    fracture: Fracture = Fracture.NONE
    nodes: tuple[Endplate, ...] = ()
    lesions: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscInfo:
    """One intervertebral disc: the levels above and below, its frame and whether it is degenerate."""

    upper: str
    lower: str
    frame: Frame
    shape: BodyShape
    degenerate: bool


@dataclass
class Centerline:
    """The spine's centre line in the sagittal plane and the soft-tissue profiles along it.

    ``points`` are (y, z) in mm through the body and disc centres, ordered caudal to
    cranial; ``s`` is the arc length (mm) from the first point. Every profile is sampled
    at the points and interpolated linearly in ``s``.

    Distances to the line are looked up in a table built once (4 mm grid), so each pixel
    costs one bilinear look-up: :meth:`project` returns ``s`` and ``d`` (signed distance,
    positive towards posterior).
    """

    points: np.ndarray  # (M, 2) y, z
    x: np.ndarray  # (M,) lateral offset of the centre (scoliosis), mm
    depth: np.ndarray  # (M,) AP depth of the body / disc
    canal_ap: np.ndarray  # (M,) AP diameter of the bony canal
    canal_half: np.ndarray  # (M,) half width of the thecal sac
    muscle: np.ndarray  # (M,) posterior muscle thickness
    fat: np.ndarray  # (M,) posterior subcutaneous fat thickness
    s: np.ndarray = field(init=False)
    _lut: tuple[np.ndarray, np.ndarray, float, float, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(steps)])

    def profile(self, name: str, s: np.ndarray) -> np.ndarray:
        """One profile (``depth``, ``canal_ap``, ...) at arc lengths ``s`` (float32)."""
        return np.interp(s, self.s, getattr(self, name)).astype(np.float32)

    def _exact(self, yz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.points[:-1], self.points[1:]
        ab = b - a
        len2 = np.sum(ab * ab, axis=1)
        lo = np.zeros(len(a))
        hi = np.ones(len(a))
        lo[0], hi[-1] = -np.inf, np.inf
        s_out = np.empty(len(yz))
        d_out = np.empty(len(yz))
        for start in range(0, len(yz), 4096):
            p = yz[start : start + 4096, None, :]
            t = np.clip(np.sum((p - a) * ab, axis=2) / len2, lo, hi)
            foot = a + t[..., None] * ab
            dist2 = np.sum((p - foot) ** 2, axis=2)
            k = np.argmin(dist2, axis=1)
            rows = np.arange(len(k))
            tk = t[rows, k]
            s_out[start : start + 4096] = self.s[k] + tk * np.sqrt(len2[k])
            tang = ab[k] / np.sqrt(len2[k])[:, None]
            rel = p[:, 0, :] - foot[rows, k]
            d_out[start : start + 4096] = rel[:, 0] * tang[:, 1] - rel[:, 1] * tang[:, 0]
        return s_out, d_out

    def project(self, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arc length ``s`` and signed distance ``d`` (mm, + posterior) of points (y, z), float32."""
        if self._lut is None:
            step, margin = 4.0, 220.0
            y0, z0 = self.points[:, 0].min() - margin, self.points[:, 1].min() - margin
            ny = int((self.points[:, 0].max() + margin - y0) / step) + 2
            nz = int((self.points[:, 1].max() + margin - z0) / step) + 2
            gy, gz = np.meshgrid(y0 + step * np.arange(ny), z0 + step * np.arange(nz), indexing="ij")
            s, d = self._exact(np.stack([gy.ravel(), gz.ravel()], axis=1))
            self._lut = (s.reshape(ny, nz).astype(np.float32), d.reshape(ny, nz).astype(np.float32), y0, z0, step)
        s_lut, d_lut, y0, z0, step = self._lut
        fy_raw, fz_raw = (y - y0) / step, (z - z0) / step
        fy = np.clip(fy_raw, 0, s_lut.shape[0] - 1.001)
        fz = np.clip(fz_raw, 0, s_lut.shape[1] - 1.001)
        iy, iz = fy.astype(np.int32), fz.astype(np.int32)
        ty, tz = (fy - iy).astype(np.float32), (fz - iz).astype(np.float32)

        def bilinear(t: np.ndarray) -> np.ndarray:
            return (
                t[iy, iz] * (1 - ty) * (1 - tz)
                + t[iy + 1, iz] * ty * (1 - tz)
                + t[iy, iz + 1] * (1 - ty) * tz
                + t[iy + 1, iz + 1] * ty * tz
            )

        # Beyond the table, extend linearly: d grows with y (posterior), s with z (cranial).
        return bilinear(s_lut) + (fz_raw - fz) * step, bilinear(d_lut) + (fy_raw - fy) * step

    def y_at_z(self, z: np.ndarray) -> np.ndarray:
        """The centre line's y (mm) at height z (mm); z increases monotonically along the line."""
        return np.interp(z, self.points[:, 1], self.points[:, 0]).astype(np.float32)


@dataclass
class Spine:
    """One study's anatomy: what :func:`radlake.synth.render.render_slice` draws.

    Attributes
    ----------
    items: list[Item]
        Solids in painting order (soft tissue, posterior elements, discs, bodies, lesions, nodes).
    vertebrae: dict[str, Vertebra]
        Every segment by level name, cranial to caudal (``"T5"`` ... ``"Co3"``).
    discs: list[DiscInfo]
        Mobile discs, cranial to caudal.
    centerline: Centerline
        The centre line and the soft-tissue profiles.
    tissue: Tissue
        Signal of each tissue.
    texture: numpy.ndarray
        (64, 64, 64) float32 periodic smooth noise, unit variance, sampled at two scales.
    front_y: tuple[float, float, float]
        Anterior skin: y = a + b * (z - z0) / 100 + c * ((z - z0) / 100) ** 2 with z0 = anchor z.
    anchor: numpy.ndarray
        (3,) centre of the S1 superior endplate, mm, LPS.
    conus_s: float
        Arc length (mm) where the spinal cord ends.
    aorta: tuple[float, float, float, float]
        Aorta: lateral offset x (mm), radius (mm), arc length of the bifurcation, signal.
    torso_half_width: float
        Half the torso's left-right width, mm.
    roots: numpy.ndarray
        (K, 3) cauda equina roots: position across the sac (AP fraction, lateral fraction), phase.
    cache: dict
        Per-study values the renderer derives once (item bounds).
    """

    items: list[Item]
    vertebrae: dict[str, Vertebra]
    discs: list[DiscInfo]
    centerline: Centerline
    tissue: Tissue
    texture: np.ndarray
    front_y: tuple[float, float, float]
    anchor: np.ndarray
    conus_s: float
    aorta: tuple[float, float, float, float]
    torso_half_width: float
    roots: np.ndarray  # (K, 3): cauda equina roots (d offset, x offset, phase)
    cache: dict = field(default_factory=dict, repr=False, compare=False)


def _periodic_noise(rng: np.random.Generator, n: int = 64, sigma: float = 1.6) -> np.ndarray:
    """(n, n, n) float32 smooth periodic noise with zero mean and unit variance."""
    white = rng.standard_normal((n, n, n))
    freq = np.fft.fftfreq(n)
    fx, fy, fz = np.meshgrid(freq, freq, np.fft.rfftfreq(n), indexing="ij")
    spectrum = np.fft.rfftn(white) * np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx**2 + fy**2 + fz**2))
    field_ = np.fft.irfftn(spectrum, s=(n, n, n), axes=(0, 1, 2))
    field_ -= field_.mean()
    return (field_ / (field_.std() + 1e-9)).astype(np.float32)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_tissue(rng: np.random.Generator) -> Tissue:
    age = _u(rng, 0.0, 1.0)  # 0 young, 1 old
    return Tissue(
        csf=1.0,
        fat=_u(rng, 0.62, 0.88),
        marrow=_u(rng, 0.30, 0.42) + 0.2 * age,
        cortex=_u(rng, 0.04, 0.10),
        nucleus=_u(rng, 0.78, 0.95) - 0.15 * age,
        annulus=_u(rng, 0.16, 0.28),
        degenerate=_u(rng, 0.12, 0.30),
        muscle=_u(rng, 0.16, 0.27),
        ligament=_u(rng, 0.05, 0.12),
        cord=_u(rng, 0.38, 0.50),
        nerve=_u(rng, 0.25, 0.40),
        vessel=_u(rng, 0.03, 0.10),
        bowel_fluid=_u(rng, 0.65, 0.95),
        bowel_wall=_u(rng, 0.25, 0.40),
        gas=_u(rng, 0.0, 0.04),
        urine=_u(rng, 0.85, 1.0),
    )


def _bone(tissue: Tissue, factor: float = 1.0, *, texture: float = 0.10, rim: float = 0.7) -> Paint:
    return Paint(
        tissue.marrow * factor, rim_intensity=tissue.cortex + 0.25 * tissue.marrow, rim_mm=rim, texture=texture
    )


#: Lumbar and thoracic levels from S1 upwards, in the order the column is stacked.
_UPWARD = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5")
#: Sacral and coccygeal segments without posterior elements.
_NO_POSTERIOR = ("S4", "S5", "Co1", "Co2", "Co3")

#: One segment of the column: name, frame (before scoliosis), body shape, fracture.
_Segment = tuple[str, Frame, BodyShape, Fracture]
#: One disc: upper and lower segment names, frame, shape, degenerate.
_Disc = tuple[str, str, Frame, BodyShape, bool]


@dataclass(frozen=True)
class _Column:
    """The bony column of one study, before anything is painted (all lengths in mm, LPS).

    Attributes
    ----------
    scale: float
        The patient's size factor (1: adult averages).
    anchor: numpy.ndarray
        (3,) centre of the S1 superior endplate.
    body_dims: dict[str, tuple[float, float, float, float, Fracture]]
        Per level of :data:`_UPWARD` and S1: anterior and posterior height, depth, width and fracture.
    segments: list[_Segment]
        Every segment in the order it was stacked: S1, down to Co3, then L5 up to T5.
    by_z: list[_Segment]
        The same segments, cranial to caudal.
    vert_frames: dict[str, Frame]
        Each segment's frame with the scoliosis applied.
    disc_frames: list[_Disc]
        Every disc (mobile and fused) with the scoliosis applied.
    centerline: Centerline
        The centre line and the soft-tissue profiles along it.
    cl_s_of: dict[str, float]
        Each segment's arc length on the centre line.
    """

    scale: float
    anchor: np.ndarray
    body_dims: dict[str, tuple[float, float, float, float, Fracture]]
    segments: list[_Segment]
    by_z: list[_Segment]
    vert_frames: dict[str, Frame]
    disc_frames: list[_Disc]
    centerline: Centerline
    cl_s_of: dict[str, float]


def sample_spine(rng: np.random.Generator, config: SynthConfig) -> Spine:
    """Draw one patient's spine and soft tissue.

    The draws happen in a fixed order (the tissue, the column, then the painted items of
    :class:`_SpineBuilder`), so the spine is a pure function of the generator's state.

    Parameters
    ----------
    rng: numpy.random.Generator
        The study's generator; the spine is a pure function of its state.
    config: SynthConfig
        Lesion frequencies and sizes (``node_*``, ``*_fraction``).

    Returns
    -------
    Spine
        The anatomy in patient coordinates (LPS, mm).
    """
    tissue = _sample_tissue(rng)
    column = _sample_column(rng, config)
    return _SpineBuilder(rng, config, tissue, column).build()


def _sample_column(rng: np.random.Generator, config: SynthConfig) -> _Column:
    """Sizes, curves and frames of every segment and disc, and the centre line through them."""
    scale = _u(rng, 0.88, 1.12)
    lordosis_gain = _u(rng, 0.55, 1.45)
    kyphosis_gain = _u(rng, 0.6, 1.4)
    anchor = np.array([_u(rng, -6.0, 6.0), _u(rng, 10.0, 70.0), _u(rng, -180.0, 40.0)])
    # Disc heights and lordosis first: the sacral slope follows the lordosis.
    disc_dims = _disc_dimensions(rng, config, scale, lordosis_gain, kyphosis_gain)
    body_dims = _body_dimensions(rng, config, scale, kyphosis_gain)
    sacral_slope = _sacral_slope(rng, disc_dims, body_dims)
    body_shapes = {level: _body_shape(rng, *body_dims[level]) for level in ["S1", *_UPWARD]}
    segments, discs = _sacrum(rng, anchor, sacral_slope, body_dims["S1"], body_shapes["S1"], scale)
    _stack_upwards(rng, anchor, sacral_slope, disc_dims, body_dims, body_shapes, segments, discs)
    by_z, vert_frames, disc_frames = _with_scoliosis(rng, segments, discs)
    centerline = _centerline(rng, segments, vert_frames, disc_frames, anchor)
    cl_s_of: dict[str, float] = {}
    for name, frame in vert_frames.items():
        s_val, _ = centerline.project(np.array([frame.origin[1]]), np.array([frame.origin[2]]))
        cl_s_of[name] = float(s_val[0])
    return _Column(scale, anchor, body_dims, segments, by_z, vert_frames, disc_frames, centerline, cl_s_of)


def _disc_dimensions(
    rng: np.random.Generator, config: SynthConfig, scale: float, lordosis_gain: float, kyphosis_gain: float
) -> dict[str, tuple[float, float, bool]]:
    """Per level of :data:`_UPWARD`, the disc below it: anterior and posterior height (mm), degenerate."""
    disc_dims: dict[str, tuple[float, float, bool]] = {}
    for level in _UPWARD:
        da, dp = _DISC_SIZES[level]
        mean = 0.5 * (da + dp)
        gain = lordosis_gain if level.startswith("L") else kyphosis_gain
        half = 0.5 * (da - dp) * gain
        degenerate = bool(rng.random() < config.degenerate_disc_fraction * (1.6 if level in ("L4", "L5") else 0.8))
        if degenerate:
            mean *= _u(rng, 0.45, 0.8)
            half *= _u(rng, 0.5, 1.0)
        j = _u(rng, 0.92, 1.08) * scale
        disc_dims[level] = (max(1.2, (mean + half) * j), max(1.0, (mean - half) * j), degenerate)
    return disc_dims


def _body_dimensions(
    rng: np.random.Generator, config: SynthConfig, scale: float, kyphosis_gain: float
) -> dict[str, tuple[float, float, float, float, Fracture]]:
    """Per level (and S1): anterior and posterior height, depth, width (mm) and fracture of its body."""
    body_dims: dict[str, tuple[float, float, float, float, Fracture]] = {}
    for level in [*_UPWARD, "S1"]:
        hp, dh, depth, width = _BODY_SIZES[level]
        j = _u(rng, 0.95, 1.05) * scale
        hp, depth, width = hp * j, depth * j * _u(rng, 0.96, 1.04), width * j * _u(rng, 0.96, 1.04)
        ha = hp + dh * (kyphosis_gain if level.startswith("T") else 1.0)
        fracture = Fracture.NONE
        risk = 2.0 if level in ("T11", "T12", "L1", "L2") else 0.7
        if level != "S1" and rng.random() < config.fracture_fraction * risk:
            fracture = Fracture.WEDGE if rng.random() < 0.65 else Fracture.BICONCAVE
            if fracture is Fracture.WEDGE:
                ha = hp * _u(rng, 0.5, 0.82)
        body_dims[level] = (ha, hp, depth, width, fracture)
    return body_dims


def _sacral_slope(rng: np.random.Generator, disc_dims: dict, body_dims: dict) -> float:
    """The sacral slope (degrees) that goes with the lumbar lordosis of these wedges."""
    lordosis = 0.0
    for level in ("L5", "L4", "L3", "L2", "L1"):
        da, dp, _ = disc_dims[level]
        ha, hp, depth, _, _ = body_dims[level]
        lordosis += math.degrees(math.atan((da - dp) / depth) + math.atan((ha - hp) / depth))
    return float(np.clip(0.72 * lordosis + rng.normal(0.0, 5.0), 22.0, 58.0))


def _body_shape(
    rng: np.random.Generator, ha: float, hp: float, depth: float, width: float, fracture: Fracture
) -> BodyShape:
    """A body of these heights, depth and width (mm), with endplate concavities (deep if biconcave)."""
    c_sup, c_inf = _u(rng, 0.6, 1.6), _u(rng, 0.6, 1.6)
    if fracture is Fracture.BICONCAVE:
        c_sup, c_inf = _u(rng, 3.0, 6.0), _u(rng, 2.0, 5.0)
    return BodyShape(
        depth=depth,
        width=width,
        h_ant=ha,
        h_post=hp,
        concavity_sup=c_sup,
        concavity_inf=c_inf,
        corner=_u(rng, 2.0, 3.5),
        front_round=_u(rng, 0.65, 0.9),
    )


def _e_u(tilt: float) -> np.ndarray:
    """The cranial axis of a segment tilted by ``tilt`` (radians, positive towards anterior), in LPS."""
    return np.array([0.0, -math.sin(tilt), math.cos(tilt)])


def _sacrum(
    rng: np.random.Generator,
    anchor: np.ndarray,
    sacral_slope: float,
    s1_dims: tuple,
    s1_shape: BodyShape,
    scale: float,
) -> tuple[list[_Segment], list[_Disc]]:
    """S1 below the anchor, then the sacral and coccygeal segments downwards, with their fused discs."""
    segments: list[_Segment] = []
    discs: list[_Disc] = []
    ha, hp, depth, width, _ = s1_dims
    tilt_sup = math.radians(sacral_slope)
    gamma = math.atan((ha - hp) / (2.0 * depth))
    tilt_mid = tilt_sup + gamma
    hc = 0.5 * (ha + hp)
    center = anchor - _e_u(tilt_mid) * hc / 2
    segments.append(("S1", frame_from_tilt(center, tilt_mid), s1_shape, Fracture.NONE))
    tilt_inf = tilt_mid + gamma
    p_inf = center - _e_u(tilt_mid) * hc / 2
    # Sacrum and coccyx, downwards: fused remnants of discs between segments.
    lower = "S1"
    prev_depth, prev_width = depth, width
    for name, s_hp, s_dh, s_depth, s_width, gap in _SACRAL_SIZES:
        j = scale * _u(rng, 0.92, 1.08)
        s_hp, s_depth, s_width, gap = s_hp * j, s_depth * j, s_width * j, gap * j
        s_ha = s_hp + s_dh * j
        bend = math.radians(_u(rng, 3.0, 9.0))
        d_tilt = tilt_inf - 0.5 * bend
        d_center = p_inf - _e_u(d_tilt) * gap / 2
        disc_shape = BodyShape(
            depth=0.5 * (prev_depth + s_depth),
            width=0.5 * (prev_width + s_width),
            h_ant=gap,
            h_post=gap,
            concavity_sup=-0.6,
            concavity_inf=-0.6,
            corner=1.0,
        )
        discs.append((lower, name, frame_from_tilt(d_center, d_tilt), disc_shape, False))
        p_sup = p_inf - _e_u(d_tilt) * gap
        tilt_sup_seg = tilt_inf - bend
        gamma = math.atan((s_ha - s_hp) / (2.0 * s_depth))
        tilt_mid = tilt_sup_seg + gamma
        hc = 0.5 * (s_ha + s_hp)
        center = p_sup - _e_u(tilt_mid) * hc / 2
        shape = BodyShape(
            depth=s_depth, width=s_width, h_ant=s_ha, h_post=s_hp, concavity_sup=0.3, concavity_inf=0.3, corner=1.8
        )
        segments.append((name, frame_from_tilt(center, tilt_mid), shape, Fracture.NONE))
        tilt_inf = tilt_mid + gamma
        p_inf = center - _e_u(tilt_mid) * hc / 2
        lower, prev_depth, prev_width = name, s_depth, s_width
    return segments, discs


def _stack_upwards(
    rng: np.random.Generator,
    anchor: np.ndarray,
    sacral_slope: float,
    disc_dims: dict,
    body_dims: dict,
    body_shapes: dict[str, BodyShape],
    segments: list[_Segment],
    discs: list[_Disc],
) -> None:
    """From S1 upwards, disc, body, disc, body ...: appended to ``segments`` and ``discs``."""
    p_sup = anchor.copy()
    tilt_sup = math.radians(sacral_slope)
    below = "S1"
    for level in _UPWARD:
        da, dp, degenerate = disc_dims[level]
        ha, hp, depth, width, fracture = body_dims[level]
        low_depth, low_width = body_dims[below][2], body_dims[below][3]
        d_depth = 0.5 * (depth + low_depth)
        beta = math.atan((da - dp) / d_depth)
        d_tilt = tilt_sup - 0.5 * beta
        dc = 0.5 * (da + dp)
        d_center = p_sup + _e_u(d_tilt) * dc / 2
        bulge = _u(rng, 1.5, 4.0) if degenerate else _u(rng, 0.3, 1.2)
        disc_shape = BodyShape(
            depth=d_depth + bulge,
            width=0.5 * (width + low_width) + bulge,
            h_ant=da,
            h_post=dp,
            # Domes that fill the concave endplates above and below (and overlap them a little).
            concavity_sup=-(body_shapes[level].concavity_inf + 0.6),
            concavity_inf=-(body_shapes[below].concavity_sup + 0.6),
            corner=_u(rng, 1.5, 3.0),
            front_round=0.8,
        )
        d_frame = frame_from_tilt(d_center, d_tilt).shifted((0.0, -0.5 * bulge * _u(rng, 0.2, 1.0), 0.0))
        discs.append((level, below, d_frame, disc_shape, degenerate))
        p_inf = p_sup + _e_u(d_tilt) * dc
        tilt_inf = tilt_sup - beta
        shape = body_shapes[level]
        gamma = math.atan((ha - hp) / (2.0 * depth))
        tilt_mid = tilt_inf - gamma
        hc = 0.5 * (ha + hp)
        center = p_inf + _e_u(tilt_mid) * hc / 2
        segments.append((level, frame_from_tilt(center, tilt_mid), shape, fracture))
        p_sup = center + _e_u(tilt_mid) * hc / 2
        tilt_sup = tilt_mid - gamma
        below = level


def _with_scoliosis(
    rng: np.random.Generator, segments: list[_Segment], discs: list[_Disc]
) -> tuple[list[_Segment], dict[str, Frame], list[_Disc]]:
    """Segments cranial to caudal, and every frame moved by a smooth lateral curve along the column's arc."""
    by_z = sorted(segments, key=lambda seg: -seg[1].origin[2])
    centres = np.array([seg[1].origin for seg in by_z])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centres[:, 1:], axis=0), axis=1))])
    amplitude = _u(rng, 0.0, 9.0) if rng.random() < 0.35 else _u(rng, 0.0, 2.5)
    wavelength, phase = _u(rng, 250.0, 500.0), _u(rng, 0.0, 2 * math.pi)

    def moved(frame: Frame, a: float) -> Frame:
        angle = 2 * math.pi * a / wavelength + phase
        x = amplitude * math.sin(angle)
        roll = math.atan(amplitude * 2 * math.pi / wavelength * math.cos(angle))
        rolled = frame.rotated(-roll, about=1)
        return Frame(frame.origin + np.array([x, 0.0, 0.0]), rolled.axes)

    arc_of = {seg[0]: float(a) for seg, a in zip(by_z, arc, strict=True)}
    vert_frames = {name: moved(frame, arc_of[name]) for name, frame, _, _ in segments}
    disc_frames = [
        (upper, lower, moved(frame, 0.5 * (arc_of[upper] + arc_of[lower])), shape, degenerate)
        for upper, lower, frame, shape, degenerate in discs
    ]
    return by_z, vert_frames, disc_frames


def _centerline(
    rng: np.random.Generator,
    segments: list[_Segment],
    vert_frames: dict[str, Frame],
    disc_frames: list[_Disc],
    anchor: np.ndarray,
) -> Centerline:
    """Soft-tissue profiles along the centre line through the body and disc centres (caudal to cranial)."""
    line = [(vert_frames[name].origin, shape.depth) for name, _, shape, _ in segments]
    line += [(frame.origin, shape.depth) for _, _, frame, shape, _ in disc_frames]
    line.sort(key=lambda t: t[0][2])
    pts = np.array([o[1:] for o, _ in line])
    xs = np.array([o[0] for o, _ in line])
    depth_p = np.array([d for _, d in line])
    # Extend the line beyond both ends so distances stay smooth past the last segments.
    top_dir = pts[-1] - pts[-2]
    top_dir /= np.linalg.norm(top_dir)
    bottom_dir = pts[0] - pts[1]
    bottom_dir /= np.linalg.norm(bottom_dir)
    pts = np.vstack([pts[0] + bottom_dir * 40.0, pts, pts[-1] + top_dir * 80.0])
    xs = np.concatenate([[xs[0]], xs, [xs[-1]]])
    depth_p = np.concatenate([[depth_p[0] * 0.7], depth_p, [depth_p[-1]]])
    z_rel = pts[:, 1] - anchor[2]
    canal_ap = np.clip(np.interp(z_rel, [-120, -40, 0, 60, 200, 320], [3, 7, 13, 16, 15, 14]), 3, None)
    canal_ap = canal_ap * _u(rng, 0.85, 1.15)
    canal_half = np.interp(z_rel, [-120, -40, 0, 80, 200, 320], [3, 6, 10, 11, 9, 8]) * _u(rng, 0.9, 1.1)
    muscle_t = np.interp(z_rel, [-150, -60, 0, 100, 220, 330], [18, 30, 55, 70, 60, 48]) * _u(rng, 0.8, 1.25)
    fat_base = _u(rng, 3.0, 30.0)
    fat_t = fat_base * np.interp(z_rel, [-150, -40, 60, 200, 330], [1.3, 1.2, 1.0, 0.8, 0.7])
    return Centerline(pts, xs, depth_p, canal_ap, canal_half, muscle_t, fat_t)


@dataclass(frozen=True)
class _Body:
    """A body whose inside is being drawn: lesions and nodes are clipped to its outline.

    Attributes
    ----------
    name: str
        Its level (e.g. ``"L3"``).
    frame, shape
        Where it is and its shape (mm, LPS).
    index: int
        Its index in :attr:`Spine.items` (the ``clip_to`` of what lies inside).
    marrow: float
        Its marrow signal (:class:`Tissue` units).
    """

    name: str
    frame: Frame
    shape: BodyShape
    index: int
    marrow: float

    def lesion(self, frame: Frame, shape: Shape, paint: Paint) -> Item:
        """Something inside this body that is not a Schmorl's node (vein, Modic band, oedema, haemangioma)."""
        return Item(ItemKind.LESION, frame, shape, paint, level=self.name, clip_to=self.index)

    def node(self, frame: Frame, shape: Shape, paint: Paint, endplate: Endplate) -> Item:
        """A labelled Schmorl's node indenting ``endplate`` of this body."""
        return Item(
            ItemKind.NODE, frame, shape, paint, level=self.name, labelled=True, endplate=endplate, clip_to=self.index
        )


@dataclass
class _SpineBuilder:
    """The painted items of one study, drawn step by step over its :class:`_Column`.

    Each step draws from ``rng`` and appends to ``items`` (painting order); :meth:`build`
    runs the steps in a fixed order, so the spine stays a pure function of the generator's state.
    A builder builds one spine: :meth:`build` is called once.

    Attributes
    ----------
    rng: numpy.random.Generator
        The study's generator (already past the tissue and the column).
    config: SynthConfig
        Lesion frequencies and sizes.
    tissue: Tissue
        Signal of each tissue.
    column: _Column
        The geometry the items are drawn on.
    items: list[Item]
        What has been drawn so far, in painting order.
    """

    rng: np.random.Generator
    config: SynthConfig
    tissue: Tissue
    column: _Column
    items: list[Item] = field(default_factory=list)

    def build(self) -> Spine:
        """Soft tissue, posterior elements, discs, bodies and what lies inside them, then the rest."""
        column = self.column
        self._bladder()
        self._posterior_elements()
        self._sacral_alae()
        disc_infos = self._disc_items()
        bodies = self._body_items()
        # Every segment, cranial to caudal; only the labelled bodies get lesions and nodes.
        vertebrae: dict[str, Vertebra] = {}
        for name, _, shape, fracture in column.by_z:
            frame = column.vert_frames[name]
            if name not in LABELLED_LEVELS:
                vertebrae[name] = Vertebra(name, frame, shape, False, fracture)
                continue
            lesions, nodes = self._body_lesions(bodies[name], disc_infos)
            vertebrae[name] = Vertebra(name, frame, shape, True, fracture, tuple(nodes), tuple(lesions))
        disc_infos.sort(key=lambda d: -d.frame.origin[2])
        return self._finish(vertebrae, disc_infos)

    def _uniform(self, lo: float, hi: float) -> float:
        """One uniform draw in [lo, hi)."""
        return _u(self.rng, lo, hi)

    def _bladder(self) -> None:
        """A full bladder in the pelvis (bright urine), in 70 % of patients."""
        u = self._uniform
        if self.rng.random() < 0.7:
            s1 = self.column.vert_frames["S1"]
            bladder_center = s1.origin + np.array([u(-10, 10), -u(85, 120), -u(70, 110)])
            r = u(25, 55)
            self.items.append(
                Item(
                    ItemKind.SOFT,
                    Frame(bladder_center, np.eye(3)),
                    Ellipsoid((r * u(0.7, 1.0), r, r * u(1.0, 1.3))),
                    Paint(self.tissue.urine, rim_intensity=self.tissue.muscle, rim_mm=2.5, soft_mm=1.0),
                    subsamples=1,
                )
            )

    def _posterior_elements(self) -> None:
        """Pedicles, nerve roots, facets, laminae and spinous processes of every segment down to S3."""
        tissue, centerline = self.tissue, self.column.centerline
        for name, _, shape, _ in self.column.segments:
            if name in _NO_POSTERIOR:
                continue
            f = self.column.vert_frames[name]
            s_here = self.column.cl_s_of[name]
            ap = float(centerline.profile("canal_ap", np.array([s_here]))[0])
            half = float(centerline.profile("canal_half", np.array([s_here]))[0])
            h = 0.5 * (shape.h_ant + shape.h_post)
            back = -0.5 * shape.depth
            sacral = name.startswith("S")
            for side in (-1.0, 1.0):
                if not sacral:  # pedicle and nerve root
                    self.items.append(
                        _posterior(
                            f.shifted((0.22 * h, back - 5.5, side * (half + 4.0))),
                            Ellipsoid((0.28 * h, 6.5, 4.0)),
                            _bone(tissue, 0.95, texture=0.06),
                        )
                    )
                    self.items.append(
                        _posterior(
                            f.shifted((-0.1 * h, back - 5.0, side * (half + 5.0))),
                            Ellipsoid((2.5, 2.5, 3.5)),
                            Paint(tissue.nerve, soft_mm=0.5),
                        )
                    )
                self.items.append(  # facet
                    _posterior(
                        f.shifted((-0.05 * h, back - ap - 3.0, side * (half + 5.5))),
                        Ellipsoid((0.5 * h, 6.0, 6.5)),
                        _bone(tissue, 0.85, texture=0.06),
                    )
                )
            self.items.append(  # lamina
                _posterior(
                    f.shifted((-0.1 * h, back - ap - 4.0, 0.0)),
                    RoundBox((0.35 * h, 2.8, half + 4.0), 1.5),
                    _bone(tissue, 0.9, texture=0.05, rim=0.6),
                )
            )
            self.items.append(self._spinous_process(name, f, h, back - ap))

    def _spinous_process(self, name: str, f: Frame, h: float, canal_back: float) -> Item:
        """The spinous process behind the canal (``canal_back``: the canal's posterior wall, mm along v)."""
        u, scale = self._uniform, self.column.scale
        lumbar, sacral = name.startswith("L"), name.startswith("S")
        length = (u(24.0, 32.0) if lumbar else u(9.0, 14.0) if sacral else u(18.0, 26.0)) * scale
        sp_half = (u(7.0, 10.0) if lumbar else u(4.0, 6.0)) * scale
        tilt = math.radians(u(5.0, 22.0) if lumbar or sacral else u(35.0, 55.0))
        sp_frame = f.shifted((-0.25 * h, canal_back - 1.0, 0.0)).rotated(-tilt, about=2)
        return _posterior(
            sp_frame.shifted((0.0, -0.5 * length, 0.0)),
            RoundBox((sp_half, 0.5 * length, u(2.2, 3.2)), min(sp_half, 0.5 * length) * 0.8),
            Paint(self.tissue.marrow * 0.75, rim_intensity=self.tissue.cortex, rim_mm=0.6, texture=0.12, soft_mm=0.8),
        )

    def _sacral_alae(self) -> None:
        """The sacral alae beside S1."""
        s1f, s1s = self.column.vert_frames["S1"], self.column.body_dims["S1"]
        for side in (-1.0, 1.0):
            self.items.append(
                _posterior(
                    s1f.shifted((-2.0, -0.15 * s1s[2], side * (0.5 * s1s[3] + 14.0))),
                    Ellipsoid((14.0, 0.45 * s1s[2], 20.0)),
                    _bone(self.tissue, 0.9),
                )
            )

    def _disc_items(self) -> list[DiscInfo]:
        """Every disc as an item (fused, degenerate or healthy with a nucleus); the unfused ones described."""
        u, tissue = self._uniform, self.tissue
        disc_infos: list[DiscInfo] = []
        for upper, lower, frame, shape, degenerate in self.column.disc_frames:
            fused = upper.startswith(("S", "Co"))
            if fused:
                paint = Paint(tissue.annulus * 1.2, soft_mm=0.8)
            elif degenerate:
                paint = Paint(
                    tissue.annulus * u(0.7, 1.1),
                    core_intensity=tissue.degenerate,
                    core_scale=(u(0.5, 0.8), u(0.55, 0.75), u(0.55, 0.75)),
                    core_soft_mm=2.0,
                )
            else:
                cleft = self.rng.random() < 0.6
                paint = Paint(
                    tissue.annulus,
                    core_intensity=tissue.nucleus * u(0.9, 1.05),
                    core_scale=(u(0.6, 0.85), u(0.55, 0.75), u(0.55, 0.75)),
                    core_soft_mm=u(1.2, 2.5),
                    cleft_intensity=tissue.annulus * 1.5 if cleft else None,
                    cleft_mm=u(0.4, 0.8),
                )
            self.items.append(Item(ItemKind.DISC, frame, shape, paint, level=f"{upper}-{lower}"))
            if not fused:
                disc_infos.append(DiscInfo(upper, lower, frame, shape, degenerate))
        return disc_infos

    def _body_items(self) -> dict[str, _Body]:
        """Every body as an item, cranial to caudal."""
        u = self._uniform
        bodies: dict[str, _Body] = {}
        for name, _, shape, fracture in self.column.by_z:
            oedema = fracture is not Fracture.NONE and self.rng.random() < 0.5
            marrow = u(0.93, 1.07) * (u(1.25, 1.5) if oedema else 1.0)
            frame = self.column.vert_frames[name]
            bodies[name] = _Body(name, frame, shape, len(self.items), self.tissue.marrow * marrow)
            self.items.append(
                Item(
                    ItemKind.BODY,
                    frame,
                    shape,
                    _bone(self.tissue, marrow, texture=u(0.06, 0.16), rim=u(0.5, 0.9)),
                    level=name,
                    labelled=name in LABELLED_LEVELS,
                )
            )
        return bodies

    def _body_lesions(self, body: _Body, disc_infos: list[DiscInfo]) -> tuple[list[str], list[Endplate]]:
        """What lies inside a labelled body: vein, Modic bands, haemangioma, Schmorl's nodes."""
        u, rng, shape = self._uniform, self.rng, body.shape
        lesions: list[str] = []
        # Basivertebral vein at mid-height of the posterior wall.
        if rng.random() < 0.7:
            self.items.append(
                body.lesion(
                    body.frame.shifted((u(-2, 2), -0.5 * shape.depth + u(1.5, 3.0), 0.0)),
                    Ellipsoid((u(0.9, 1.6), u(3.0, 5.0), u(2.0, 3.5))),
                    Paint(self.tissue.fat if rng.random() < 0.6 else self.tissue.cortex, soft_mm=0.6),
                )
            )
            lesions.append("basivertebral")
        lesions += self._modic_bands(body, disc_infos)
        # Haemangioma (bright, round, away from the endplates).
        if rng.random() < self.config.hemangioma_fraction:
            r = u(3.0, 8.0)
            h = 0.5 * min(shape.h_ant, shape.h_post)
            self.items.append(
                body.lesion(
                    body.frame.shifted(
                        (u(-1, 1) * max(0.0, h - r - 3.0), u(-0.25, 0.25) * shape.depth, u(-0.25, 0.25) * shape.width)
                    ),
                    Ellipsoid((r * u(0.8, 1.2), r, r * u(0.8, 1.2))),
                    Paint(body.marrow * u(1.5, 2.1), soft_mm=0.8, texture=0.15),
                )
            )
            lesions.append("hemangioma")
        nodes = self._schmorl_nodes(body) if rng.random() < self.config.node_fraction else []
        return lesions, nodes

    def _modic_bands(self, body: _Body, disc_infos: list[DiscInfo]) -> list[str]:
        """Modic change bands along the endplates next to a degenerate disc; their lesion names."""
        u, shape = self._uniform, body.shape
        found = []
        for endplate in (Endplate.SUPERIOR, Endplate.INFERIOR):
            neighbour_degenerate = any(
                d.degenerate and ((d.lower == body.name) if endplate is Endplate.SUPERIOR else (d.upper == body.name))
                for d in disc_infos
            )
            if neighbour_degenerate and self.rng.random() < self.config.modic_fraction:
                sign = 1.0 if endplate is Endplate.SUPERIOR else -1.0
                u_plate = sign * float(shape.top(np.array(0.0), np.array(0.0), superior=sign > 0))
                kind = self.rng.random()
                factor = u(1.3, 1.7) if kind < 0.75 else u(0.45, 0.7)
                band = u(3.0, 8.0)
                self.items.append(
                    body.lesion(
                        body.frame.shifted((u_plate - sign * 0.3 * band, u(-3, 3), u(-4, 4))),
                        Ellipsoid((band, 0.5 * shape.depth * u(0.6, 1.0), 0.5 * shape.width * u(0.5, 0.9))),
                        Paint(body.marrow * factor, soft_mm=u(1.5, 3.0), opacity=u(0.7, 1.0)),
                    )
                )
                found.append(f"modic-{endplate.value}")
        return found

    def _schmorl_nodes(self, body: _Body) -> list[Endplate]:
        """One or two Schmorl's nodes in this body (labelled items), some with oedema or a sclerotic rim."""
        u, rng, shape, marrow = self._uniform, self.rng, body.shape, body.marrow
        lo_node, hi_node = self.config.node_size_mm
        nodes: list[Endplate] = []
        count = 1 + int(rng.random() < 0.25)
        for _ in range(count):
            # S1's inferior endplate is fused to S2: nodes only indent its superior one.
            endplate = Endplate.SUPERIOR if rng.random() < 0.5 or body.name == "S1" else Endplate.INFERIOR
            size = u(lo_node, hi_node)
            v_n = u(-0.28, 0.22) * shape.depth
            w_n = u(-0.3, 0.3) * shape.width
            sign = 1.0 if endplate is Endplate.SUPERIOR else -1.0
            u_n = sign * float(shape.top(np.array(v_n), np.array(w_n), superior=sign > 0))
            depth_n = 0.5 * size * u(0.8, 1.5)
            contrast = self.config.node_contrast * u(0.6, 1.4)
            node_frame = body.frame.shifted((u_n, v_n, w_n)).rotated(math.radians(u(-12, 12)), about=2)
            if rng.random() < 0.25:  # marrow oedema around an active node
                self.items.append(
                    body.lesion(
                        node_frame,
                        Ellipsoid((depth_n * 2.0, size, size)),
                        Paint(marrow * (1.0 + 0.35 * contrast), soft_mm=2.5, opacity=0.8),
                    )
                )
            sclerotic = size >= 4.5 and rng.random() < 0.6
            self.items.append(
                body.node(
                    node_frame,
                    Ellipsoid((depth_n, 0.5 * size, 0.5 * size * u(0.8, 1.2))),
                    Paint(
                        marrow * (1.0 + contrast),
                        rim_intensity=self.tissue.cortex + 0.3 * marrow if sclerotic else None,
                        rim_mm=u(0.6, 1.1) if sclerotic else 0.0,
                        soft_mm=0.4,
                    ),
                    endplate,
                )
            )
            nodes.append(endplate)
        return nodes

    def _finish(self, vertebrae: dict[str, Vertebra], disc_infos: list[DiscInfo]) -> Spine:
        """The :class:`Spine`, with the aorta, the abdominal wall, the nerve roots and the conus drawn last."""
        u, rng, column = self._uniform, self.rng, self.column
        aorta = (u(9.0, 20.0), u(7.0, 11.0), column.cl_s_of["L4"] + u(-5.0, 15.0), self.tissue.vessel)
        if rng.random() < 0.2:  # slow flow: bright vessels
            aorta = (aorta[0], aorta[1], aorta[2], u(0.4, 0.7))
        front_depth = u(110.0, 240.0)
        front = (
            float(column.anchor[1] - 0.5 * column.body_dims["L5"][2] - front_depth),
            float(u(-25.0, 10.0)),
            float(u(-12.0, -2.0)),
        )
        roots = np.stack(
            [
                rng.uniform(0.05, 0.85, 10),  # fraction of the sac towards posterior
                rng.uniform(-0.75, 0.75, 10),  # fraction of the half width
                rng.uniform(0, 2 * math.pi, 10),
            ],
            axis=1,
        )
        conus_s = column.cl_s_of["L1"] + u(-25.0, 10.0)
        return Spine(
            items=self.items,
            vertebrae=vertebrae,
            discs=disc_infos,
            centerline=column.centerline,
            tissue=self.tissue,
            texture=_periodic_noise(rng),
            front_y=front,
            anchor=column.anchor,
            conus_s=conus_s,
            aorta=aorta,
            torso_half_width=u(140.0, 190.0),
            roots=roots,
        )


def _posterior(frame: Frame, shape: Shape, paint: Paint) -> Item:
    """A posterior element (painted from one plane: no partial volume across the slice)."""
    return Item(ItemKind.POSTERIOR, frame, shape, paint, subsamples=1)
