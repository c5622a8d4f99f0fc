"""Parsing one DICOM instance's header into typed columns and DICOM JSON, never raising.

The header is read with ``stop_before_pixels``; the pixel data is neither read nor
decoded here. Geometry columns follow DICOM: ``pixel_spacing`` is ``[row spacing,
column spacing]`` in mm (distance between row centres, then between column centres);
``image_orientation_patient`` the row then column direction cosines;
``image_position_patient`` the centre of the top-left pixel in mm, patient (LPS)
coordinates. Enhanced (multi-frame) images without these at the top level take
spacing, thickness and orientation from the shared functional groups (else the first
frame's) and one position per frame from the per-frame groups (``frame_positions``).

``header_json`` is the (de-identified) header as DICOM JSON (PS3.18 F.2) without bulk
data. It is written by a converter that reads the stored bytes of each element
directly and falls back to pydicom's own ``to_json_dict`` for whatever it does not
handle (sequences' structure aside: AT, ambiguous or unknown VRs, ISO 2022 character
sets); it gives the same JSON as pydicom for the files tested, except that an empty or
non-finite number in a DS/IS/FL/FD value is ``null`` where pydicom fails or writes NaN.

Example
-------
>>> from pydicom.data import get_testdata_file
>>> data = open(get_testdata_file("MR_small.dcm"), "rb").read()
>>> result = parse_header(data, deid=None)
>>> result.error is None, result.columns["rows"], result.columns["plane"]
(True, 64, 'AXIAL')

"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from types import GenericAlias
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from radlake.dicom.integrity import Damage, Dimensions, check_pixel_data, locate_pixel_data, truncated_header
from radlake.dicom.sources import Failure
from radlake.vocabulary import QuarantineStage

if TYPE_CHECKING:
    from radlake.dicom.deid import Deidentifier

#: Media Storage SOP Class UID of a DICOMDIR (Media Storage Directory Storage).
DICOMDIR_SOP_CLASS_UID = "1.2.840.10008.1.3.10"
#: Binary values (OB, OW, OD, OF, OL, OV, UN) longer than this many bytes are left out of
#: the header JSON: overlays, icons, curves, encapsulated documents, vendor blobs.
BULK_DATA_BYTES = 1024
#: The promoted columns in table order (see :func:`parse_header`), with the Python type of their
#: values (any value may be None). The instances table types its columns from these
#: (:data:`radlake.ingest.schema.PROMOTED_FIELDS`).
PROMOTED_COLUMNS: dict[str, type | GenericAlias] = {
    "sop_instance_uid": str,
    "study_instance_uid": str,
    "series_instance_uid": str,
    "sop_class_uid": str,
    "modality": str,
    "transfer_syntax_uid": str,
    "rows": int,
    "columns": int,
    "number_of_frames": int,
    "bits_stored": int,
    "bits_allocated": int,
    "pixel_representation": int,
    "photometric_interpretation": str,
    "samples_per_pixel": int,
    "rescale_slope": float,
    "rescale_intercept": float,
    "pixel_spacing": list[float],
    "slice_thickness": float,
    "spacing_between_slices": float,
    "image_orientation_patient": list[float],
    "image_position_patient": list[float],
    "frame_of_reference_uid": str,
    "instance_number": int,
    "series_number": int,
    "series_description": str,
    "echo_time": float,
    "repetition_time": float,
    "manufacturer": str,
    "body_part_examined": str,
    "study_date": dt.date,
    "patient_id": str,
    "accession_number": str,
    "plane": str,
    "has_pixels": bool,
}

_PIXEL_TAGS_LE = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")
_PIXEL_TAGS_BE = (b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09")
# First bytes of a file without preamble that may be DICOM: group 0x0002 or 0x0008, either byte order.
_PLAUSIBLE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class HeaderResult:
    """What :func:`parse_header` found in one instance, or why it failed.

    Attributes
    ----------
    columns: dict[str, Any]
        The promoted columns (keys :data:`PROMOTED_COLUMNS`); empty on failure and for a DICOMDIR.
    header_json: str
        The de-identified header as DICOM JSON, without bulk data; "" on failure.
    header_json_truncated: bool
        True if elements were left out to keep ``header_json`` under the size cap.
    frame_positions: list[list[float]] | None
        Enhanced images: ImagePositionPatient of every frame, shape (frames, 3), mm,
        LPS, from the per-frame functional groups; None if absent or incomplete.
    frame_orientations: list[list[float]] | None
        Enhanced images whose frames differ in orientation: ImageOrientationPatient
        of every frame, shape (frames, 6); None when shared (the common case).
    is_dicomdir: bool
        The file is a DICOMDIR (a directory of files, not an instance).
    error: Failure | None
        Stage ``header`` failure; None on success.
    sop_instance_uid: str | None
        On the failure of an instance whose header parsed but whose data is damaged
        (:mod:`radlake.dicom.integrity`): its SOPInstanceUID, as stored; else None.
    """

    columns: dict[str, Any] = field(default_factory=dict)
    header_json: str = ""
    header_json_truncated: bool = False
    frame_positions: list[list[float]] | None = None
    frame_orientations: list[list[float]] | None = None
    is_dicomdir: bool = False
    error: Failure | None = None
    sop_instance_uid: str | None = None


def is_dicomdir(ds: Dataset) -> bool:
    """Whether ``ds`` is a DICOMDIR (by its Media Storage SOP Class or its directory records)."""
    meta = getattr(ds, "file_meta", None)
    try:
        media_class = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    except Exception:  # noqa: BLE001
        media_class = ""
    return media_class.strip() == DICOMDIR_SOP_CLASS_UID or 0x00041220 in ds  # DirectoryRecordSequence


def _read(data: bytes, *, stop_before_pixels: bool) -> tuple[Dataset, int]:
    """(dataset, file position where reading stopped); raises InvalidDicomError for non-DICOM."""
    if not data:
        raise InvalidDicomError("empty file (0 bytes)")
    if data[128:132] == b"DICM":
        fp = io.BytesIO(data)
        return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels), fp.tell()
    if data[:2] not in _PLAUSIBLE_STARTS or len(data) < 16:
        raise InvalidDicomError("not a DICOM file: no 'DICM' prefix and no group 0002/0008 element at the start")
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
        uids = [str(ds.get(k, "") or "").strip() for k in ("SOPClassUID", "SOPInstanceUID")]
    except Exception as exc:  # noqa: BLE001 - forced parsing of non-DICOM raises anything
        raise InvalidDicomError(f"not a DICOM file: no 'DICM' prefix and it does not parse ({exc})") from exc
    if not all(len(u) <= 64 and _UID.match(u) for u in uids):
        raise InvalidDicomError("not a DICOM file: no 'DICM' prefix and no valid SOP Class and Instance UIDs")
    return ds, fp.tell()


def read_dataset(data: bytes, *, stop_before_pixels: bool = True) -> Dataset:
    """The dataset in DICOM bytes (a Part 10 file, or a dataset without preamble).

    Data without the 128-byte preamble and ``DICM`` prefix is read only if it starts
    with a group 0x0002 or 0x0008 element, parses, and has SOP Class and SOP Instance
    UIDs that look like UIDs (pydicom's ``force=True`` alone "parses" random bytes).

    Raises
    ------
    pydicom.errors.InvalidDicomError
        If ``data`` is not DICOM.
    Exception
        Whatever pydicom raises on a corrupt file.
    """
    return _read(data, stop_before_pixels=stop_before_pixels)[0]


def parse_header(
    data: bytes,
    *,
    deid: Deidentifier | None,
    max_json_bytes: int = 65536,
    oblique_tolerance_deg: float = 30.0,
    max_decoded_bytes: int = 1 << 30,
) -> HeaderResult:
    """Parse, de-identify and describe one instance; never raises.

    Parameters
    ----------
    data: bytes
        The instance's bytes (a Part 10 file, or a dataset without preamble).
    deid: Deidentifier | None
        The de-identifier (:class:`radlake.dicom.deid.Deidentifier`) applied before
        anything is extracted, or None to keep the header as stored.
    max_json_bytes: int
        Cap of ``header_json`` in UTF-8 bytes: larger headers lose their private
        elements first, then their largest top-level elements, until they fit.
    oblique_tolerance_deg: float
        Passed to :func:`radlake.dicom.geometry.classify_plane` for ``plane``.
    max_decoded_bytes: int
        An instance whose declared dimensions decode to more is refused
        (:func:`radlake.dicom.integrity.check_instance`, which also refuses truncated
        files and pixel data shorter than its dimensions, reading no pixel data).

    Returns
    -------
    HeaderResult
        Columns (keys :data:`PROMOTED_COLUMNS`, None where absent or malformed):
        UIDs, modality, transfer syntax and strings as str; ``rows``, ``columns``,
        ``number_of_frames`` (default 1), ``bits_*``, ``pixel_representation``,
        ``samples_per_pixel``, ``instance_number``, ``series_number`` as int;
        ``rescale_*``, ``slice_thickness``, ``spacing_between_slices`` (mm),
        ``echo_time``, ``repetition_time`` (ms) as float; ``pixel_spacing`` [row, column]
        mm, ``image_orientation_patient`` (6,), ``image_position_patient`` (3,) mm as
        lists of float; ``study_date`` as :class:`datetime.date`; ``patient_id`` and
        ``accession_number`` as stored (pseudonyms when ``deid`` is given); ``plane``
        a :class:`radlake.dicom.geometry.Plane` value; ``has_pixels`` bool. A DICOMDIR
        gives ``is_dicomdir=True`` and no columns; bad input gives ``error`` (stage
        ``header``).
    """
    try:
        ds, stop = _read(data, stop_before_pixels=True)
        if is_dicomdir(ds):
            return HeaderResult(is_dicomdir=True)
        for keyword in ("SOPInstanceUID", "SOPClassUID"):
            if not str(ds.get(keyword, "") or "").strip():
                raise InvalidDicomError(f"missing {keyword}: not a DICOM instance")
        uid = str(ds.SOPInstanceUID).strip()  # as stored: before de-identification
        located = locate_pixel_data(data, ds, stop)
        damage = located if isinstance(located, Failure) else truncated_header(ds, located)
        if damage is not None:
            return HeaderResult(error=damage, sop_instance_uid=uid)
        buffer, at = located.buffer, located.stop
        has_pixels = buffer[at : at + 4] in _PIXEL_TAGS_LE + _PIXEL_TAGS_BE
        if deid is not None:
            deid.deidentify(ds)
        parts = _json_dataset(ds)
        meta = getattr(ds, "file_meta", None)
        columns, positions, orientations = _promoted(parts, meta, has_pixels, oblique_tolerance_deg)
        dims = Dimensions.from_columns(columns)
        if (damage := check_pixel_data(located, ds, dims, max_decoded_bytes=max_decoded_bytes)) is not None:
            return HeaderResult(error=damage, sop_instance_uid=uid)
        text, truncated = _capped(parts, max_json_bytes)
        return HeaderResult(columns, text, truncated, positions, orientations)
    except zlib.error as exc:  # pydicom inflating a Deflated Explicit VR Little Endian dataset
        return HeaderResult(
            error=Failure(QuarantineStage.HEADER, Damage.TRUNCATED, f"the deflated dataset cannot be inflated: {exc}")
        )
    except Exception as exc:  # noqa: BLE001 - any parse error is this file's failure
        return HeaderResult(error=Failure.from_exception(QuarantineStage.HEADER, exc))


# ---------------------------------------------------------------------------- columns
# Columns are read from the element dicts of the DICOM JSON (already converted once),
# not from the dataset: a second conversion of each element by pydicom would cost more
# than the whole JSON.

_KEYWORDS = (
    "SOPInstanceUID StudyInstanceUID SeriesInstanceUID SOPClassUID Modality Rows Columns NumberOfFrames "
    "BitsStored BitsAllocated PixelRepresentation PhotometricInterpretation SamplesPerPixel RescaleSlope "
    "RescaleIntercept PixelSpacing SliceThickness SpacingBetweenSlices ImageOrientationPatient "
    "ImagePositionPatient FrameOfReferenceUID InstanceNumber SeriesNumber SeriesDescription EchoTime "
    "RepetitionTime Manufacturer BodyPartExamined StudyDate PatientID AccessionNumber "
    "SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence PixelMeasuresSequence "
    "PlaneOrientationSequence PlanePositionSequence PixelValueTransformationSequence MREchoSequence "
    "EffectiveEchoTime MRTimingAndRelatedParametersSequence"
).split()
#: DICOM JSON key (8 hex digits) of each keyword used for the columns.
_K = {keyword: f"{tag_for_keyword(keyword):08X}" for keyword in _KEYWORDS}

_Element = dict[str, Any]


def _values(obj: dict[str, _Element] | None, keyword: str) -> list[Any] | None:
    element = obj.get(_K[keyword]) if obj else None
    values = element.get("Value") if element else None
    return values or None


def _first(obj: dict[str, _Element] | None, keyword: str, cast: Any) -> Any:
    """``cast`` of the first value, or None when absent, empty or malformed."""
    values = _values(obj, keyword)
    if values is None or values[0] is None:
        return None
    try:
        return cast(values[0])
    except (TypeError, ValueError, OverflowError):
        return None


def _float(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = int(value)
    return number if -(2**31) <= number < 2**31 else None  # the columns are 32-bit integers


def _date(value: Any) -> dt.date | None:
    text = str(value).strip().replace(".", "")
    return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None


def _text(obj: dict[str, _Element] | None, keyword: str) -> str | None:
    values = _values(obj, keyword)
    if values is None or not all(isinstance(v, str) for v in values):
        return None
    return "\\".join(values).strip() or None


def _floats(obj: dict[str, _Element] | None, keyword: str, n: int) -> list[float] | None:
    values = _values(obj, keyword)
    if values is None or len(values) != n:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def _item(obj: dict[str, _Element] | None, keyword: str, index: int = 0) -> dict[str, _Element] | None:
    values = _values(obj, keyword)
    item = values[index] if values and len(values) > index else None
    return item if isinstance(item, dict) else None


class _Groups:
    """Functional-group values of an enhanced image: the shared group first, then the first frame's."""

    def __init__(self, parts: dict[str, _Element]) -> None:
        self.shared = _item(parts, "SharedFunctionalGroupsSequence")
        self.frames = [
            f if isinstance(f, dict) else None for f in _values(parts, "PerFrameFunctionalGroupsSequence") or []
        ]

    def _groups(self) -> list[dict[str, _Element] | None]:
        return [self.shared, self.frames[0] if self.frames else None]

    def first(self, macro: str, keyword: str, cast: Any) -> Any:
        for group in self._groups():
            value = _first(_item(group, macro), keyword, cast)
            if value is not None:
                return value
        return None

    def floats(self, macro: str, keyword: str, n: int) -> list[float] | None:
        for group in self._groups():
            value = _floats(_item(group, macro), keyword, n)
            if value is not None:
                return value
        return None

    def per_frame(self, macro: str, keyword: str, n: int) -> list[list[float]] | None:
        values = [_floats(_item(frame, macro), keyword, n) for frame in self.frames]
        return values if values and all(v is not None for v in values) else None  # type: ignore[return-value]


def _promoted(
    parts: dict[str, _Element], meta: Dataset | None, has_pixels: bool, oblique_tolerance_deg: float
) -> tuple[dict[str, Any], list[list[float]] | None, list[list[float]] | None]:
    """(columns, frame positions, frame orientations) from the JSON element dicts of one instance."""
    from radlake.dicom.geometry import Plane, classify_plane  # geometry imports numpy; header stays light

    spacing = _floats(parts, "PixelSpacing", 2)
    thickness = _first(parts, "SliceThickness", _float)
    between = _first(parts, "SpacingBetweenSlices", _float)
    orientation = _floats(parts, "ImageOrientationPatient", 6)
    position = _floats(parts, "ImagePositionPatient", 3)
    slope = _first(parts, "RescaleSlope", _float)
    intercept = _first(parts, "RescaleIntercept", _float)
    echo = _first(parts, "EchoTime", _float)
    repetition = _first(parts, "RepetitionTime", _float)
    frames = _first(parts, "NumberOfFrames", _int)
    positions = orientations = None
    if _K["SharedFunctionalGroupsSequence"] in parts or _K["PerFrameFunctionalGroupsSequence"] in parts:
        groups = _Groups(parts)
        spacing = spacing or groups.floats("PixelMeasuresSequence", "PixelSpacing", 2)
        if thickness is None:
            thickness = groups.first("PixelMeasuresSequence", "SliceThickness", _float)
        if between is None:
            between = groups.first("PixelMeasuresSequence", "SpacingBetweenSlices", _float)
        orientation = orientation or groups.floats("PlaneOrientationSequence", "ImageOrientationPatient", 6)
        if slope is None and intercept is None:
            slope = groups.first("PixelValueTransformationSequence", "RescaleSlope", _float)
            intercept = groups.first("PixelValueTransformationSequence", "RescaleIntercept", _float)
        if echo is None:
            echo = groups.first("MREchoSequence", "EffectiveEchoTime", _float)
        if repetition is None:
            repetition = groups.first("MRTimingAndRelatedParametersSequence", "RepetitionTime", _float)
        positions = groups.per_frame("PlanePositionSequence", "ImagePositionPatient", 3)
        position = position or (positions[0] if positions else None)
        per_frame = groups.per_frame("PlaneOrientationSequence", "ImageOrientationPatient", 6)
        if per_frame and any(o != per_frame[0] for o in per_frame):
            orientations = per_frame
    plane = classify_plane(orientation, oblique_tolerance_deg=oblique_tolerance_deg) if orientation else Plane.UNKNOWN
    transfer_syntax = None
    if meta is not None and 0x00020010 in meta:  # TransferSyntaxUID; absent in files without meta
        try:
            transfer_syntax = str(meta[0x00020010].value or "").strip() or None
        except Exception:  # noqa: BLE001
            transfer_syntax = None
    columns = {
        "sop_instance_uid": _text(parts, "SOPInstanceUID"),
        "study_instance_uid": _text(parts, "StudyInstanceUID"),
        "series_instance_uid": _text(parts, "SeriesInstanceUID"),
        "sop_class_uid": _text(parts, "SOPClassUID"),
        "modality": _text(parts, "Modality"),
        "transfer_syntax_uid": transfer_syntax,
        "rows": _first(parts, "Rows", _int),
        "columns": _first(parts, "Columns", _int),
        "number_of_frames": frames if frames is not None and frames >= 1 else 1,
        "bits_stored": _first(parts, "BitsStored", _int),
        "bits_allocated": _first(parts, "BitsAllocated", _int),
        "pixel_representation": _first(parts, "PixelRepresentation", _int),
        "photometric_interpretation": _text(parts, "PhotometricInterpretation"),
        "samples_per_pixel": _first(parts, "SamplesPerPixel", _int),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "pixel_spacing": spacing,
        "slice_thickness": thickness,
        "spacing_between_slices": between,
        "image_orientation_patient": orientation,
        "image_position_patient": position,
        "frame_of_reference_uid": _text(parts, "FrameOfReferenceUID"),
        "instance_number": _first(parts, "InstanceNumber", _int),
        "series_number": _first(parts, "SeriesNumber", _int),
        "series_description": _text(parts, "SeriesDescription"),
        "echo_time": echo,
        "repetition_time": repetition,
        "manufacturer": _text(parts, "Manufacturer"),
        "body_part_examined": _text(parts, "BodyPartExamined"),
        "study_date": _first(parts, "StudyDate", _date),
        "patient_id": _text(parts, "PatientID"),
        "accession_number": _text(parts, "AccessionNumber"),
        "plane": Plane(plane).value,
        "has_pixels": bool(has_pixels),
    }
    return columns, positions, orientations


# ------------------------------------------------------------------------- DICOM JSON

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_SPLIT_STRIPPED = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "IS"})  # rstrip the whole value, then split
_SPLIT_EACH = frozenset({"SH", "LO", "UC"})  # split, then rstrip each value
_SINGLE = frozenset({"ST", "LT", "UT"})
_TEXT_VALUE_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_NUMBER_TYPES = {vr: int for vr in ("IS", "SL", "SS", "SV", "UL", "US", "UV")} | {"DS": float, "FD": float, "FL": float}
_SKIP = object()  # an element that is left out of the JSON
_FALLBACK = object()  # an element that the fast path leaves to pydicom
_CHARSET_TAG = 0x00080005


