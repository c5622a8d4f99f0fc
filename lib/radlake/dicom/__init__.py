"""DICOM helpers shared by the stages: geometry now (:mod:`radlake.dicom.geometry`).

Patient coordinates are LPS in millimetres and only :mod:`radlake.dicom.geometry`
converts between pixels and patient coordinates.
"""

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
