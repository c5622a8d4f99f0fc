"""DICOM MR Image Storage datasets for the synthetic archive: tags, transfer syntaxes, PHI, bytes.

Each instance is a classic single-frame MR image (SOP Class 1.2.840.10008.5.1.4.1.1.4)
with the Patient, Study, Series, Frame of Reference, Equipment, Image Plane, Image Pixel,
MR Image and VOI LUT attributes filled in; ``RescaleSlope``/``RescaleIntercept`` (with
``RescaleType``) appear on some series as some vendors write them. Nothing depends on
the clock: dates, times and UIDs come from the study's generator and seed, so the same
inputs give the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from radlake.synth.acquisition import StoredImage
from radlake.synth.codecs import CODEC_UIDS
from radlake.synth.phi import Identity
from radlake.synth.protocol import Scanner, SeriesPlan
from radlake.synth.render import SliceGeometry

__all__ = ["InstanceContext", "encode_instance", "file_name", "make_uid"]

#: Prefix of every UID the generator makes (pydicom's, followed by the hash of the entropy).
UID_PREFIX = pydicom.uid.PYDICOM_ROOT_UID


def make_uid(*parts: object) -> str:
    """A deterministic UID from the given parts (seed, study index, role ...)."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["radlake-synth", *(str(p) for p in parts)]))


@dataclass(frozen=True)
class InstanceContext:
    """What an instance shares with its series and study."""

    identity: Identity
    scanner: Scanner
    plan: SeriesPlan
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_description: str
    series_time: str


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.8e}"
    return text if len(text) <= 16 else f"{value:.6e}"


def _add_seconds(hhmmss: str, seconds: float) -> str:
    total = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds
    total = min(total, 86399.99)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def encode_instance(
    ctx: InstanceContext,
    *,
    geometry: SliceGeometry,
    stored: StoredImage,
    instance_number: int,
    slice_location: float,
    sop_uid: str,
) -> bytes:
    """One DICOM Part 10 file as bytes.

    Parameters
    ----------
    ctx: InstanceContext
        Patient, scanner, series and shared UIDs.
    geometry: SliceGeometry
        Image plane of this slice (written as given; already rounded by the planner).
    stored: StoredImage
        (rows, columns) uint16 pixels and the window.
    instance_number: int
        InstanceNumber.
    slice_location: float
        SliceLocation, mm (the position along the normal).
    sop_uid: str
        SOPInstanceUID.

    Returns
    -------
    bytes
        The file, encoded in ``ctx.plan.codec``'s transfer syntax.
    """
    ds = Dataset()
    _set_patient_and_study(ds, ctx, instance_number, sop_uid)
    _set_mr_acquisition(ds, ctx, geometry)
    _set_image(ds, ctx, geometry, stored, instance_number, slice_location)
    return _encoded(ds, ctx.plan, stored, sop_uid)


def _set_patient_and_study(ds: Dataset, ctx: InstanceContext, instance_number: int, sop_uid: str) -> None:
    """Patient, study, series and equipment attributes, and the instance's dates and times."""
    plan, ident, scanner = ctx.plan, ctx.identity, ctx.scanner
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.InstanceCreationDate = ident.study_date
    ds.InstanceCreationTime = _add_seconds(ctx.series_time, 40 + instance_number)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ident.study_date
    ds.SeriesDate = ident.study_date
    ds.AcquisitionDate = ident.study_date
    ds.ContentDate = ident.study_date
    ds.StudyTime = ident.study_time
    ds.SeriesTime = ctx.series_time
    ds.AcquisitionTime = _add_seconds(ctx.series_time, 2 * instance_number)
    ds.ContentTime = _add_seconds(ctx.series_time, 30 + instance_number)
    ds.AccessionNumber = ident.accession
    ds.Modality = "MR"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = ident.institution
    ds.ReferringPhysicianName = ident.referring
    ds.StationName = scanner.station
    ds.StudyDescription = ctx.study_description
    ds.SeriesDescription = plan.description
    ds.OperatorsName = ident.operator
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    ds.PatientAge = ident.age
    ds.PatientSize = _ds(ident.height_m)
    ds.PatientWeight = _ds(ident.weight_kg)


def _set_mr_acquisition(ds: Dataset, ctx: InstanceContext, geometry: SliceGeometry) -> None:
    """MR image and acquisition attributes of a 2D T2 turbo spin echo."""
    plan, scanner = ctx.plan, ctx.scanner
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "tse2d1_" + str(plan.echo_train)
    ds.AngioFlag = "N"
    ds.SliceThickness = _ds(geometry.thickness)
    ds.RepetitionTime = _ds(plan.repetition_time)
    ds.EchoTime = _ds(plan.echo_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(round(42.577478 * scanner.field_strength, 6))
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds(scanner.field_strength)
    ds.SpacingBetweenSlices = _ds(plan.spacing_between)
    ds.EchoTrainLength = str(plan.echo_train)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.DeviceSerialNumber = scanner.serial
    ds.SoftwareVersions = scanner.software
    ds.ProtocolName = plan.description
    ds.AcquisitionMatrix = (
        [0, geometry.columns, geometry.rows, 0]
        if plan.phase_direction == "COL"
        else [geometry.columns, 0, 0, geometry.rows]
    )
    ds.InPlanePhaseEncodingDirection = plan.phase_direction
    ds.FlipAngle = _ds(plan.flip_angle)
    ds.PatientPosition = "HFS"


def _set_image(
    ds: Dataset,
    ctx: InstanceContext,
    geometry: SliceGeometry,
    stored: StoredImage,
    instance_number: int,
    slice_location: float,
) -> None:
    """UIDs, image plane (mm, LPS), pixel description, window and rescale of the instance."""
    plan, ident = ctx.plan, ctx.identity
    ds.StudyInstanceUID = ctx.study_uid
    ds.SeriesInstanceUID = ctx.series_uid
    ds.StudyID = ident.study_id
    ds.SeriesNumber = plan.number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds(v) for v in geometry.position]
    ds.ImageOrientationPatient = [_ds(v) for v in geometry.orientation]
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(round(slice_location, 4))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if plan.monochrome1 else "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = plan.bits_stored
    ds.HighBit = plan.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = _ds(stored.window_center)
    ds.WindowWidth = _ds(stored.window_width)
    if plan.rescale is not None:
        ds.RescaleIntercept = _ds(plan.rescale[1])
        ds.RescaleSlope = _ds(plan.rescale[0])
        ds.RescaleType = "US"


def _encoded(ds: Dataset, plan: SeriesPlan, stored: StoredImage, sop_uid: str) -> bytes:
    """``ds`` with its pixels in ``plan.codec``'s transfer syntax, as Part 10 bytes."""
    uid = CODEC_UIDS[plan.codec]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = np.ascontiguousarray(stored.pixels, dtype=np.uint16)
    if uid.is_compressed:
        ds.compress(uid, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = uid
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def file_name(plan: SeriesPlan, instance_number: int, sop_uid: str) -> str:
    """The file name of one instance under its series folder (four vendor-like styles)."""
    if plan.file_style == 0:
        stem = f"IM{instance_number:04d}"
    elif plan.file_style == 1:
        stem = f"{plan.number:03d}{instance_number:05d}"
    elif plan.file_style == 2:
        stem = f"I{instance_number * 10}"
    else:
        stem = sop_uid
    return stem + plan.suffix
