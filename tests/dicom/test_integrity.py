"""Damaged instances caught in the header pass, on pydicom's real files and copies of them cut or altered."""

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_files import DATA_STORE, TEST_FILES
from radlake.dicom.header import parse_header, read_dataset
from radlake.dicom.integrity import Damage, native_pixel_bytes

LIMIT = 1 << 30


def _saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _after_pixels(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.get_item("PixelData")
    end = pixels.value_tell + (pixels.length if pixels.length != 0xFFFFFFFF else len(ds.PixelData) + 8)
    return data[end:]


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_every_cut_of_a_file_is_refused(name):
    """Cut anywhere (every 5th byte), the file is not DICOM or is damaged; never a sound instance."""
    data = (TEST_FILES / name).read_bytes()
    sound = parse_header(data, deid=None)
    assert sound.error is None and sound.columns["has_pixels"]
    accepted = []
    for cut in range(133, len(data), 5):
        result = parse_header(data[:cut], deid=None)
        if result.error is None:
            accepted.append(cut)
    # A cut exactly after the pixel data, where only trailing elements start, leaves a whole image.
    assert set(accepted) <= {len(data) - len(_after_pixels(data))}, accepted[:5]


def test_the_truncated_copy_names_the_declared_and_the_present_bytes():
    result = parse_header((TEST_FILES / "MR_truncated.dcm").read_bytes(), deid=None)
    assert result.error.error_class == Damage.TRUNCATED
    assert result.error.message == "the file ends inside the pixel data: 8192 bytes declared, 8130 present"
    assert result.sop_instance_uid == str(read_dataset((TEST_FILES / "MR_small.dcm").read_bytes()).SOPInstanceUID)


def test_native_pixel_data_shorter_than_its_dimensions_is_refused():
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.Rows = 128  # the header now claims twice the pixels stored
    result = parse_header(_saved(ds), deid=None)
    assert result.error.error_class == Damage.LENGTH
    assert "8192 bytes where 128 rows x 64 columns x 1 samples x 1 frames x 16 bits need 16384" in result.error.message


def test_dimensions_over_the_limit_are_refused_before_anything_is_allocated():
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 500
    data = _saved(ds)
    started = time.perf_counter()
    result = parse_header(data, deid=None, max_decoded_bytes=LIMIT)
    assert time.perf_counter() - started < 1.0  # nothing the size of 4 TB was touched
    assert result.error.error_class == Damage.TOO_LARGE
    assert f"= {65535 * 65535 * 500 * 2} bytes decoded, over ingest.max_decoded_bytes ({LIMIT})" in result.error.message


def test_encapsulated_pixel_data_with_fewer_fragments_than_frames_is_refused():
    ds = pydicom.dcmread(get_testdata_file("emri_small_RLE.dcm"))
    assert int(ds.NumberOfFrames) == 10
    ds.NumberOfFrames = 12
    result = parse_header(_saved(ds), deid=None)
    assert result.error.error_class == Damage.FRAGMENTS
    assert result.error.message == "encapsulated pixel data with 10 fragments for 12 declared frames"


def test_a_deflated_dataset_is_read_through_and_a_cut_one_refused():
    data = get_testdata_file("image_dfl.dcm", read=False)
    data = Path(data).read_bytes()
    sound = parse_header(data, deid=None)
    assert sound.error is None and sound.columns["has_pixels"] is True
    cut = parse_header(data[: len(data) - 100], deid=None)
    assert cut.error.error_class == Damage.TRUNCATED
    assert cut.error.message.startswith("the deflated dataset cannot be inflated")


def test_native_length_counts_bits_and_pads_to_even():
    assert native_pixel_bytes(64, 64, 1, 1, 16) == 8192
    assert native_pixel_bytes(3, 3, 1, 1, 1) == 2  # 9 bits -> 2 bytes
    assert native_pixel_bytes(3, 3, 3, 1, 8) == 28  # 27 bytes padded to even


def test_only_the_damaged_real_files_are_refused_as_damaged():
    """pydicom's and pydicom-data's files: the damaged ones are known; nothing else is called damaged."""
    damaged = {}
    for path in sorted([p for p in TEST_FILES.rglob("*") if p.is_file()] + list(DATA_STORE.iterdir())):
        result = parse_header(path.read_bytes(), deid=None)
        if result.error is not None and result.sop_instance_uid is not None:
            damaged[path.name] = result.error.error_class
    stripped = {name for name, error in damaged.items() if error == Damage.NO_PIXELS}
    assert len(stripped) == 50 and all(name.startswith("IM0000") for name in stripped)  # DICOMDIR test images
    assert {k: v for k, v in damaged.items() if k not in stripped} == {
        "MR_truncated.dcm": Damage.TRUNCATED,
        "emri_small_jpeg_2k_lossless_too_short.dcm": Damage.TRUNCATED,
        "rtplan_truncated.dcm": Damage.TRUNCATED,
    }
