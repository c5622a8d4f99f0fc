"""radlake.dicom.geometry: normals, plane names, slice order and pixel <-> patient mapping."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radlake.dicom.geometry import (
    Plane,
    classify_plane,
    order_slices,
    patient_to_pixel,
    pixel_grid_to_patient,
    pixel_to_patient,
    slice_normal,
    slice_positions_mm,
)

SAGITTAL = [0, 1, 0, 0, 0, -1]
CORONAL = [1, 0, 0, 0, 0, -1]
AXIAL = [1, 0, 0, 0, 1, 0]


def _axial_tilted(deg: float) -> list[float]:
    """Axial orientation turned about x by ``deg`` degrees (the normal leaves z by that angle)."""
    a = math.radians(deg)
    return [1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a)]


def test_slice_normal_is_row_cross_column():
    assert slice_normal(SAGITTAL).tolist() == [-1.0, 0.0, 0.0]
    assert slice_normal(CORONAL).tolist() == [0.0, 1.0, 0.0]
    assert slice_normal(AXIAL).tolist() == [0.0, 0.0, 1.0]
    # Unnormalised cosines are normalised first.
    np.testing.assert_allclose(slice_normal([2, 0, 0, 0, 3, 0]), [0, 0, 1])


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1, 0, 0, 0, 1], "shape"),
        ([[1, 0, 0], [0, 1, 0]], "shape"),
        ([0, 0, 0, 0, 1, 0], "zero"),
        ([1, 0, 0, 2, 0, 0], "parallel"),
        ([1, 0, 0, 0, float("nan"), 0], "finite"),
        ("abc", "orientation"),
    ],
)
def test_slice_normal_rejects_bad_orientation(bad, message):
    with pytest.raises(ValueError, match="orientation") as info:
        slice_normal(bad)
    assert message in str(info.value)


def test_classify_plane_names_the_axis_of_the_normal():
    assert classify_plane(SAGITTAL) is Plane.SAGITTAL
    assert classify_plane(CORONAL) is Plane.CORONAL
    assert classify_plane(AXIAL) is Plane.AXIAL
    # Sign does not matter (a reversed row direction flips the normal).
    assert classify_plane([0, -1, 0, 0, 0, -1]) is Plane.SAGITTAL


def test_classify_plane_oblique_by_tolerance():
    assert classify_plane(_axial_tilted(20)) is Plane.AXIAL
    assert classify_plane(_axial_tilted(29.5)) is Plane.AXIAL
    assert classify_plane(_axial_tilted(31)) is Plane.OBLIQUE
    assert classify_plane(_axial_tilted(45)) is Plane.OBLIQUE
    assert classify_plane(_axial_tilted(20), oblique_tolerance_deg=10) is Plane.OBLIQUE
    assert classify_plane(_axial_tilted(62)) is Plane.CORONAL  # the normal is now 28 degrees from y
    with pytest.raises(ValueError, match="oblique_tolerance_deg"):
        classify_plane(AXIAL, oblique_tolerance_deg=120)


@pytest.mark.parametrize("bad", [None, [], [1, 0, 0], [0, 0, 0, 0, 0, 0], "x"])
def test_classify_plane_unknown_for_missing_or_invalid(bad):
    assert classify_plane(bad) is Plane.UNKNOWN


def test_plane_is_a_string_enum():
    assert Plane("SAGITTAL") is Plane.SAGITTAL
    assert Plane.AXIAL == "AXIAL"


def test_order_slices_uses_position_not_input_order():
    rng = np.random.default_rng(0)
    normal = slice_normal(_axial_tilted(15))
    distances = np.arange(10) * 3.3 - 7.0
    # Points on the normal, each moved within its plane by a different amount.
    in_plane = np.cross(normal, [1.0, 0.0, 0.0])
    positions = distances[:, None] * normal + rng.uniform(-30, 30, (10, 1)) * in_plane
    perm = rng.permutation(10)
    order = order_slices(positions[perm], _axial_tilted(15))
    assert [int(perm[i]) for i in order] == list(range(10))
    np.testing.assert_allclose(slice_positions_mm(positions, _axial_tilted(15)), distances, atol=1e-9)


def test_order_slices_docstring_example_and_ties_are_stable():
    assert order_slices([[0, 0, 5.0], [0, 0, 2.5]], AXIAL) == [1, 0]
    assert order_slices([[0, 0, 1.0], [5, 5, 1.0], [0, 0, 0.0]], AXIAL) == [2, 0, 1]


@pytest.mark.parametrize("bad", [[], [[0, 0]], [[0, 0, 1, 2]], [[0, 0, float("inf")]], "abc"])
def test_order_slices_rejects_bad_positions(bad):
    with pytest.raises(ValueError, match="'positions'"):
        order_slices(bad, AXIAL)


def test_pixel_to_patient_follows_the_dicom_equation():
    # Row direction +x, column direction +y; PixelSpacing is [row spacing, column spacing].
    out = pixel_to_patient([[2, 1], [0, 0]], position=[10, 0, 0], orientation=AXIAL, pixel_spacing=[0.5, 2.0])
    np.testing.assert_allclose(out, [[14.0, 0.5, 0.0], [10.0, 0.0, 0.0]])
    # Sagittal: columns run posterior (+y), rows run inferior (-z).
    out = pixel_to_patient([3, 4], position=[-5, -100, 50], orientation=SAGITTAL, pixel_spacing=[0.8, 0.7])
    np.testing.assert_allclose(out, [-5.0, -100 + 3 * 0.7, 50 - 4 * 0.8])


def test_pixel_and_patient_round_trip_and_grid():
    kwargs = dict(position=[3.0, -20.0, 7.0], orientation=_axial_tilted(12), pixel_spacing=[0.9, 0.6])
    xy = np.random.default_rng(1).uniform(-5, 300, (6, 5, 2))
    back = patient_to_pixel(pixel_to_patient(xy, **kwargs), **kwargs)
    np.testing.assert_allclose(back, xy, atol=1e-9)
    cols, rows = np.array([0.0, 1.5, 9.0]), np.array([2.0, 4.0])
    grid = pixel_grid_to_patient(cols, rows, **kwargs)
    cc, rr = np.meshgrid(cols, rows)
    np.testing.assert_allclose(grid, pixel_to_patient(np.stack([cc, rr], -1), **kwargs), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(position=[0, 0], orientation=AXIAL, pixel_spacing=[1, 1]), "position"),
        (dict(position=[0, 0, 0], orientation=AXIAL[:4], pixel_spacing=[1, 1]), "orientation"),
        (dict(position=[0, 0, 0], orientation=AXIAL, pixel_spacing=[1, 0]), "pixel_spacing"),
        (dict(position=[0, 0, 0], orientation=AXIAL, pixel_spacing=[1]), "pixel_spacing"),
    ],
)
def test_pixel_to_patient_errors_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        pixel_to_patient([0, 0], **kwargs)
    with pytest.raises(ValueError, match="'xy'"):
        pixel_to_patient([0, 0, 0], position=[0, 0, 0], orientation=AXIAL, pixel_spacing=[1, 1])


def test_real_file_mr_small():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    position = [float(v) for v in ds.ImagePositionPatient]
    spacing = [float(v) for v in ds.PixelSpacing]
    normal = slice_normal(orientation)
    assert math.isclose(float(np.linalg.norm(normal)), 1.0)
    assert classify_plane(orientation) is Plane(("SAGITTAL", "CORONAL", "AXIAL")[int(np.argmax(np.abs(normal)))])
    assert classify_plane(orientation) is not Plane.UNKNOWN
    np.testing.assert_allclose(
        pixel_to_patient([0, 0], position=position, orientation=orientation, pixel_spacing=spacing), position
    )
    # The last pixel lies (columns - 1) * column spacing along the row direction, (rows - 1) * row spacing down.
    far = pixel_to_patient(
        [ds.Columns - 1, ds.Rows - 1], position=position, orientation=orientation, pixel_spacing=spacing
    )
    expected = (
        np.asarray(position)
        + (ds.Columns - 1) * spacing[1] * np.asarray(orientation[:3])
        + (ds.Rows - 1) * spacing[0] * np.asarray(orientation[3:])
    )
    np.testing.assert_allclose(far, expected, atol=1e-6)
    # Two copies of the slice moved along the normal sort by that move.
    positions = [np.asarray(position) + 4.0 * normal, np.asarray(position)]
    assert order_slices(positions, orientation) == [1, 0]
