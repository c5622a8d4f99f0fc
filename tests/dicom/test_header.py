"""Header parsing on pydicom's and pydicom-data's real files: columns, geometry, DICOM JSON, failures."""

import base64
import datetime as dt
import io
import json
import os
import pickle
import random
import struct
from pathlib import Path

import pydicom
import pytest
from pyspark.sql.types import ArrayType, BooleanType, DataType, DateType, DoubleType, IntegerType, StringType

from dicom_files import DATA_STORE, MR_SMALL, TEST_FILES
from radlake.dicom.header import (
    BULK_DATA_BYTES,
    PROMOTED_COLUMNS,
    HeaderResult,
    _excluded,
    _json_dataset,
    header_json,
    is_dicomdir,
    parse_header,
    read_dataset,
)
from radlake.dicom.integrity import Damage
from radlake.ingest.schema import PROMOTED_FIELDS
from radlake.vocabulary import QuarantineStage

DAMAGE_CLASSES = {v for k, v in vars(Damage).items() if k.isupper()}


#: The Python type of a parsed value for each Spark type of the promoted columns (None aside).
_PYTHON_TYPES = {IntegerType: int, DoubleType: float, DateType: dt.date, BooleanType: bool, StringType: str}


def real_files() -> list[Path]:
    """Every file shipped with pydicom's tests and pydicom-data, whatever it holds."""
    return sorted([p for p in TEST_FILES.rglob("*") if p.is_file()] + [p for p in DATA_STORE.iterdir() if p.is_file()])


def _fits(value: object, spark_type: DataType) -> bool:
    """Whether a parsed value is what a column of ``spark_type`` holds: an array is a list of its element type."""
    if isinstance(spark_type, ArrayType):
        return type(value) is list and all(_fits(v, spark_type.elementType) for v in value)
    return type(value) is _PYTHON_TYPES[type(spark_type)]


def _check_types(columns: dict) -> None:
    """The columns fit the instances table: its promoted fields' names, order and types."""
    assert tuple(columns) == tuple(f.name for f in PROMOTED_FIELDS)
    assert isinstance(columns["number_of_frames"], int) and columns["number_of_frames"] >= 1
    for column in PROMOTED_FIELDS:
        value = columns[column.name]
        if value is None:
            assert column.nullable, column.name
            continue
        assert _fits(value, column.dataType), (column.name, value, column.dataType)
        if isinstance(column.dataType, ArrayType):
            assert len(value) == {"pixel_spacing": 2, "image_orientation_patient": 6}.get(column.name, 3)


def test_every_real_file_gives_columns_a_dicomdir_or_a_header_failure():
    outcomes = {"ok": 0, "failed": 0, "dicomdir": 0}
    files = real_files()
    assert len(files) > 200
    for path in files:
        result = parse_header(path.read_bytes(), deid=None)
        assert isinstance(result, HeaderResult)
        if result.error is not None:
            assert result.error.stage is QuarantineStage.HEADER and result.columns == {}
            assert (result.sop_instance_uid is not None) == (result.error.error_class in DAMAGE_CLASSES)
            outcomes["failed"] += 1
        elif result.is_dicomdir:
            outcomes["dicomdir"] += 1
        else:
            outcomes["ok"] += 1
            _check_types(result.columns)
            assert result.columns["sop_instance_uid"] and result.columns["plane"]
            json.loads(result.header_json)
    # Failed: not DICOM, damaged (radlake.dicom.integrity: truncated, and pydicom's DICOMDIR test images
    # stripped of their pixel data).
    assert outcomes["ok"] > 160 and outcomes["dicomdir"] >= 7 and outcomes["failed"] >= 60


def _pydicom_json(ds: pydicom.Dataset) -> dict:
    """pydicom's DICOM JSON of ``ds``, element by element (an element it cannot convert is left out)."""
    out = {}
    for key in ds.keys():
        try:
            element = ds[key]
            if element.VR == "SQ":
                out[f"{int(key):08X}"] = {"vr": "SQ", "Value": [_pydicom_json(item) for item in element.value]}
            else:
                out[f"{int(key):08X}"] = element.to_json_dict(None, BULK_DATA_BYTES)
        except Exception:  # noqa: BLE001
            continue
    return out


def _without_bulk(obj: dict) -> dict:
    out = {}
    for key, element in obj.items():
        if _excluded(int(key, 16)):
            continue
        if "InlineBinary" in element and len(base64.b64decode(element["InlineBinary"])) > BULK_DATA_BYTES:
            continue
        if element.get("vr") == "SQ":
            element = {"vr": "SQ", "Value": [_without_bulk(item) for item in element["Value"]]}
        out[key] = element
    return out