def _excluded(tag: int) -> bool:
    """Pixel data, overlay data, waveform data, group lengths and file meta: never in the JSON."""
    group, element = tag >> 16, tag & 0xFFFF
    return (
        group == 0x7FE0
        or element == 0
        or group == 0x0002
        or (0x6000 <= group <= 0x60FF and element == 0x3000)
        or tag == 0x54001010
    )


def _codec(ds: Dataset, inherited: str | None) -> str | None:
    """The Python codec of text VRs in ``ds`` when a plain ``bytes.decode`` suffices, else None."""
    if _CHARSET_TAG not in ds:
        return inherited
    try:
        value = ds[_CHARSET_TAG].value
    except Exception:  # noqa: BLE001
        return None
    values = [value] if isinstance(value, str) else list(value or [""])
    if len(values) != 1:
        return None  # ISO 2022 code extensions: pydicom decodes them
    name = (values[0] or "").strip()
    if not name:
        return "latin_1"
    if name.startswith("ISO 2022"):
        return None
    return python_encoding.get(name)


def _numbers(text: str, cast: Any) -> list[Any]:
    out: list[Any] = []
    for part in text.split("\\"):
        part = part.strip()
        if not part:
            out.append(None)
            continue
        try:
            number = cast(part)
        except ValueError:
            number = float(part)  # an IS written "12.0"; anything else raises ValueError
            if not number.is_integer():
                raise
            number = int(number)
        out.append(number if not isinstance(number, float) or math.isfinite(number) else None)
    return out


