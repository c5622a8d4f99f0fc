"""Scanner and protocol of one study: the series, their planes, timing and storage choices.

:func:`plan_study` turns a :class:`~radlake.synth.anatomy.Spine` into three
:class:`SeriesPlan` (sagittal T2, axial T2 at a lumbar disc, coronal T2 through the
bodies) on a randomly drawn :class:`Scanner`. The sagittal field of view and table
position vary, so the number of visible levels varies and edge bodies are cut off.

Geometry conventions are those of :mod:`radlake.dicom.geometry`. Every value written to a
DICOM decimal string is rounded here first and the rounded value is the one rendered,
so the files describe exactly the pixels they hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import numpy as np

from radlake.dicom.geometry import slice_normal
from radlake.synth.anatomy import Spine
from radlake.synth.codecs import codec_available
from radlake.synth.params import Codec, SynthConfig
from radlake.synth.render import SliceGeometry

__all__ = ["InstanceOrder", "Scanner", "SeriesKind", "SeriesPlan", "plan_study"]


class SeriesKind(str, Enum):
    """The three series of a study."""

    SAGITTAL_T2 = "sagittal_t2"
    """Sagittal T2-weighted turbo spin echo: the labelled series."""

    AXIAL_T2 = "axial_t2"
    """A block of axial T2 slices angled along one lumbar disc."""

    CORONAL_T2 = "coronal_t2"
    """A few coronal T2 slices through the vertebral bodies."""


class InstanceOrder(str, Enum):
    """How InstanceNumber relates to the spatial order of the slices."""

    ASCENDING = "ascending"
    """1..N along the slice normal."""

    DESCENDING = "descending"
    """N..1 along the slice normal (common for right-to-left sagittal acquisitions)."""

    SHUFFLED = "shuffled"
    """A random permutation (interleaved acquisitions, re-exports)."""


@dataclass(frozen=True)
class Scanner:
    """One MR scanner and the storage habits of its vendor."""

    manufacturer: str
    model: str
    field_strength: float
    software: str
    station: str
    serial: str
    bits_stored: int
    rescale: bool
    descriptions: tuple[str, str, str]


_VENDORS = (
    ("SIEMENS", ("Avanto", "Aera", "Skyra", "Vida", "Espree"), "syngo MR ", 12, False,
     ("t2_tse_sag", "t2_tse_tra", "t2_tse_cor")),
    ("GE MEDICAL SYSTEMS", ("SIGNA HDxt", "DISCOVERY MR750", "SIGNA Explorer", "SIGNA Premier"), "DV", 16, False,
     ("SAG T2 FSE", "AX T2 FSE", "COR T2 FSE")),
    ("Philips Medical Systems", ("Ingenia", "Achieva", "Intera"), "R5.", 12, True,
     ("T2W_TSE_SAG", "T2W_TSE_TRA", "T2W_TSE_COR")),
    ("Canon Medical Systems", ("Vantage Titan", "Vantage Orian", "Vantage Elan"), "V", 16, False,
     ("Sag T2 FSE", "Ax T2 FSE", "Cor T2 FSE")),
)  # fmt: skip


@dataclass(frozen=True)
class SeriesPlan:
    """Everything needed to render and write one series.

    Attributes
    ----------
    kind: SeriesKind
        Which series.
    number: int
        SeriesNumber.
    description: str
        SeriesDescription (also ProtocolName).
    slices: tuple[SliceGeometry, ...]
        The image planes in spatial order (increasing distance along the normal).
    spacing_between: float
        SpacingBetweenSlices, mm (centre to centre).
    instance_numbers: tuple[int, ...]
        InstanceNumber of each slice in ``slices`` order.
    repetition_time, echo_time, echo_train, flip_angle: float, float, int, float
        RepetitionTime (ms), EchoTime (ms), EchoTrainLength, FlipAngle (degrees).
    phase_direction: str
        InPlanePhaseEncodingDirection, ``"ROW"`` or ``"COL"``.
    bits_stored: int
        12 to 16 (BitsAllocated is always 16).
    rescale: tuple[float, float] | None
        (RescaleSlope, RescaleIntercept) or ``None`` when the tags are absent.
    monochrome1: bool
        Stored inverted (MONOCHROME1).
    codec: Codec
        Transfer syntax.
    ghosting: float
        Amplitude of motion ghosts relative to the image (0: none).
    ghost_period: int
        Pixels between ghost replicas along the phase-encoding direction.
    file_style: int
        Naming scheme of the files (see :mod:`radlake.synth.writer`).
    suffix: str
        ``".dcm"`` or ``""``.
    """

    kind: SeriesKind
    number: int
    description: str
    slices: tuple[SliceGeometry, ...]
    spacing_between: float
    instance_numbers: tuple[int, ...]
    repetition_time: float
    echo_time: float
    echo_train: int
    flip_angle: float
    phase_direction: str
    bits_stored: int
    rescale: tuple[float, float] | None
    monochrome1: bool
    codec: Codec
    ghosting: float
    ghost_period: int
    file_style: int
    suffix: str


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _stack(
    centre: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    *,
    n: int,
    spacing: float,
    size: int,
    pixel_spacing: tuple[float, float],
    thickness: float,
) -> tuple[SliceGeometry, ...]:
    """``n`` parallel planes centred on ``centre``, ``spacing`` mm apart along row x col."""
    orientation = tuple(round(float(v), 6) for v in (*row, *col))
    normal = slice_normal(orientation)
    row_u, col_u = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    corner = centre - 0.5 * (size - 1) * (pixel_spacing[1] * row_u + pixel_spacing[0] * col_u)
    out = []
    for k in range(n):
        pos = corner + (k - 0.5 * (n - 1)) * spacing * normal
        out.append(
            SliceGeometry(
                position=tuple(round(float(v), 4) for v in pos),  # type: ignore[arg-type]
                orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=pixel_spacing,
                rows=size,
                columns=size,
                thickness=thickness,
            )
        )
    return tuple(out)


def _available(codecs: tuple[Codec, ...]) -> list[Codec]:
    found = [c for c in codecs if codec_available(c)]
    return found or [Codec.EXPLICIT]


def plan_study(
    rng: np.random.Generator, spine: Spine, config: SynthConfig, *, codec_offset: int = 0, size: int | None = None
) -> tuple[Scanner, list[SeriesPlan]]:
    """Draw the scanner and plan the study's three series.

    Parameters
    ----------
    rng: numpy.random.Generator
        The study's protocol generator.
    spine: Spine
        The anatomy the series are placed on.
    config: SynthConfig
        Matrix size, slice counts and the storage fractions.
    codec_offset: int
        Transfer syntaxes are dealt round-robin over the series of the archive: series k
        of this study gets codec ``(codec_offset + k) % n``, so any two studies hold every
        available syntax when there are at most six.
    size: int | None
        Matrix size of every series (rows = columns, pixels); default the first of ``config.matrix_sizes``.

    Returns
    -------
    tuple[Scanner, list[SeriesPlan]]
        The scanner and the sagittal, axial and coronal series, in that order.
    """
    scanner = _draw_scanner(rng)
    size = size or config.matrix_sizes[0]
    codecs = _available(tuple(config.transfer_syntaxes))

    def storage(kind: SeriesKind, number: int, block: _Block, **timing) -> SeriesPlan:
        slices = _stack(
            block.centre,
            block.row,
            block.col,
            n=block.n,
            spacing=block.spacing,
            size=size,
            pixel_spacing=block.pixel_spacing,
            thickness=block.thickness,
        )
        codec = codecs[(codec_offset + number - 2) % len(codecs)]
        return _series_plan(rng, config, scanner, kind, number, slices, block.spacing, codec=codec, size=size, **timing)

    # Each block is drawn, then its storage: the draws keep this order.
    sag = _sagittal_block(rng, config, spine, size)
    plans = [storage(SeriesKind.SAGITTAL_T2, 2, sag, **_t2_timing(rng, (2500, 4500), (80, 120)))]
    ax = _axial_block(rng, config, spine, size)
    plans.append(storage(SeriesKind.AXIAL_T2, 3, ax, **_t2_timing(rng, (3000, 5500), (85, 115))))
    cor = _coronal_block(rng, config, spine, size)
    plans.append(storage(SeriesKind.CORONAL_T2, 4, cor, **_t2_timing(rng, (3000, 5000), (80, 110))))
    return scanner, plans


class _Block(NamedTuple):
    """A block of parallel slices: centre (mm, LPS), row and column directions, slice count and
    spacing (mm), pixel spacing (row, column mm) and slice thickness (mm)."""

    centre: np.ndarray
    row: np.ndarray
    col: np.ndarray
    n: int
    spacing: float
    pixel_spacing: tuple[float, float]
    thickness: float


def _draw_scanner(rng: np.random.Generator) -> Scanner:
    """A vendor, model and software version, field strength, station and serial number."""
    vendor = _VENDORS[int(rng.integers(len(_VENDORS)))]
    manufacturer, models, software, bits, rescale, descriptions = vendor
    field_strength = 3.0 if rng.random() < 0.4 else 1.5
    return Scanner(
        manufacturer=manufacturer,
        model=models[int(rng.integers(len(models)))],
        field_strength=field_strength,
        software=f"{software}{int(rng.integers(1, 30))}",
        station=f"MR{int(rng.integers(1, 9))}{'ABCDEFGH'[int(rng.integers(8))]}",
        serial=str(int(rng.integers(10000, 99999))),
        bits_stored=bits,
        rescale=rescale,
        descriptions=descriptions,
    )


def _series_plan(
    rng: np.random.Generator,
    config: SynthConfig,
    scanner: Scanner,
    kind: SeriesKind,
    number: int,
    slices: tuple[SliceGeometry, ...],
    spacing: float,
    *,
    codec,
    size: int,
    **timing,
) -> SeriesPlan:
    """How a series of these slices is stored: instance order, bit depth, rescale, photometry, codec, file names."""
    n = len(slices)
    u = rng.random()
    if u < config.shuffle_fraction:
        order = InstanceOrder.SHUFFLED
    elif rng.random() < 0.4:
        order = InstanceOrder.DESCENDING
    else:
        order = InstanceOrder.ASCENDING
    numbers = list(range(1, n + 1))
    if order is InstanceOrder.DESCENDING:
        numbers.reverse()
    elif order is InstanceOrder.SHUFFLED:
        numbers = [int(i) + 1 for i in rng.permutation(n)]
    bits_stored = scanner.bits_stored if rng.random() < 0.85 else int(rng.choice([12, 14, 15, 16]))
    has_rescale = scanner.rescale or rng.random() < 0.1
    rescale_pair = None
    if has_rescale:
        rescale_pair = (round(_u(rng, 0.4, 4.5), 6), float(rng.choice([0.0, 0.0, -round(_u(rng, 1, 50), 2)])))
    ghost = _u(rng, 0.08, 0.3) if rng.random() < config.ghosting_fraction else 0.0
    phase = "COL" if (kind is SeriesKind.SAGITTAL_T2) == (rng.random() < 0.6) else "ROW"
    return SeriesPlan(
        kind=kind,
        number=number,
        description=scanner.descriptions[list(SeriesKind).index(kind)],
        slices=slices,
        spacing_between=spacing,
        instance_numbers=tuple(numbers),
        phase_direction=phase,
        bits_stored=bits_stored,
        rescale=rescale_pair,
        monochrome1=bool(rng.random() < config.monochrome1_fraction),
        codec=codec,
        ghosting=ghost,
        ghost_period=int(size / _u(rng, 3.0, 9.0)),
        file_style=int(rng.integers(4)),
        suffix="" if rng.random() < config.no_suffix_fraction else ".dcm",
        **timing,
    )


def _t2_timing(rng: np.random.Generator, tr: tuple[float, float], te: tuple[float, float]) -> dict:
    """Repetition and echo time (ms) in these ranges, echo train length and flip angle (degrees) of a T2 TSE."""
    return {
        "repetition_time": round(_u(rng, *tr), 2),
        "echo_time": round(_u(rng, *te), 2),
        "echo_train": int(rng.integers(12, 28)),
        "flip_angle": float(rng.choice([90.0, 150.0, 160.0])),
    }


def _sagittal_block(rng: np.random.Generator, config: SynthConfig, spine: Spine, size: int) -> _Block:
    """Sagittal slices centred near L2-L4, field of view ``config.fov_mm``, maybe anisotropic pixels."""
    l3 = spine.vertebrae["L3"].frame
    centre = l3.origin + l3.axes[0] * _u(rng, -40.0, 45.0) + l3.axes[1] * -_u(rng, 5.0, 35.0)
    centre = centre + np.array([_u(rng, -3.0, 3.0), 0.0, 0.0])
    fov = _u(rng, *config.fov_mm)
    col_spacing = round(fov / size, 6)
    row_spacing = col_spacing if rng.random() < 0.7 else round(col_spacing * _u(rng, 0.9, 1.1), 6)
    tilt = math.radians(config.max_tilt_deg)
    rot = (
        _rotation(np.array([0.0, 0.0, 1.0]), _u(rng, -1, 1) * tilt)
        @ _rotation(np.array([0.0, 1.0, 0.0]), _u(rng, -0.5, 0.5) * tilt)
        @ _rotation(np.array([1.0, 0.0, 0.0]), _u(rng, -0.75, 0.75) * tilt)
    )
    thickness = round(_u(rng, 3.0, 4.5), 2)
    spacing = round(thickness * _u(rng, 1.0, 1.25), 2)
    # centre, row and column directions, slices, spacing, pixel spacing, thickness
    return _Block(
        centre,
        rot @ np.array([0.0, 1.0, 0.0]),
        rot @ np.array([0.0, 0.0, -1.0]),
        config.sagittal_slices,
        spacing,
        (row_spacing, col_spacing),
        thickness,
    )


def _axial_block(rng: np.random.Generator, config: SynthConfig, spine: Spine, size: int) -> _Block:
    """An axial block along one lower lumbar disc, angled with it (at most 22 degrees)."""
    target = [("L3", "L4"), ("L4", "L5"), ("L5", "S1")][int(rng.choice(3, p=[0.25, 0.45, 0.30]))]
    disc = next((d for d in spine.discs if (d.upper, d.lower) == target), spine.discs[-1])
    n_disc = disc.frame.axes[0]
    angle = math.atan2(-n_disc[1], n_disc[2])  # tilt of the disc plane about x
    angle = float(np.clip(angle, -math.radians(22), math.radians(22)))
    normal = np.array([0.0, -math.sin(angle), math.cos(angle)])
    row = np.array([1.0, 0.0, 0.0])
    col = np.cross(normal, row)
    fov_ax = _u(rng, 160.0, 230.0)
    ax_spacing_px = round(fov_ax / size, 6)
    ax_centre = disc.frame.origin + np.array([_u(rng, -5, 5), _u(rng, 10.0, 35.0), 0.0])
    ax_thick = round(_u(rng, 3.5, 4.5), 2)
    ax_gap = round(ax_thick * _u(rng, 1.0, 1.2), 2)
    # centre, row and column directions, slices, spacing, pixel spacing, thickness
    return _Block(ax_centre, row, col, config.axial_slices, ax_gap, (ax_spacing_px, ax_spacing_px), ax_thick)


def _coronal_block(rng: np.random.Generator, config: SynthConfig, spine: Spine, size: int) -> _Block:
    """Coronal slices through the bodies, parallel to the lumbar axis (at most 15 degrees)."""
    l3 = spine.vertebrae["L3"].frame
    c_angle = float(np.clip(math.atan2(-l3.axes[0][1], l3.axes[0][2]), -math.radians(15), math.radians(15)))
    c_normal = np.array([0.0, math.cos(c_angle), math.sin(c_angle)])
    c_row = np.array([1.0, 0.0, 0.0])
    c_col = np.cross(c_normal, c_row)
    fov_cor = _u(rng, 260.0, 360.0)
    cor_px = round(fov_cor / size, 6)
    cor_thick = round(_u(rng, 3.5, 5.0), 2)
    cor_gap = round(cor_thick * _u(rng, 1.0, 1.2), 2)
    cor_centre = l3.origin + l3.axes[0] * _u(rng, -30.0, 30.0) + c_normal * _u(rng, -4.0, 4.0)
    # centre, row and column directions, slices, spacing, pixel spacing, thickness
    return _Block(cor_centre, c_row, c_col, config.coronal_slices, cor_gap, (cor_px, cor_px), cor_thick)