@pytest.mark.parametrize("convert_first", [False, True], ids=["raw", "converted"])
def test_fast_json_matches_pydicom_on_every_real_file(convert_first):
    """The JSON writer gives pydicom's JSON (as text: same keys, values and types).

    Raw elements are written from their bytes. Elements read by keyword or set by
    de-identification are converted (``convert_first`` converts every one) and are
    written from their values.
    """
    compared = converted = 0
    for path in real_files():
        data = path.read_bytes()
        try:
            ours, reference = read_dataset(data), read_dataset(data)
        except Exception:  # noqa: BLE001 - not DICOM: covered by the test above
            continue
        for key in list(ours.keys()) if convert_first else []:
            try:
                ours[key]  # converts the raw element in place, as reading it by keyword does
                converted += 1
            except Exception:  # noqa: BLE001 - one pydicom cannot convert stays raw
                continue
        mine = json.dumps(_json_dataset(ours), sort_keys=True)
        expected = json.dumps(_without_bulk(_pydicom_json(reference)), sort_keys=True, default=str)
        assert mine == expected, path.name
        compared += 1
    assert compared > 200 and (converted > 10_000) == convert_first


def test_columns_of_mr_small():
    result = parse_header(MR_SMALL.read_bytes(), deid=None)
    ds = pydicom.dcmread(MR_SMALL)
    c = result.columns
    assert c["sop_instance_uid"] == ds.SOPInstanceUID and c["series_instance_uid"] == ds.SeriesInstanceUID
    assert c["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert c["pixel_spacing"] == [float(v) for v in ds.PixelSpacing]
    assert c["image_orientation_patient"] == [float(v) for v in ds.ImageOrientationPatient]
    assert c["image_position_patient"] == [float(v) for v in ds.ImagePositionPatient]
    assert (c["rows"], c["columns"], c["number_of_frames"], c["bits_stored"]) == (64, 64, 1, 16)
    assert c["plane"] == "AXIAL" and c["modality"] == "MR" and c["has_pixels"] is True
    assert c["echo_time"] == float(ds.EchoTime) and c["repetition_time"] == float(ds.RepetitionTime)
    assert c["study_date"] == dt.date(2004, 8, 26) and c["patient_id"] == ds.PatientID
    assert result.frame_positions is None and result.frame_orientations is None
    header = json.loads(result.header_json)
    assert "7FE00010" not in header and header["00080060"] == {"vr": "CS", "Value": ["MR"]}
    assert not result.header_json_truncated
    pickle.loads(pickle.dumps(result))  # results travel between Spark's Python workers


@pytest.mark.parametrize(
    "variant",
    ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_transfer_syntax_variants_give_the_same_columns(variant):
    reference = parse_header(MR_SMALL.read_bytes(), deid=None).columns
    columns = parse_header((TEST_FILES / variant).read_bytes(), deid=None).columns
    differing = {k for k in PROMOTED_COLUMNS if columns[k] != reference[k]}
    assert differing <= {"transfer_syntax_uid"}


def test_scout_series_holds_three_planes():
    """Each of the two scout series of MR2 holds an axial, a coronal and a sagittal image."""
    folder = TEST_FILES / "dicomdirtests" / "98892003" / "MR2"
    series: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        columns = parse_header(path.read_bytes(), deid=None).columns
        series.setdefault(columns["series_instance_uid"], []).append(columns["plane"])
    scouts = [planes for planes in series.values() if len(planes) == 3]
    assert len(scouts) == 2 and all(sorted(planes) == ["AXIAL", "CORONAL", "SAGITTAL"] for planes in scouts)


def test_enhanced_ct_takes_geometry_from_functional_groups():
    result = parse_header((DATA_STORE / "eCT_Supplemental.dcm").read_bytes(), deid=None)
    c = result.columns
    ds = pydicom.dcmread(DATA_STORE / "eCT_Supplemental.dcm", stop_before_pixels=True)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert "PixelSpacing" not in ds and c["number_of_frames"] == 2
    assert c["pixel_spacing"] == [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert c["image_orientation_patient"] == [
        float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    assert c["rescale_intercept"] == -1024.0 and c["rescale_slope"] == 1.0
    assert result.frame_positions == [[99.5, -301.5, -159.0], [99.5, -301.5, -149.0]]
    assert c["image_position_patient"] == result.frame_positions[0] and c["plane"] == "AXIAL"
    assert result.frame_orientations is None  # shared by both frames


def test_enhanced_mr_without_functional_geometry():
    for name in ("emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm"):
        result = parse_header((DATA_STORE / name).read_bytes(), deid=None)
        assert result.columns["number_of_frames"] == 10
        assert result.columns["plane"] == "UNKNOWN" and result.frame_positions is None


def test_files_without_preamble_are_read_only_when_they_really_are_dicom():
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"):
        result = parse_header((TEST_FILES / name).read_bytes(), deid=None)
        assert result.error is None and result.columns["sop_instance_uid"] == "1.2.333.4444.5.6.7.8"
        assert result.columns["has_pixels"] is False
    rng = random.Random(7)
    plausible_start = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    for _ in range(20):
        noise = plausible_start + bytes(rng.getrandbits(8) for _ in range(2000))
        result = parse_header(noise, deid=None)
        assert result.error is not None and result.error.stage is QuarantineStage.HEADER


def test_bad_inputs_fail_at_the_header_stage():
    mr = MR_SMALL.read_bytes()
    cases = {
        "empty": b"",
        "text": b"hello world\n" * 50,
        "random": os.urandom(4096),
        "cut in the meta header": mr[:200],
        "json": (TEST_FILES / "test1.json").read_bytes(),
        "preamble only": b"\x00" * 128 + b"DICM",
    }
    for name, data in cases.items():
        result = parse_header(data, deid=None)
        assert result.error is not None and result.error.stage is QuarantineStage.HEADER, name
        assert result.error.error_class and result.error.message, name
        assert result.columns == {} and result.header_json == ""
    missing_uid = parse_header((TEST_FILES / "nested_priv_SQ.dcm").read_bytes(), deid=None)
    assert "SOPInstanceUID" in missing_uid.error.message


def test_a_file_cut_in_its_pixel_data_is_refused_in_the_header_pass_with_its_uid():
    mr = MR_SMALL.read_bytes()
    result = parse_header(mr[: len(mr) // 2], deid=None)
    assert result.error is not None and result.error.error_class == "TruncatedFile"
    assert "8192 bytes declared" in result.error.message and result.columns == {}
    assert result.sop_instance_uid == str(read_dataset(mr).SOPInstanceUID)


def _with_value(data: bytes, tag: int, value: bytes) -> bytes:
    """``data`` (explicit VR little endian) with the value of a short-VR element replaced."""
    ds = read_dataset(data)
    offset = ds.get_item(tag).value_tell - 8
    old_length = struct.unpack("<H", data[offset + 6 : offset + 8])[0]
    value += b" " * (len(value) % 2)
    head = data[offset : offset + 6] + struct.pack("<H", len(value))
    return data[:offset] + head + value + data[offset + 8 + old_length :]


def test_malformed_values_become_null_not_errors():
    data = MR_SMALL.read_bytes()
    for tag, value in (
        (0x00180050, b"abc"),
        (0x00280030, b"0.3"),
        (0x00200037, b"1\\0\\0\\0\\x\\0"),
        (0x00080020, b"2004"),
    ):
        data = _with_value(data, tag, value)
    result = parse_header(data, deid=None)
    assert result.error is None
    c = result.columns
    assert c["slice_thickness"] is None  # DS "abc"
    assert c["pixel_spacing"] is None  # one value instead of two
    assert c["image_orientation_patient"] is None and c["plane"] == "UNKNOWN"
    assert c["study_date"] is None and c["rows"] == 64


def test_dicomdirs_are_recognised():
    folder = TEST_FILES / "dicomdirtests"
    for name in ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-reordered"):
        result = parse_header((folder / name).read_bytes(), deid=None)
        assert result.is_dicomdir and result.error is None and result.columns == {}
        assert is_dicomdir(pydicom.dcmread(folder / name))
    assert not is_dicomdir(pydicom.dcmread(MR_SMALL))


def test_json_leaves_out_bulk_data():
    overlays = parse_header((DATA_STORE / "MR-SIEMENS-DICOM-WithOverlays.dcm").read_bytes(), deid=None)
    header = json.loads(overlays.header_json)
    assert "60003000" not in header and "7FE00010" not in header
    assert any(k.startswith("6000") for k in header)  # overlay attributes other than the data stay
    ecg = json.loads(parse_header((TEST_FILES / "waveform_ecg.dcm").read_bytes(), deid=None).header_json)
    waveform = ecg["54000100"]["Value"]
    assert waveform and all("54001010" not in item for item in waveform)
    for element in _walk(header) + _walk(ecg):
        if "InlineBinary" in element:
            assert len(base64.b64decode(element["InlineBinary"])) <= BULK_DATA_BYTES


def _walk(obj: dict) -> list[dict]:
    out = []
    for element in obj.values():
        out.append(element)
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                out.extend(_walk(item))
    return out


def test_json_cap_drops_private_elements_first_then_the_largest():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    full_text, truncated = header_json(read_dataset(data), max_bytes=1 << 20)
    full = json.loads(full_text)
    private = [k for k in full if int(k[:4], 16) % 2]
    assert not truncated and private
    cap = len(full_text.encode()) - 10
    capped = parse_header(data, deid=None, max_json_bytes=cap)
    header = json.loads(capped.header_json)
    assert capped.header_json_truncated and len(capped.header_json.encode()) <= cap
    assert set(header) <= set(full) and not set(full) - set(header) - set(private)  # only private ones went
    assert capped.columns == parse_header(data, deid=None).columns  # columns do not depend on the cap
    tiny = parse_header(MR_SMALL.read_bytes(), deid=None, max_json_bytes=1000)
    assert tiny.header_json_truncated and len(tiny.header_json.encode()) <= 1000
    assert "00280010" in json.loads(tiny.header_json)  # the smallest elements (Rows) stay
    with pytest.raises(ValueError, match="max_bytes"):
        header_json(read_dataset(data), max_bytes=1)


def test_non_ascii_text_and_character_sets():
    ds = pydicom.dcmread(MR_SMALL)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SeriesDescription = "Sagittal T2 – Wirbelsäule"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    result = parse_header(buffer.getvalue(), deid=None)
    assert result.columns["series_description"] == "Sagittal T2 – Wirbelsäule"
    assert "Wirbelsäule" in result.header_json