def _fast_element(raw: RawDataElement, codec: str | None) -> Any:
    """The JSON dict of a raw element from its bytes, :data:`_SKIP` or :data:`_FALLBACK`."""
    vr = raw.VR or _dictionary_vr(raw.tag)  # implicit VR: the dictionary's, as pydicom does
    if vr is None or vr in ("SQ", "AT") or vr not in _KNOWN_VRS or raw.length == 0xFFFFFFFF or raw.is_buffered:
        return _FALLBACK
    if vr == "UN" and (_known_tag(raw.tag) or _private_creator(raw.tag)):  # pydicom gives them their real VR
        return _FALLBACK
    value = raw.value
    if value is None or not isinstance(value, bytes):
        return _FALLBACK
    if not value:
        return {"vr": vr}
    if vr in _BINARY_VRS:
        if len(value) > BULK_DATA_BYTES:
            return _SKIP
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        if len(value) % size:
            return _FALLBACK
        numbers = list(struct.unpack(f"{'<' if raw.is_little_endian else '>'}{len(value) // size}{fmt}", value))
        if fmt in "fd":
            numbers = [v if math.isfinite(v) else None for v in numbers]
        return {"vr": vr, "Value": numbers}
    if vr in _CHARSET_VRS:
        if codec is None:
            return _FALLBACK
        if vr == "PN":
            value = value.rstrip(b"\x00 ")
        text = value.decode(codec)
    else:
        text = value.decode("latin_1")
    if vr in _SPLIT_STRIPPED:
        parts = text.rstrip(" \x00").split("\\")
    elif vr == "DS":
        parts = text.strip().rstrip(" \x00").split("\\")
    elif vr in _SPLIT_EACH:
        parts = [p.rstrip("\x00 ") for p in text.split("\\")]
    elif vr == "AE":
        parts = [p.strip() for p in text.split("\\")]
    elif vr in _SINGLE:
        parts = [text.rstrip("\x00 ")]
    elif vr == "UR":
        parts = [text.rstrip()]
    elif vr == "PN":
        parts = text.split("\\")
    else:
        return _FALLBACK
    if len(parts) == 1 and parts[0] == "":
        return {"vr": vr}
    if vr == "DS":
        return {"vr": vr, "Value": _numbers("\\".join(parts), float)}
    if vr == "IS":
        return {"vr": vr, "Value": _numbers("\\".join(parts), int)}
    if vr == "PN":
        names = []
        for part in parts:
            groups = part.split("=")
            name = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                name["Ideographic"] = groups[1]
            if len(groups) > 2:
                name["Phonetic"] = groups[2]
            names.append(name)
        return {"vr": vr, "Value": names}
    return {"vr": vr, "Value": parts}


