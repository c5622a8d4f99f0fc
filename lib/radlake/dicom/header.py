"""Parsing one DICOM instance's header into typed columns and DICOM JSON, never raising.

The header is read with ``stop_before_pixels``; the pixel data is neither read nor
decoded here. Geometry columns follow DICOM: ``pixel_spacing`` is ``[row spacing,
column spacing]`` in mm; ``image_orientation_patient`` the row then column direction
cosines; ``image_position_patient`` the centre of the top-left pixel in mm (LPS).
Enhanced (multi-frame) images take spacing and orientation from the shared functional
groups and one position per frame from the per-frame groups (``frame_positions``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from radlake.dicom.geometry import classify_plane
from radlake.dicom.sources import Failure, Stage

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Binary values larger than this (bytes) are left out of the header JSON (overlays, icons, blobs).
BULK_BYTES = 1024
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


@dataclass(frozen=True)
class HeaderResult:
    """The promoted columns, the header as DICOM JSON, or the failure."""

    columns: dict[str, Any] = field(default_factory=dict)
    header_json: str = ""
    header_json_truncated: bool = False
    frame_positions: list[list[float]] | None = None
    is_dicomdir: bool = False
    error: Failure | None = None


def read_header(data: bytes) -> Dataset:
    """The header (no pixel data) of DICOM bytes; raises InvalidDicomError for anything else.

    Files without the 128-byte preamble are accepted only if they parse and carry a
    SOPInstanceUID and SOPClassUID (``force=True`` alone "parses" random bytes).
    """
    if not data:
        raise InvalidDicomError("empty file (0 bytes)")
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        if "SOPInstanceUID" in ds and "SOPClassUID" in ds and str(ds.SOPInstanceUID):
            return ds
    except Exception:  # noqa: BLE001 - forced parsing of non-DICOM raises anything
        pass
    raise InvalidDicomError("not a DICOM file (no DICM prefix and no parseable SOP Class/Instance UIDs)")


def parse_header(
    data: bytes,
    *,
    deid=None,
    max_json_bytes: int = 65536,
    oblique_tolerance_deg: float = 30.0,
) -> HeaderResult:
    """Parse, de-identify and describe one instance.

    Parameters
    ----------
    data
        The instance's bytes (a Part 10 file, with or without preamble).
    deid
        A :class:`radlake.dicom.deid.Deidentifier`, or None to keep the header as is.
    max_json_bytes
        Cap of ``header_json``; larger headers lose their largest elements first.
    oblique_tolerance_deg
        Passed to :func:`radlake.dicom.geometry.classify_plane`.

    Returns
    -------
    HeaderResult
        With ``error`` set (stage ``header``) instead of raising on bad input.
    """
    try:
        ds = read_header(data)
        media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return HeaderResult(is_dicomdir=True)
        for keyword in ("SOPInstanceUID", "SOPClassUID"):
            if not str(ds.get(keyword, "") or "").strip():
                raise InvalidDicomError(f"missing {keyword}: not a DICOM instance")
        if deid is not None:
            deid.deidentify(ds)
        columns, frame_positions = _promoted(ds, oblique_tolerance_deg)
        text, truncated = header_json(ds, max_bytes=max_json_bytes)
        return HeaderResult(columns, text, truncated, frame_positions)
    except Exception as exc:  # noqa: BLE001 - any parse error is this file's failure
        return HeaderResult(error=Failure.from_exception(Stage.HEADER, exc))


def _get(ds: Dataset, keyword: str, cast, default=None):
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return cast(value)
    except Exception:  # noqa: BLE001 - malformed values (a DS of "abc") become NULL, not an error
        return default


def _floats(value, n: int) -> list[float] | None:
    values = [float(v) for v in (value if isinstance(value, list | tuple) or hasattr(value, "__iter__") else [value])]
    return values if len(values) == n else None


def _date(value) -> dt.date | None:
    text = str(value).strip()
    return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None


def _functional(ds: Dataset, sequence: str, keyword: str, frame: int | None = None):
    """A value from the shared (or one frame's) functional groups of an enhanced image."""
    container = "SharedFunctionalGroupsSequence" if frame is None else "PerFrameFunctionalGroupsSequence"
    try:
        items = ds.get(container)
        if not items:
            return None
        item = items[0 if frame is None else frame]
        inner = item.get(sequence)
        return inner[0].get(keyword) if inner else None
    except Exception:  # noqa: BLE001
        return None


def _promoted(ds: Dataset, oblique_tolerance_deg: float) -> tuple[dict[str, Any], list[list[float]] | None]:
    frames = _get(ds, "NumberOfFrames", int, 1) or 1
    spacing = _get(ds, "PixelSpacing", lambda v: _floats(v, 2))
    thickness = _get(ds, "SliceThickness", float)
    orientation = _get(ds, "ImageOrientationPatient", lambda v: _floats(v, 6))
    position = _get(ds, "ImagePositionPatient", lambda v: _floats(v, 3))
    frame_positions = None
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        shared_or_first = (None, 0)
        for frame in shared_or_first:
            spacing = spacing or _safe(
                lambda f=frame: _floats(_functional(ds, "PixelMeasuresSequence", "PixelSpacing", f), 2)
            )
            thickness = thickness or _safe(
                lambda f=frame: float(_functional(ds, "PixelMeasuresSequence", "SliceThickness", f))
            )
            orientation = orientation or _safe(
                lambda f=frame: _floats(_functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient", f), 6)
            )
        positions = [
            _safe(lambda f=f: _floats(_functional(ds, "PlanePositionSequence", "ImagePositionPatient", f), 3))
            for f in range(frames)
        ]
        if all(p is not None for p in positions) and positions:
            frame_positions = positions
            position = position or positions[0]
    plane = classify_plane(orientation, oblique_tolerance_deg=oblique_tolerance_deg) if orientation else None
    meta = getattr(ds, "file_meta", None)
    columns = {
        "sop_instance_uid": _get(ds, "SOPInstanceUID", str),
        "study_instance_uid": _get(ds, "StudyInstanceUID", str),
        "series_instance_uid": _get(ds, "SeriesInstanceUID", str),
        "sop_class_uid": _get(ds, "SOPClassUID", str),
        "modality": _get(ds, "Modality", str),
        "transfer_syntax_uid": str(meta.TransferSyntaxUID)
        if meta is not None and "TransferSyntaxUID" in meta
        else None,
        "rows": _get(ds, "Rows", int),
        "columns": _get(ds, "Columns", int),
        "number_of_frames": frames,
        "bits_stored": _get(ds, "BitsStored", int),
        "bits_allocated": _get(ds, "BitsAllocated", int),
        "pixel_representation": _get(ds, "PixelRepresentation", int),
        "photometric_interpretation": _get(ds, "PhotometricInterpretation", str),
        "samples_per_pixel": _get(ds, "SamplesPerPixel", int),
        "rescale_slope": _get(ds, "RescaleSlope", float),
        "rescale_intercept": _get(ds, "RescaleIntercept", float),
        "pixel_spacing": spacing,
        "slice_thickness": thickness,
        "spacing_between_slices": _get(ds, "SpacingBetweenSlices", float),
        "image_orientation_patient": orientation,
        "image_position_patient": position,
        "frame_of_reference_uid": _get(ds, "FrameOfReferenceUID", str),
        "instance_number": _get(ds, "InstanceNumber", int),
        "series_number": _get(ds, "SeriesNumber", int),
        "series_description": _get(ds, "SeriesDescription", str),
        "echo_time": _get(ds, "EchoTime", float),
        "repetition_time": _get(ds, "RepetitionTime", float),
        "manufacturer": _get(ds, "Manufacturer", str),
        "body_part_examined": _get(ds, "BodyPartExamined", str),
        "study_date": _get(ds, "StudyDate", _date),
        "patient_id": _get(ds, "PatientID", str),
        "accession_number": _get(ds, "AccessionNumber", str),
        "plane": (plane.value if plane is not None else "UNKNOWN"),
        "has_pixels": any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        or _get(ds, "Rows", int) is not None,
    }
    return columns, frame_positions


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def _no_bulk(element) -> str:
    return ""


def header_json(ds: Dataset, *, max_bytes: int) -> tuple[str, bool]:
    """The header as DICOM JSON (PS3.18 F.2) without bulk data, capped at ``max_bytes``.

    Binary values over :data:`BULK_BYTES` (overlays, icons, private blobs) and pixel data
    are left out. If the text is still larger than ``max_bytes``, the largest top-level
    elements are dropped until it fits, and the second value is True.
    """
    clean = Dataset()
    for element in ds:
        if element.tag.group == 0x7FE0 or (0x6000 <= element.tag.group <= 0x60FF and element.tag.element == 0x3000):
            continue
        if (
            element.VR in _BINARY_VRS
            and isinstance(element.value, bytes | bytearray)
            and len(element.value) > BULK_BYTES
        ):
            continue
        clean.add(element)
    try:
        parts: dict[str, Any] = clean.to_json_dict(bulk_data_threshold=BULK_BYTES, bulk_data_element_handler=_no_bulk)
    except Exception:  # noqa: BLE001 - a malformed value somewhere: convert element by element, leaving it out
        parts = {}
        for element in clean:
            try:
                one = Dataset()
                one.add(element)
                parts.update(one.to_json_dict(bulk_data_threshold=BULK_BYTES, bulk_data_element_handler=_no_bulk))
            except Exception:  # noqa: BLE001
                continue
    text = json.dumps(parts, separators=(",", ":"))
    if len(text) <= max_bytes:
        return text, False
    compact = (",", ":")
    sizes = sorted(((len(json.dumps(v, separators=compact)), k) for k, v in parts.items()), reverse=True)
    total = len(text)
    for size, key in sizes:
        if total <= max_bytes:
            break
        parts.pop(key)
        total -= size + len(key) + 4  # "key": plus the comma
    return json.dumps(parts, separators=(",", ":")), True
