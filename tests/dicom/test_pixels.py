"""Frame decoding on pydicom's and pydicom-data's real files: codecs, rescale, MONOCHROME1, colour, limits."""

import ast
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest

from dicom_files import DATA_STORE, MR_SMALL, TEST_FILES
from radlake.dicom import pixels as pixels_module
from radlake.dicom.header import parse_header
from radlake.dicom.integrity import decoded_size_bytes
from radlake.dicom.pixels import (
    STORAGE_DTYPES,
    STORED_DTYPES,
    TRANSFORM_COLUMNS,
    FrameResult,
    decode_frames,
    encode_pixels,
    encoded_frames,
    frame_values,
    row_values,
    values_encoding,
)
from radlake.vocabulary import QuarantineStage

LIMIT = 64 << 20


def _one(path: Path, **kwargs) -> np.ndarray:
    frames = list(decode_frames(path.read_bytes(), **kwargs))
    assert len(frames) == 1 and frames[0].error is None, frames[0].error
    return frames[0].pixels


def test_every_real_file_decodes_or_fails_at_the_pixel_stage():
    decoded = failed = 0
    files = sorted([p for p in TEST_FILES.rglob("*") if p.is_file()] + [p for p in DATA_STORE.iterdir() if p.is_file()])
    for path in files:
        frames = list(decode_frames(path.read_bytes(), max_decoded_bytes=LIMIT))
        assert frames and all(isinstance(f, FrameResult) for f in frames)
        assert [f.frame_index for f in frames] == list(range(len(frames)))
        for frame in frames:
            if frame.error is None:
                assert frame.pixels.ndim == 2 and frame.pixels.dtype == np.float32
                assert np.isfinite(frame.pixels).all()
                decoded += 1
            else:
                assert frame.error.stage is QuarantineStage.PIXELS and frame.pixels is None
                assert frame is frames[-1]  # a failure ends the instance
                failed += 1
    assert decoded > 250 and failed > 40


@pytest.mark.parametrize(
    "variant",
    [
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
        "MR_small_padded.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_transfer_syntax_variants_decode_to_the_same_pixels(variant):
    np.testing.assert_array_equal(_one(TEST_FILES / variant), _one(MR_SMALL))


@pytest.mark.parametrize(
    "variant, plugin",
    [
        ("MR_small_RLE.dcm", "pylibjpeg"),
        ("MR_small_jpeg_ls_lossless.dcm", "pyjpegls"),
        ("MR_small_jp2klossless.dcm", "pylibjpeg"),
    ],
)
def test_the_preferred_plugin_decodes_each_syntax(variant, plugin, monkeypatch):
    ds = pydicom.dcmread(TEST_FILES / variant)
    assert pixels_module._plugin_order(ds)[0] == plugin
    used = []
    real = pydicom.pixels.iter_pixels
    monkeypatch.setattr(pydicom.pixels, "iter_pixels", lambda src, **kw: used.append(kw) or real(src, **kw))
    np.testing.assert_array_equal(_one(TEST_FILES / variant), _one(MR_SMALL))
    assert used[0] == {"decoding_plugin": plugin}


def test_a_failing_preferred_plugin_falls_back_to_the_next_one(monkeypatch):
    real = pixels_module._plugin_order
    monkeypatch.setattr(pixels_module, "_plugin_order", lambda ds: ["no-such-plugin", *real(ds)])
    np.testing.assert_array_equal(_one(TEST_FILES / "MR_small_RLE.dcm"), _one(MR_SMALL))


def test_gdcm_is_never_tried():
    syntaxes = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in _compressed_files()}
    assert len(syntaxes) >= 8
    for syntax in syntaxes:
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        order = pixels_module._plugin_order(ds)
        assert order and "gdcm" not in order, (syntax, order)


def test_a_syntax_with_only_gdcm_installed_is_a_clear_failure(monkeypatch):
    real = pydicom.pixels.decoders.base.get_decoder

    class OnlyGdcm:
        available_plugins = ("gdcm",)

    monkeypatch.setattr(
        pydicom.pixels.decoders.base,
        "get_decoder",
        lambda uid: OnlyGdcm() if uid == pydicom.uid.RLELossless else real(uid),
    )
    frames = list(decode_frames((TEST_FILES / "MR_small_RLE.dcm").read_bytes()))
    assert len(frames) == 1 and frames[0].pixels is None
    assert frames[0].error.error_class == "RuntimeError" and "gdcm" in frames[0].error.message


def _compressed_files() -> list[Path]:
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken files
            continue
        if "TransferSyntaxUID" in meta and meta.TransferSyntaxUID.is_compressed:
            found.append(path)
    return found


#: One byte of a pydicom test file changed (offset, new value), found by fuzzing. On each,
#: a decoder pydicom would use ends the process (GDCM: SIGABRT from a C++ exception thrown
#: through C) or raises a BaseException (pylibjpeg-rle: pyo3's PanicException).
HOSTILE_BYTES = [
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 1869, 65, "gdcm"),  # JPEG baseline
    ("SC_rgb_jls_lossy_line.dcm", 509, 84, "gdcm"),  # JPEG-LS near-lossless
    ("693_J2KI.dcm", 2076, 83, "gdcm"),  # JPEG 2000
    ("MR_small_RLE.dcm", 2769, 218, "pylibjpeg"),  # RLE
]