_KNOWN_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW"}
    | {"PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The VR of a public tag in pydicom's dictionary, None if private, unknown or ambiguous."""
    if (tag >> 16) & 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _KNOWN_VRS else None


def _converted_element(element: DataElement) -> Any:
    """The JSON dict of an element whose value pydicom already converted, or :data:`_FALLBACK`.

    Elements read by keyword (the promoted columns) or set by de-identification are no
    longer raw. For text and number VRs their JSON is the value itself, as
    ``DataElement.to_json_dict`` writes it (numbers as ``int`` or ``float``); anything
    else (PN, AT, SQ, binary, an unexpected value type) goes to pydicom.
    """
    vr, value = element.VR, element.value
    number = _NUMBER_TYPES.get(vr)
    if number is None and vr not in _TEXT_VALUE_VRS:
        return _FALLBACK
    if value is None or value == "":
        return {"vr": vr}
    values = list(value) if isinstance(value, MultiValue) else [value]
    if not values:
        return {"vr": vr}
    if number is None:
        return {"vr": vr, "Value": values} if all(type(v) is str for v in values) else _FALLBACK
    if any(v is None or isinstance(v, str | bytes) for v in values):
        return _FALLBACK
    return {"vr": vr, "Value": [number(v) for v in values]}


def _private_creator(tag: int) -> bool:
    return (tag >> 16) & 1 == 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF


@functools.lru_cache(maxsize=4096)
def _known_tag(tag: int) -> bool:
    return (tag >> 16) & 1 == 0 and dictionary_has_tag(tag)


def _slow_element(ds: Dataset, tag: int, codec: str | None) -> Any:
    """The JSON dict of an element converted by pydicom (sequences recursed with the fast path)."""
    element = ds[tag]
    if element.VR == "SQ":
        return {"vr": "SQ", "Value": [_json_dataset(item, codec) for item in element.value or []]}
    if element.VR in _BINARY_VRS or element.VR in ("OB or OW", "US or OW"):
        value = element.value
        if isinstance(value, bytes | bytearray) and len(value) > BULK_DATA_BYTES:
            return _SKIP
    return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=BULK_DATA_BYTES)


