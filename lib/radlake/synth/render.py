"""Rasterise one slice of a :class:`~radlake.synth.anatomy.Spine` and measure its ground-truth boxes.

Every pixel centre is mapped to patient coordinates with
:func:`radlake.dicom.geometry.pixel_grid_to_patient`; the soft tissue is evaluated from
the distance to the spine's centre line (smooth tissue on a half-resolution grid, the
canal and its surroundings at full resolution), and each solid of the model is painted
in order inside a small window around it. Partial volume across the slice thickness is
modelled by averaging three sub-planes (at -T/3, 0 and +T/3 along the normal) for the
spine's solids, so bodies fade and narrow in slices away from the midline.

Boxes are ``xyxy`` in pixels: x = column, y = row, origin at the top-left **corner** of
the image (torchvision's convention, so a box around pixel (0, 0) alone is
``[0, 0, 1, 1]``). A box is the extent of the pixels where the solid fills at least half
of the voxel, clipped to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radlake.dicom.geometry import pixel_grid_to_patient, slice_normal
from radlake.synth.anatomy import Item, ItemKind, Spine
from radlake.vocabulary import Endplate

__all__ = [
    "MIN_BODY_FRACTION",
    "MIN_IN_IMAGE_FRACTION",
    "MIN_NODE_FRACTION",
    "MIN_NODE_PIXELS",
    "NodeBox",
    "RenderedSlice",
    "SliceGeometry",
    "VertebraBox",
    "half_grid",
    "render_slice",
    "upsample_half",
]

#: A body is labelled in a slice when its cross-section is at least this fraction of its mid-sagittal area ...
MIN_BODY_FRACTION = 0.3
#: ... and at least this fraction of that cross-section lies inside the image.
MIN_IN_IMAGE_FRACTION = 0.4
#: A node is labelled when its cross-section is at least this fraction of its largest one ...
MIN_NODE_FRACTION = 0.35
#: ... and at least this many pixels.
MIN_NODE_PIXELS = 4


@dataclass(frozen=True)
class SliceGeometry:
    """Where one image lies in patient space (the DICOM Image Plane attributes).

    Attributes
    ----------
    position: tuple[float, float, float]
        ImagePositionPatient: centre of the top-left pixel, mm, LPS.
    orientation: tuple[float, ...]
        ImageOrientationPatient: row then column direction cosines, shape (6,).
    pixel_spacing: tuple[float, float]
        PixelSpacing [row spacing, column spacing], mm.
    rows, columns: int
        Matrix size in pixels.
    thickness: float
        SliceThickness, mm.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    thickness: float

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (3,), LPS."""
        return slice_normal(self.orientation)

    def points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Patient coordinates (len(rows), len(cols), 3) float64 of the pixel centres of a window."""
        return pixel_grid_to_patient(
            cols, rows, position=self.position, orientation=self.orientation, pixel_spacing=self.pixel_spacing
        )


@dataclass(frozen=True)
class VertebraBox:
    """A vertebral body's box in one image: ``xyxy`` pixels (see the module docstring)."""

    level: str
    xyxy: tuple[float, float, float, float]
    truncated: bool
    visible_fraction: float


@dataclass(frozen=True)
class NodeBox:
    """A Schmorl's node's box in one image, with the body and endplate it belongs to.

    ``signal`` and ``background`` are the mean noiseless signal (tissue units) over the
    node's pixels with and without the node painted, ``pixels`` their number: what
    :func:`radlake.synth.acquisition.rose_visible` needs to say whether a reader can see it.
    """

    parent_level: str
    endplate: Endplate
    xyxy: tuple[float, float, float, float]
    signal: float = 0.0
    background: float = 0.0
    pixels: int = 0


@dataclass(frozen=True)
class RenderedSlice:
    """The noiseless image (rows, columns) float32 in tissue units and its boxes."""

    image: np.ndarray
    vertebrae: tuple[VertebraBox, ...]
    nodes: tuple[NodeBox, ...]


