"""Header parsing and pixel decoding on pydicom's and pydicom-data's real files."""

import io
import os
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest

from radlake.dicom.header import parse_header
from radlake.dicom.pixels import decode_frames, decode_pixels, encode_pixels
from radlake.dicom.sources import Stage

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DATA_STORE = Path(data_store.__file__).parent / "data"


def _all_real_files() -> list[Path]:
    files = [p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc", ".txt", ".json"}]
    return sorted(files + [p for p in DATA_STORE.iterdir() if p.is_file()])


def test_every_real_file_is_parsed_or_fails_cleanly():
    """No real-world file raises: each gives columns or a typed failure; decoding likewise."""
    outcomes = {"ok": 0, "failed": 0, "dicomdir": 0, "pixel_failed": 0}
    files = _all_real_files()
    assert len(files) > 100
    for path in files:
        data = path.read_bytes()
        result = parse_header(data)
        if result.error is not None:
            assert result.error.stage is Stage.HEADER
            outcomes["failed"] += 1
            continue
        if result.is_dicomdir:
            outcomes["dicomdir"] += 1
            continue
        outcomes["ok"] += 1
        assert result.columns["sop_instance_uid"]
        for frame in decode_frames(data, max_decoded_bytes=64 << 20):
            if frame.error is not None:
                assert frame.error.stage is Stage.PIXELS
                outcomes["pixel_failed"] += 1
                break
            assert frame.pixels.ndim == 2 and frame.pixels.dtype == np.float32
    assert outcomes["ok"] > 150 and outcomes["dicomdir"] >= 1 and outcomes["failed"] >= 1


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_transfer_syntax_variants_decode_to_the_same_pixels(variant):
    [reference] = decode_frames((TEST_FILES / "MR_small.dcm").read_bytes())
    [frame] = decode_frames((TEST_FILES / variant).read_bytes())
    assert frame.error is None
    np.testing.assert_array_equal(frame.pixels, reference.pixels)


def test_header_columns_of_mr_small():
    columns = parse_header((TEST_FILES / "MR_small.dcm").read_bytes()).columns
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    assert columns["sop_instance_uid"] == ds.SOPInstanceUID
    assert columns["pixel_spacing"] == [float(v) for v in ds.PixelSpacing]
    assert columns["rows"] == 64 and columns["number_of_frames"] == 1
    assert columns["plane"] == "AXIAL" and columns["modality"] == "MR"


def test_scout_series_holds_three_planes():
    folder = TEST_FILES / "dicomdirtests" / "98892003" / "MR2"
    planes = {parse_header(p.read_bytes()).columns["plane"] for p in folder.iterdir()}
    assert {"AXIAL", "CORONAL", "SAGITTAL"} <= planes


def test_enhanced_mr_splits_into_frames():
    data = (DATA_STORE / "emri_small.dcm").read_bytes()
    header = parse_header(data)
    frames = list(decode_frames(data))
    assert header.columns["number_of_frames"] == 10
    assert [f.frame_index for f in frames] == list(range(10))
    assert all(f.error is None and f.pixels.shape == (64, 64) for f in frames)


def test_monochrome1_is_inverted():
    path = DATA_STORE / "RG1_UNCR.dcm" if (DATA_STORE / "RG1_UNCR.dcm").exists() else TEST_FILES / "MR_small.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    [frame] = decode_frames(path.read_bytes(), max_decoded_bytes=256 << 20)
    stored = ds.pixel_array.astype(np.float32)
    hi = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(frame.pixels, hi - stored)


def test_rescale_is_applied():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    [frame] = decode_frames((TEST_FILES / "CT_small.dcm").read_bytes())
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(frame.pixels, expected)


def test_bad_inputs_fail_with_their_stage():
    mr = (TEST_FILES / "MR_small.dcm").read_bytes()
    for data in (b"", b"hello world\n" * 50, os.urandom(2048), mr[:200]):
        result = parse_header(data)
        assert result.error is not None and result.error.stage is Stage.HEADER
    [cut] = decode_frames(mr[: len(mr) * 2 // 3])
    assert cut.error is not None and cut.error.stage is Stage.PIXELS


def test_too_large_is_refused_before_decoding():
    [frame] = decode_frames((TEST_FILES / "MR_small.dcm").read_bytes(), max_decoded_bytes=1000)
    assert frame.error.error_class == "TooLarge" and frame.pixels is None


def test_header_json_is_capped_and_has_no_pixel_data():
    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    full = parse_header(data)
    assert "7FE00010" not in full.header_json and not full.header_json_truncated
    capped = parse_header(data, max_json_bytes=1024)
    assert capped.header_json_truncated and len(capped.header_json) <= 1024


@pytest.mark.parametrize("values", [[[0, 4095]], [[-1024, 3000]], [[0.5, 2.25]], [[0, 70000]]])
def test_encode_round_trip(values):
    array = np.asarray(values, dtype=np.float32)
    buf, dtype = encode_pixels(array)
    np.testing.assert_array_equal(decode_pixels(buf, dtype, *array.shape), array)
    assert dtype == {(0, 4095): "uint16", (-1024, 3000): "int16", (0, 70000): "int32"}.get(
        (values[0][0], values[0][1]), "float32"
    )


def test_truncated_multiframe_read_from_bytes():
    data = io.BytesIO((DATA_STORE / "emri_small.dcm").read_bytes()).getvalue()
    frames = list(decode_frames(data[: len(data) // 2]))
    assert frames[-1].error is not None