def _json_dataset(ds: Dataset, inherited: str | None = "latin_1") -> dict[str, Any]:
    codec = _codec(ds, inherited)
    out: dict[str, Any] = {}
    for key in ds.keys():
        tag = int(key)
        if _excluded(tag):
            continue
        try:
            raw = ds.get_item(key)
            item = _fast_element(raw, codec) if isinstance(raw, RawDataElement) else _converted_element(raw)
        except Exception:  # noqa: BLE001 - undecodable bytes and the like: let pydicom try
            item = _FALLBACK
        if item is _FALLBACK:
            try:
                item = _slow_element(ds, tag, codec)
            except Exception:  # noqa: BLE001 - a value pydicom cannot convert is left out
                continue
        if item is not _SKIP:
            out[f"{tag:08X}"] = item
    return out


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN/Infinity from pydicom's fallback: not valid JSON, write null
        return json.dumps(_without_nan(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _without_nan(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    return value


def header_json(ds: Dataset, *, max_bytes: int = 65536) -> tuple[str, bool]:
    """The dataset as DICOM JSON (PS3.18 F.2) without bulk data, capped at ``max_bytes``.

    Left out: pixel data (group 7FE0), overlay data (60xx,3000), waveform data
    (5400,1010), group lengths, and binary values over :data:`BULK_DATA_BYTES`.
    If the UTF-8 text is still over ``max_bytes``, private elements are dropped,
    then the largest top-level elements, until it fits.

    Parameters
    ----------
    ds: pydicom.dataset.Dataset
        The dataset (file meta information is not included).
    max_bytes: int
        Cap of the returned text in UTF-8 bytes, >= 2.

    Returns
    -------
    tuple[str, bool]
        The JSON text, and whether elements were dropped to fit the cap.

    Raises
    ------
    ValueError
        If ``max_bytes`` < 2.
    """
    if max_bytes < 2:
        raise ValueError(f"Argument 'max_bytes' must be at least 2, got {max_bytes}.")
    return _capped(_json_dataset(ds), max_bytes)


def _capped(parts: dict[str, Any], max_bytes: int) -> tuple[str, bool]:
    """JSON text of ``parts`` (modified: elements are dropped to fit), and whether any was dropped."""
    text = _dumps(parts)
    if len(text) <= max_bytes and len(text.encode("utf-8")) <= max_bytes:
        return text, False
    sizes = {key: len(_dumps(value).encode("utf-8")) + len(key) + 4 for key, value in parts.items()}
    total = 1 + sum(sizes.values())  # braces, and a comma between members: 2 + sum - 1
    order = sorted(parts, key=lambda k: (int(k[:4], 16) % 2 == 0, -sizes[k], k))  # private first, then largest
    for key in order:
        if total <= max_bytes:
            break
        total -= sizes.pop(key)
        del parts[key]
    return _dumps(parts), True