def _soft(sd: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def _sample_texture(texture: np.ndarray, points: np.ndarray, cell_mm: float, offset: float) -> np.ndarray:
    coords = (points.reshape(-1, 3).T / cell_mm + offset).astype(np.float32)
    out = ndimage.map_coordinates(texture, coords, order=1, mode="grid-wrap")
    return out.reshape(points.shape[:-1]).astype(np.float32)


def half_grid(n: int) -> np.ndarray:
    """Pixel indices of the half-resolution grid along an axis of ``n`` pixels: 0, 2, 4, ... (n - 1 included)."""
    grid = np.arange(0, n, 2, dtype=np.float64)
    return grid if grid[-1] == n - 1 else np.append(grid, n - 1)


def upsample_half(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear interpolation from the :func:`half_grid` samples to every pixel (separable)."""
    out = a
    for axis, n in enumerate(shape):
        grid = half_grid(n)
        pos = np.arange(n, dtype=np.float64)
        hi = np.clip(np.searchsorted(grid, pos, side="left"), 1, len(grid) - 1)
        lo = hi - 1
        t_shape = [1] * out.ndim
        t_shape[axis] = n
        t = ((pos - grid[lo]) / (grid[hi] - grid[lo])).astype(np.float32).reshape(t_shape)
        out = np.take(out, lo, axis=axis) * (1.0 - t) + np.take(out, hi, axis=axis) * t
    return out.astype(np.float32, copy=False)


@dataclass
class _Fields:
    """Smooth per-pixel quantities of the soft-tissue model (all float32, same shape)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    s: np.ndarray  # arc length along the centre line, mm
    d: np.ndarray  # signed distance from the centre line, + posterior, mm
    w: np.ndarray  # lateral offset from the centre line, mm


def _fields(spine: Spine, pts: np.ndarray) -> _Fields:
    cl = spine.centerline
    x, y, z = (pts[..., i].astype(np.float32) for i in range(3))
    s, d = cl.project(y, z)
    w = x - np.interp(s, cl.s, cl.x).astype(np.float32)
    return _Fields(x, y, z, s, d, w)


def _far_tissue(spine: Spine, f: _Fields, fine: np.ndarray, coarse: np.ndarray, coarse2: np.ndarray) -> np.ndarray:
    """Air, subcutaneous fat, paraspinal muscle and the abdomen (smooth: evaluated on a coarse grid)."""
    t = spine.tissue
    cl = spine.centerline
    s, d, w = f.s, f.d, f.w
    depth = cl.profile("depth", s)
    fat_t = cl.profile("fat", s)
    post_wall = 0.5 * depth
    canal_back = post_wall + cl.profile("canal_ap", s)
    back_skin = canal_back + 7.0 + cl.profile("muscle", s) + fat_t
    # Torso: behind the anterior skin, in front of the back skin, inside an ellipse laterally.
    a, b, c = spine.front_y
    zz = (f.z - float(spine.anchor[2])) / 100.0
    front = a + b * zz + c * zz * zz
    back_y = cl.y_at_z(f.z) + back_skin
    y_mid = 0.5 * (front + back_y)
    a_y = np.maximum(0.5 * (back_y - front), 20.0)
    half_w = spine.torso_half_width
    lateral = (np.sqrt((f.x / half_w) ** 2 + ((f.y - y_mid) / a_y) ** 2) - 1.0) * half_w * 0.5
    sd_torso = np.maximum(np.maximum(d - back_skin, front - f.y), lateral)
    sd_deep = np.maximum(np.maximum(d - back_skin + fat_t, front + 0.6 * fat_t + 6.0 - f.y), lateral + fat_t)

    septa = 0.12 * np.exp(-((coarse2 / 0.06) ** 2))
    img = _soft(sd_torso, 1.2) * t.fat * (1.0 + 0.05 * fine) * (1.0 - septa)
    deep = _soft(sd_deep, 2.0)
    # Posterior compartment: paraspinal muscle with fatty streaks; the midline is ligament and fat.
    muscle = t.muscle * (1.0 + 0.1 * fine) + (t.fat - t.muscle) * np.clip(coarse2 - 1.1, 0.0, 0.5)
    midline = np.clip(1.0 - np.abs(w) / 5.0, 0.0, 1.0) * _soft(canal_back + 3.0 - d, 2.0)
    midline_mix = 0.45 * muscle + 0.3 * t.ligament + 0.25 * t.fat * (0.8 + 0.3 * np.clip(coarse, -1.0, 1.0))
    muscle = muscle + midline * (midline_mix - muscle)
    # Anterior compartment: bowel loops with thin walls where the coarse field crosses zero,
    # fluid on one side, chyme or gas on the other, mesenteric fat; retroperitoneal fat near the spine.
    wall = np.exp(-((coarse / 0.16) ** 2))
    fluid = np.clip((coarse - 0.15) * 3.0, 0.0, 1.0)
    gas = np.clip((-coarse2 - 1.2) * 3.0, 0.0, 1.0) * np.clip(-coarse * 3.0, 0.0, 1.0)
    mesentery = np.clip((coarse2 - 0.7) * 2.5, 0.0, 1.0)
    chyme = (0.8 * t.bowel_wall + 0.25 * t.bowel_fluid) * (1.0 + 0.25 * fine)
    bowel = chyme + fluid * (t.bowel_fluid * (1.0 + 0.05 * fine) - chyme)
    bowel = bowel + mesentery * (t.fat * (0.9 + 0.1 * fine) - bowel)
    bowel = bowel + gas * (t.gas - bowel)
    bowel = bowel + 0.8 * wall * (t.bowel_wall - bowel)
    retro = _soft(d + post_wall + 22.0, 6.0)
    anterior = t.fat * 0.9 * (1.0 + 0.05 * fine) + retro * (bowel - t.fat * 0.9 * (1.0 + 0.05 * fine))
    posterior_side = np.clip((d + post_wall) / 10.0 + 0.5, 0.0, 1.0)
    inner = anterior + posterior_side * (muscle - anterior)
    return img + deep * (inner - img)


def _near_tissue(spine: Spine, f: _Fields, img: np.ndarray, fine: np.ndarray, lumbar_s: float) -> np.ndarray:
    """Canal, thecal sac, cord, roots, ligaments, foramina, psoas and great vessels (1-D pixel subsets)."""
    t = spine.tissue
    cl = spine.centerline
    s, d, w = f.s, f.d, f.w
    depth = cl.profile("depth", s)
    ap = cl.profile("canal_ap", s)
    half = cl.profile("canal_half", s)
    post_wall = 0.5 * depth
    canal_back = post_wall + ap
    width = 1.35 * depth

    # Lateral to the bodies: psoas in the lumbar spine.
    lumbar = np.clip((lumbar_s - s) / 60.0, 0.0, 1.0)
    r_ps = 4.0 + 18.0 * lumbar
    ps = np.sqrt(((d + 0.1 * depth) / (1.3 * r_ps)) ** 2 + ((np.abs(w) - 0.5 * width - 0.6 * r_ps) / r_ps) ** 2)
    psoas = _soft((ps - 1.0) * r_ps, 2.0) * (lumbar > 0.02)
    img = img + psoas * (t.muscle * (1.0 + 0.1 * fine) - img)
    # Ligaments along the bodies, foraminal fat, the bony canal and the thecal sac.
    pll = (np.abs(d - post_wall - 0.6) < 0.9) & (np.abs(w) < half)
    all_ = (np.abs(d + post_wall + 0.6) < 0.9) & (np.abs(w) < 0.4 * width)
    img = np.where(pll, t.ligament, np.where(all_, 0.5 * (img + t.ligament), img))
    f_r = np.sqrt(((d - post_wall - 0.5 * ap) / (0.5 * ap + 1.0)) ** 2 + ((np.abs(w) - half - 3.0) / 7.0) ** 2)
    foramen = _soft((f_r - 1.0) * 5.0, 1.5)
    img = img + foramen * (t.fat * (0.8 + 0.08 * fine) - img)
    canal = _soft(np.maximum(post_wall + 0.3 - d, d - canal_back), 1.0) * _soft(np.abs(w) - half - 2.5, 1.5)
    img = img + canal * (t.fat * (0.9 + 0.05 * fine) - img)
    sac_c = post_wall + 0.55 * ap
    sac_r = np.sqrt(((d - sac_c) / (0.45 * ap)) ** 2 + (w / half) ** 2)
    sac = _soft((sac_r - 1.0) * 0.45 * ap, 1.0)
    img = img + sac * (t.csf - img)
    # Cord above the conus (tapering), roots of the cauda equina below.
    taper = np.sqrt(np.clip((s - spine.conus_s) / 18.0, 0.0, 1.0))
    cord_r = np.sqrt(
        ((d - sac_c + 0.8) / np.maximum(0.28 * ap * taper, 0.1)) ** 2 + (w / np.maximum(0.5 * half * taper, 0.1)) ** 2
    )
    cord = _soft((cord_r - 1.0) * 3.0, 1.0) * (taper > 0.05)
    img = img + cord * (t.cord - img)
    below = np.clip((spine.conus_s + 5.0 - s) / 10.0, 0.0, 1.0) * sac
    sub = np.flatnonzero(below > 0)
    if sub.size:
        part = img[sub]
        for frac_d, frac_w, phase in spine.roots:
            rd = sac_c[sub] + (frac_d - 0.4) * 0.8 * ap[sub]
            rw = frac_w * half[sub] + 1.5 * np.sin(s[sub] / 35.0 + phase)
            dist = np.sqrt((d[sub] - rd) ** 2 + (w[sub] - rw) ** 2)
            root = _soft(dist - 0.8, 0.8) * below[sub]
            part = part + root * (t.nerve - part)
        img[sub] = part
    # Great vessels in front of the spine: aorta (left) and IVC (right), iliac branches below.
    ax_off, radius, bif_s, signal = spine.aorta
    dc = -post_wall - 3.0 - radius
    above = s > bif_s
    spread = np.clip(bif_s - s, 0.0, None)
    for side, off, rad, flat in ((1.0, ax_off, radius, 1.0), (-1.0, -ax_off - 14.0, radius * 1.1, 0.7)):
        single = np.sqrt(((d - dc) / flat) ** 2 + (w - off) ** 2) - rad
        branch = (
            np.minimum(
                np.sqrt((d - dc + 0.1 * spread) ** 2 + (w - 0.4 * off - 0.45 * spread) ** 2),
                np.sqrt((d - dc + 0.1 * spread) ** 2 + (w - 0.4 * off + 0.45 * spread) ** 2),
            )
            - 0.65 * rad
        )
        vessel = _soft(np.where(above, single, branch), 1.0)
        img = img + vessel * (signal * (1.0 if side > 0 else 1.1) - img)
    return img


def _background(spine: Spine, geom: SliceGeometry, pts: np.ndarray, fine: np.ndarray, fine_h: np.ndarray) -> np.ndarray:
    """Soft tissue of one slice: smooth tissue on a half-resolution grid, the spine's surroundings at full."""
    rows, cols = geom.rows, geom.columns
    coarse_pts = geom.points(half_grid(rows), half_grid(cols))
    fh = _fields(spine, coarse_pts)
    coarse = _sample_texture(spine.texture, coarse_pts, 7.0, 17.3)
    coarse2 = _sample_texture(spine.texture, coarse_pts, 9.0, 41.7)
    img = upsample_half(_far_tissue(spine, fh, fine_h, coarse, coarse2), (rows, cols))
    # Full-resolution fields near the spine only: within reach of the canal, vessels and psoas.
    band = (fh.d > -70.0) & (fh.d < 55.0) & (np.abs(fh.w) < 80.0)
    if not band.any():
        return img
    s_full = upsample_half(fh.s, (rows, cols))
    d_full = upsample_half(fh.d, (rows, cols))
    w_full = upsample_half(fh.w, (rows, cols))
    near = np.flatnonzero((d_full > -62.0) & (d_full < 48.0) & (np.abs(w_full) < 72.0))
    if near.size == 0:
        return img
    f = _Fields(
        x=pts[..., 0].reshape(-1)[near].astype(np.float32),
        y=pts[..., 1].reshape(-1)[near].astype(np.float32),
        z=pts[..., 2].reshape(-1)[near].astype(np.float32),
        s=s_full.reshape(-1)[near],
        d=d_full.reshape(-1)[near],
        w=w_full.reshape(-1)[near],
    )
    flat = img.reshape(-1)
    flat[near] = _near_tissue(spine, f, flat[near], fine.reshape(-1)[near], _s_of(spine, "T12"))
    return img


def _s_of(spine: Spine, level: str) -> float:
    frame = spine.vertebrae[level].frame
    s, _ = spine.centerline.project(np.array([frame.origin[1]]), np.array([frame.origin[2]]))
    return float(s[0])


def _windows(spine: Spine, geom: SliceGeometry) -> list[tuple[int, int, int, int] | None]:
    """Per item: its pixel window (r0, r1, c0, c1), half-open and possibly beyond the image; None if off the slab."""
    table = spine.cache.get("bounds")
    if table is None:
        signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
        origins = np.array([it.frame.origin for it in spine.items])
        axes = np.array([it.frame.axes for it in spine.items])
        half = np.array([it.shape.half_extent for it in spine.items])
        corners = origins[:, None, :] + np.einsum("kcj,kji->kci", signs[None] * half[:, None, :], axes)
        table = spine.cache["bounds"] = (origins, axes, half, corners)
    origins, axes, half, corners = table
    normal = geom.normal
    position = np.asarray(geom.position, dtype=np.float64)
    dist = (origins - position) @ normal
    reach = np.sum(np.abs(axes @ normal) * half, axis=1)
    near = np.abs(dist) <= reach + 0.5 * geom.thickness + 1.0
    row_dir = np.asarray(geom.orientation[:3], dtype=np.float64)
    col_dir = np.asarray(geom.orientation[3:], dtype=np.float64)
    rel = corners - position
    xs = rel @ row_dir / geom.pixel_spacing[1]
    ys = rel @ col_dir / geom.pixel_spacing[0]
    c0 = np.floor(xs.min(axis=1) - 2).astype(int)
    c1 = np.ceil(xs.max(axis=1) + 3).astype(int)
    r0 = np.floor(ys.min(axis=1) - 2).astype(int)
    r1 = np.ceil(ys.max(axis=1) + 3).astype(int)
    outside = (r1 <= 0) | (c1 <= 0) | (r0 >= geom.rows) | (c0 >= geom.columns)
    out: list[tuple[int, int, int, int] | None] = []
    for k, item in enumerate(spine.items):
        if not near[k] or (outside[k] and not item.labelled):
            out.append(None)
        else:
            out.append((int(r0[k]), int(r1[k]), int(c0[k]), int(c1[k])))
    return out


def _distances(
    item: Item,
    pts: np.ndarray,
    offsets: np.ndarray,
    normal: np.ndarray,
    scale: tuple[float, float, float] | None = None,
) -> list[np.ndarray]:
    """Signed distance (mm) to the item per sub-plane; ``scale`` shrinks the shape about its origin."""
    out = []
    for off in offsets:
        local = item.frame.to_local((pts + off * normal).astype(np.float32))
        if scale is None:
            out.append(item.shape.sd(local))
        else:
            out.append(item.shape.sd(local / np.asarray(scale, dtype=np.float32)) * min(scale))
    return out


def _fill(sd_k: list[np.ndarray], width: float, parent_k: list[np.ndarray] | None, grow: float = 0.0) -> np.ndarray:
    """Mean soft occupancy over the sub-planes, clipped by the parent's occupancy; ``grow`` shrinks (mm)."""
    if parent_k is None:
        return np.mean([_soft(sd + grow, width) for sd in sd_k], axis=0)
    return np.mean([_soft(sd + grow, width) * p for sd, p in zip(sd_k, parent_k, strict=True)], axis=0)


def render_slice(spine: Spine, geom: SliceGeometry, *, with_boxes: bool = True) -> RenderedSlice:
    """Draw one noiseless slice and, optionally, measure the boxes of the labelled solids in it.

    Parameters
    ----------
    spine: Spine
        The study's anatomy (patient coordinates, LPS, mm).
    geom: SliceGeometry
        The image plane; ``rows`` x ``columns`` pixels.
    with_boxes: bool
        Measure vertebra and node boxes (sagittal series); ``False`` skips it.

    Returns
    -------
    RenderedSlice
        ``image`` (rows, columns) float32 in tissue units (CSF = 1), before bias, noise
        and quantisation; boxes in pixels, ``xyxy`` with the origin at the top-left
        corner of the image.
    """
    rows, cols = geom.rows, geom.columns
    normal = geom.normal
    pix_mm = float(min(geom.pixel_spacing))
    pts = geom.points(np.arange(rows), np.arange(cols))
    fine_h = _sample_texture(spine.texture, geom.points(half_grid(rows), half_grid(cols)), 2.2, 0.0)
    fine = upsample_half(fine_h, (rows, cols))
    img = _background(spine, geom, pts, fine, fine_h)

    third = geom.thickness / 3.0
    body_boxes: list[VertebraBox] = []
    node_boxes: list[NodeBox] = []
    for item, win in zip(spine.items, _windows(spine, geom), strict=True):
        if win is None:
            continue
        r0, r1, c0, c1 = win
        if not item.labelled:  # only labelled solids need the part outside the image
            r0, r1, c0, c1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
            if r1 <= r0 or c1 <= c0:
                continue
        if r0 >= 0 and c0 >= 0 and r1 <= rows and c1 <= cols:
            wpts = pts[r0:r1, c0:c1]
        else:
            wpts = geom.points(np.arange(r0, r1), np.arange(c0, c1))
        offsets = np.array([-third, 0.0, third]) if item.subsamples > 1 else np.array([0.0])
        width = max(item.paint.soft_mm, pix_mm)
        sd_k = _distances(item, wpts, offsets, normal)
        parent_k: list[np.ndarray] | None = None
        if item.clip_to is not None:
            parent = spine.items[item.clip_to]
            parent_k = [_soft(sd, pix_mm) for sd in _distances(parent, wpts, offsets, normal)]
        occ = _fill(sd_k, width, parent_k)
        before = _paint(
            img, item, (r0, r1, c0, c1), occ, sd_k, parent_k, width, fine, wpts, offsets, normal, with_boxes
        )
        if not (with_boxes and item.labelled):
            continue
        box = _measured_box(item, occ, (r0, r1, c0, c1), img, before, geom)
        if isinstance(box, VertebraBox):
            body_boxes.append(box)
        elif box is not None:
            node_boxes.append(box)

    visible = {b.level for b in body_boxes}
    nodes = tuple(n for n in node_boxes if n.parent_level in visible)
    return RenderedSlice(img, tuple(body_boxes), nodes)


def _paint(
    img: np.ndarray,
    item,
    window: tuple[int, int, int, int],
    occ: np.ndarray,
    sd_k: list[np.ndarray],
    parent_k: list[np.ndarray] | None,
    width: float,
    fine: np.ndarray,
    wpts: np.ndarray,
    offsets: np.ndarray,
    normal: np.ndarray,
    with_boxes: bool,
) -> np.ndarray | None:
    """Paint ``item`` into the in-image part of its window (``r0, r1, c0, c1``, pixels) of ``img``.

    Returns a node's pixels before it was painted (its contrast is what a reader sees) when
    boxes are measured, else None.
    """
    rows, cols = img.shape
    r0, r1, c0, c1 = window
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
    if not (ir1 > ir0 and ic1 > ic0):
        return None
    sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
    target = (slice(ir0, ir1), slice(ic0, ic1))
    paint = item.paint
    colour = paint.intensity * (1.0 + paint.texture * fine[target]) if paint.texture else paint.intensity
    o = occ[sl]
    if paint.rim_intensity is not None and paint.rim_mm > 0:
        inner = _fill(
            [sd[sl] for sd in sd_k],
            width,
            None if parent_k is None else [p[sl] for p in parent_k],
            paint.rim_mm,
        )
        fill = paint.rim_intensity * (o - inner) + colour * inner
    else:
        fill = colour * o
    a = paint.opacity
    before = img[target].copy() if item.kind is ItemKind.NODE and with_boxes else None
    img[target] = img[target] * (1.0 - a * o) + a * fill
    if paint.core_intensity is not None:
        core_sd = _distances(item, wpts[sl], offsets, normal, scale=paint.core_scale)
        core = _fill(core_sd, paint.core_soft_mm, None)
        core_colour: np.ndarray | float = paint.core_intensity * (1.0 + 0.06 * fine[target])
        if paint.cleft_intensity is not None:
            u = item.frame.to_local(wpts[sl].astype(np.float32))[..., 0]
            band = 0.8 * np.clip(1.0 - np.abs(u) / max(paint.cleft_mm, 0.1), 0.0, 1.0)
            core_colour = core_colour * (1.0 - band) + paint.cleft_intensity * band
        img[target] = img[target] * (1.0 - core) + core * core_colour
    return before


def _measured_box(
    item,
    occ: np.ndarray,
    window: tuple[int, int, int, int],
    img: np.ndarray,
    before: np.ndarray | None,
    geom: SliceGeometry,
) -> VertebraBox | NodeBox | None:
    """The box (pixels, ``xyxy``) of a labelled solid's in-image part, if enough of it is in the image."""
    rows, cols = img.shape
    r0, r1, c0, c1 = window
    ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
    mask = occ >= 0.5
    total = int(mask.sum())
    if total == 0:
        return None
    inside = np.zeros_like(mask)
    if ir1 > ir0 and ic1 > ic0:
        inside[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = mask[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0]
    n_in = int(inside.sum())
    if n_in == 0:
        return None
    rr = np.nonzero(inside.any(axis=1))[0]
    cc = np.nonzero(inside.any(axis=0))[0]
    xyxy = (float(c0 + cc[0]), float(r0 + rr[0]), float(c0 + cc[-1] + 1), float(r0 + rr[-1] + 1))
    px_area = geom.pixel_spacing[0] * geom.pixel_spacing[1]
    if item.kind is ItemKind.BODY:
        shape = item.shape
        ref = 0.93 * 0.5 * (shape.h_ant + shape.h_post) * shape.depth / px_area  # type: ignore[attr-defined]
        if total >= MIN_BODY_FRACTION * ref and n_in >= MIN_IN_IMAGE_FRACTION * total and n_in >= 12:
            return VertebraBox(str(item.level), xyxy, n_in < total, round(n_in / total, 4))
    elif item.kind is ItemKind.NODE:
        radii = item.shape.half_extent
        ref = 0.5 * math.pi * radii[0] * 0.5 * (radii[1] + radii[2]) / px_area
        if total >= max(MIN_NODE_PIXELS, MIN_NODE_FRACTION * ref) and n_in >= 0.5 * total:
            assert item.endplate is not None
            here = inside[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0]
            signal = float(img[ir0:ir1, ic0:ic1][here].mean()) if before is not None else 0.0
            background = float(before[here].mean()) if before is not None else 0.0
            return NodeBox(str(item.level), item.endplate, xyxy, signal, background, n_in)
    return None