_DECODE = """
import sys
from pydicom.pixels import iter_pixels
import pydicom
from radlake.dicom.pixels import decode_frames
if sys.argv[2]:  # the bare plugin, as pydicom would call it: only a crash exits non-zero
    try:
        list(iter_pixels(pydicom.dcmread(sys.argv[1]), decoding_plugin=sys.argv[2]))
    except Exception:
        pass
    sys.exit(0)
data = open(sys.argv[1], "rb").read()
print([f.error.error_class if f.error else "ok" for f in decode_frames(data)])
"""


def _decode_in_a_child(path: Path, plugin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _DECODE, str(path), plugin], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name, offset, value, culprit", HOSTILE_BYTES)
def test_a_decoder_crash_on_one_corrupt_byte_is_the_files_failure_not_the_process(
    name, offset, value, culprit, tmp_path
):
    data = bytearray((TEST_FILES / name).read_bytes())
    assert data[offset] != value
    data[offset] = value
    path = tmp_path / name
    path.write_bytes(bytes(data))
    if (
        culprit
        in pydicom.pixels.decoders.base.get_decoder(
            pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        ).available_plugins
    ):  # the input is hostile: the bare plugin dies on it
        assert _decode_in_a_child(path, culprit).returncode != 0
    done = _decode_in_a_child(path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(results) == 1  # one frame: decoded by another plugin, or its failure


def test_mr_small_is_the_stored_values():
    expected = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(_one(MR_SMALL), expected)


def test_enhanced_mr_splits_into_ten_identical_frames_in_every_encoding():
    reference = None
    for name in (
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ):
        data = (DATA_STORE / name).read_bytes()
        frames = list(decode_frames(data, header=parse_header(data, deid=None)))
        assert [f.frame_index for f in frames] == list(range(10)) and all(f.error is None for f in frames), name
        stack = np.stack([f.pixels for f in frames])
        assert stack.shape == (10, 64, 64)
        if reference is None:
            reference = stack
            np.testing.assert_array_equal(stack, pydicom.dcmread(DATA_STORE / name).pixel_array)
        np.testing.assert_array_equal(stack, reference, err_msg=name)


def test_monochrome1_is_inverted_over_the_stored_range():
    ds = pydicom.dcmread(DATA_STORE / "RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" not in ds
    pixels = _one(DATA_STORE / "RG1_UNCR.dcm", max_decoded_bytes=LIMIT)
    np.testing.assert_array_equal(pixels, (2**ds.BitsStored - 1) - ds.pixel_array.astype(np.float32))
    np.testing.assert_array_equal(_one(DATA_STORE / "RG1_J2KR.dcm", max_decoded_bytes=LIMIT), pixels)


def test_rescale_gives_hounsfield_units():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    pixels = _one(TEST_FILES / "CT_small.dcm")
    np.testing.assert_array_equal(pixels, ds.pixel_array.astype(np.float32) - 1024)


def test_enhanced_ct_rescales_each_frame_from_its_functional_groups():
    ds = pydicom.dcmread(DATA_STORE / "eCT_Supplemental.dcm")
    assert "RescaleIntercept" not in ds
    frames = list(decode_frames((DATA_STORE / "eCT_Supplemental.dcm").read_bytes()))
    assert len(frames) == 2
    for frame, stored in zip(frames, ds.pixel_array, strict=True):
        np.testing.assert_array_equal(frame.pixels, stored.astype(np.float32) - 1024)


def test_modality_lut_is_applied():
    ds = pydicom.dcmread(DATA_STORE / "mlut_18.dcm")
    assert "ModalityLUTSequence" in ds
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    np.testing.assert_array_equal(_one(DATA_STORE / "mlut_18.dcm"), expected)


def test_colour_becomes_luma():
    ds = pydicom.dcmread(DATA_STORE / "SC_rgb.dcm")
    rgb = ds.pixel_array.astype(np.float32)
    expected = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    np.testing.assert_array_equal(_one(DATA_STORE / "SC_rgb.dcm"), expected)
    ybr = _one(TEST_FILES / "SC_ybr_full_422_uncompressed.dcm")  # converted to RGB by pydicom first
    assert ybr.shape == (100, 100) and np.abs(ybr - expected).max() <= 3
    palette = _one(DATA_STORE / "OT-PAL-8-face.dcm")  # PALETTE COLOR through its palette
    assert palette.shape == (480, 640) and palette.max() > 255  # 16-bit palette entries


def test_truncated_files_fail_at_the_pixel_stage():
    mr = MR_SMALL.read_bytes()
    [cut] = decode_frames(mr[: len(mr) // 2])
    assert cut.error is not None and cut.error.stage is QuarantineStage.PIXELS
    emri = (DATA_STORE / "emri_small.dcm").read_bytes()
    frames = list(decode_frames(emri[: len(emri) // 2]))
    assert frames[-1].error is not None and frames[-1].error.stage is QuarantineStage.PIXELS
    for data in (b"", b"not dicom at all" * 20):
        [frame] = decode_frames(data)
        assert frame.error.stage is QuarantineStage.PIXELS and frame.pixels is None


def test_no_pixel_data_is_a_failure():
    [frame] = decode_frames((TEST_FILES / "rtplan.dcm").read_bytes())
    assert frame.error.error_class == "NoPixelData"


def _claiming(rows: int, columns: int, frames: int) -> bytes:
    """MR_small whose header claims a huge image (the pixel data stays 8 KiB)."""
    import io

    ds = pydicom.dcmread(MR_SMALL)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_too_large_is_refused_before_decoding_or_allocating(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("decoding must not start")

    monkeypatch.setattr(pydicom.pixels, "iter_pixels", forbidden)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", forbidden)
    data = _claiming(65535, 65535, 1000)  # 8.6 TB if decoded
    header = parse_header(data, deid=None)
    tracemalloc.start()
    for given in (header, None):
        [frame] = decode_frames(data, header=given, max_decoded_bytes=1 << 30)
        assert (
            frame.error.error_class == "TooLarge"
            and frame.error.stage is QuarantineStage.PIXELS
            and frame.pixels is None
        )
        assert "8589672450000" in frame.error.message
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20
    [small_limit] = decode_frames(MR_SMALL.read_bytes(), max_decoded_bytes=1000)
    assert small_limit.error.error_class == "TooLarge"


def test_decoded_size():
    assert decoded_size_bytes(384, 384, 1, 1, 16) == 294912
    assert decoded_size_bytes(100, 100, None, 3, 8) == 30000
    assert decoded_size_bytes(10, 10, 4, 1, 1) == 400  # 1-bit data is unpacked to bytes


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([[0, 255]], "uint8"),
        ([[0, 4095]], "uint16"),
        ([[-1024, 3071]], "int16"),
        ([[0, 70000]], "int32"),
        ([[-40000, 1]], "int32"),
        ([[0.5, 2.25]], "float32"),
        ([[3e9, 0]], "float32"),
        ([[np.nan, 1]], "float32"),
        ([[np.inf, 1]], "float32"),
    ],
)
def test_encode_round_trip_is_exact(values, dtype):
    array = np.asarray(values, dtype=np.float32)
    buf, got = encode_pixels(array)
    assert got == dtype and got in STORAGE_DTYPES
    decoded = frame_values(buf, got, *array.shape)
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_encode_a_real_frame_compactly():
    pixels = _one(TEST_FILES / "CT_small.dcm")
    buf, dtype = encode_pixels(pixels)
    assert dtype == "int16" and len(buf) == pixels.size * 2
    np.testing.assert_array_equal(frame_values(buf, dtype, *pixels.shape), pixels)
    assert encode_pixels(np.zeros((0, 3), np.float32)) == (b"", "float32")
    assert encode_pixels(np.array([[1, 2]], dtype=np.uint16))[1] == "uint8"


def test_stored_frames_give_back_the_values_bit_for_bit_on_every_real_file():
    """encoded_frames keeps grey 8/16-bit frames as stored; frame_values gives exactly decode_frames' values."""
    files = sorted([p for p in TEST_FILES.rglob("*") if p.is_file()] + [p for p in DATA_STORE.iterdir() if p.is_file()])
    kept = as_values = 0
    for path in files:
        data = path.read_bytes()
        stored = list(encoded_frames(data, max_decoded_bytes=LIMIT))
        reference = list(decode_frames(data, max_decoded_bytes=LIMIT))
        outcome = [(f.frame_index, f.error and f.error.error_class) for f in stored]
        assert outcome == [(f.frame_index, f.error and f.error.error_class) for f in reference], path.name
        for frame, ref in zip(stored, reference, strict=True):
            if frame.error is not None:
                continue
            values = frame_values(frame.pixels, frame.dtype, frame.height, frame.width, **frame.transform)
            assert values.dtype == np.float32 and values.tobytes() == ref.pixels.tobytes(), path.name
            if frame.dtype in STORED_DTYPES:
                kept += 1
            else:  # the values themselves, and the row says so
                assert frame.dtype == "float32" and frame.transform == IDENTITY, path.name
                as_values += 1
    assert kept > 120 and as_values > 100  # 130 and 158 here (most of the latter colour)


IDENTITY = {"rescale_slope": 1.0, "rescale_intercept": 0.0, "invert": False, "bits_stored": None}


@pytest.mark.parametrize(
    ("path", "dtype", "transform"),
    [
        (MR_SMALL, "int16", (1.0, 0.0, False, 16)),
        (TEST_FILES / "CT_small.dcm", "int16", (1.0, -1024.0, False, 16)),
        (DATA_STORE / "MR2_UNCR.dcm", "uint16", (3.774114, 0.000061, False, 12)),
        (DATA_STORE / "RG1_UNCR.dcm", "uint16", (1.0, 0.0, True, 15)),
        (DATA_STORE / "RG3_J2KR.dcm", "uint16", (1.0, 0.0, True, 10)),
    ],
)
def test_grey_frames_are_stored_as_pydicom_gives_them(path, dtype, transform, monkeypatch):
    """The bytes are pixel_array's, the transform is the header's, and no float value is computed at ingest."""
    ds = pydicom.dcmread(path)
    computed = []
    real = pixels_module._linear_values
    monkeypatch.setattr(pixels_module, "_linear_values", lambda *a, **k: computed.append(1) or real(*a, **k))
    [frame] = encoded_frames(path.read_bytes(), max_decoded_bytes=LIMIT)
    assert frame.error is None and computed == []
    assert frame.dtype == dtype and tuple(frame.transform.values()) == transform
    assert frame.pixels == ds.pixel_array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def test_enhanced_frames_keep_each_frames_rescale():
    ds = pydicom.dcmread(DATA_STORE / "eCT_Supplemental.dcm")
    frames = list(encoded_frames((DATA_STORE / "eCT_Supplemental.dcm").read_bytes()))
    assert [(f.dtype, f.rescale_slope, f.rescale_intercept) for f in frames] == [("uint16", 1.0, -1024.0)] * 2
    for frame, stored in zip(frames, ds.pixel_array, strict=True):
        assert frame.pixels == stored.astype("<u2").tobytes()


@pytest.mark.parametrize(
    "path",
    [
        DATA_STORE / "SC_rgb.dcm",  # colour: its luma
        DATA_STORE / "OT-PAL-8-face.dcm",  # a palette
        DATA_STORE / "mlut_18.dcm",  # a Modality LUT: not linear
        TEST_FILES / "rtdose_1frame.dcm",  # 32-bit stored values
    ],
)
def test_frames_whose_values_are_not_their_stored_integers_are_stored_as_float32_values(path):
    [frame] = encoded_frames(path.read_bytes(), max_decoded_bytes=LIMIT)
    [reference] = decode_frames(path.read_bytes(), max_decoded_bytes=LIMIT)
    assert frame.dtype == "float32" and frame.transform == IDENTITY
    assert frame.pixels == reference.pixels.astype("<f4").tobytes()


def _saved(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", float_data: bool = False) -> bytes:
    """A one-frame MR file of ``pixels`` (integers in PixelData, or float32 in FloatPixelData)."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    if float_data:
        ds.FloatPixelData = pixels.astype("<f4").tobytes()
    else:
        ds.BitsStored, ds.HighBit = ds.BitsAllocated, ds.BitsAllocated - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_signed_8_bit_data_is_widened_and_float_data_kept_as_values():
    data = _saved(np.array([[-128, -1, 0, 127]], dtype=np.int8), photometric="MONOCHROME1")
    [frame], [reference] = encoded_frames(data), decode_frames(data)
    assert frame.dtype == "int16" and frame.invert and frame.bits_stored == 8
    values = frame_values(frame.pixels, frame.dtype, frame.height, frame.width, **frame.transform)
    assert values.tolist() == reference.pixels.tolist() == [[127.0, 0.0, -1.0, -128.0]]
    data = _saved(np.array([[0.5, -2.25, 1e6]], dtype=np.float32), float_data=True)
    [frame] = encoded_frames(data)
    assert frame.dtype == "float32" and frame.transform == IDENTITY
    assert frame_values(frame.pixels, "float32", 1, 3).tolist() == [[0.5, -2.25, 1e6]]


@pytest.mark.parametrize(
    "path",
    [TEST_FILES / "CT_small.dcm", DATA_STORE / "MR2_UNCR.dcm", DATA_STORE / "RG1_UNCR.dcm"],
)
def test_in_float64_the_values_are_pydicoms_modality_lut_bit_for_bit(path):
    ds = pydicom.dcmread(path)
    [frame] = encoded_frames(path.read_bytes(), max_decoded_bytes=LIMIT)
    expected = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # radlake's inversion over the stored range
        expected = (2**ds.BitsStored - 1) - expected
    got = frame_values(frame.pixels, frame.dtype, frame.height, frame.width, **frame.transform, float64=True)
    assert got.dtype == np.float64 and got.tobytes() == expected.tobytes()


def test_missing_transform_values_are_the_identity():
    """Rows written before the transform columns, crops and a model's input hold their values."""
    import pandas as pd

    buf = np.array([[3, 4]], dtype="<u2").tobytes()
    for missing in (None, float("nan"), pd.NA):
        values = frame_values(buf, "uint16", 1, 2, rescale_slope=missing, rescale_intercept=missing, invert=missing)
        assert values.tolist() == [[3.0, 4.0]]
    assert row_values({"pixels": buf, "dtype": "uint16", "height": 1, "width": 2}).tolist() == [[3.0, 4.0]]
    series = pd.Series({"pixels": buf, "dtype": "uint16", "height": 1, "width": 2, "rescale_slope": np.nan})
    assert row_values(series).tolist() == [[3.0, 4.0]]


def test_values_encoding_decodes_only_what_has_a_transform():
    row = {"pixels": np.array([[3, 4]], dtype="<u2").tobytes(), "dtype": "uint16", "height": 1, "width": 2}
    assert values_encoding(row)[0] is row["pixels"]
    assert values_encoding({**row, **IDENTITY})[0] is row["pixels"]
    shifted = {**row, "rescale_slope": 1.0, "rescale_intercept": -1024.0, "invert": False, "bits_stored": 12}
    buf, dtype = values_encoding(shifted)
    assert dtype == "int16" and frame_values(buf, dtype, 1, 2).tolist() == [[-1021.0, -1020.0]]
    flipped = {**row, "invert": True, "bits_stored": 12}
    buf, dtype = values_encoding(flipped)
    assert frame_values(buf, dtype, 1, 2).tolist() == row_values(flipped).tolist() == [[4092.0, 4091.0]]
    assert set(TRANSFORM_COLUMNS) == set(IDENTITY)


def test_encode_and_decode_check_their_arguments():
    with pytest.raises(ValueError, match="array"):
        encode_pixels(np.zeros((2, 2, 3)))
    with pytest.raises(TypeError, match="array"):
        encode_pixels(np.array([["a"]]))
    with pytest.raises(ValueError, match="dtype"):
        frame_values(b"\x00\x00", "float64", 1, 1)
    with pytest.raises(ValueError, match="buf"):
        frame_values(b"\x00\x00\x00", "uint16", 1, 1)
    with pytest.raises(ValueError, match="bits_stored"):
        frame_values(b"\x00\x00", "uint16", 1, 1, invert=True)
    with pytest.raises(ValueError, match="invert"):
        frame_values(b"\x00\x00\x00\x00", "float32", 1, 1, invert=True, bits_stored=12)
