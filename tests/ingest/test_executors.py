"""The pixel pass's per-file work (no Spark): compressed data is decoded in the sandbox, and its crash is one file's failure."""

from __future__ import annotations

import ctypes
import hashlib
import time
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radlake.dicom import sandbox
from radlake.dicom.pixels import encoded_frames, row_values
from radlake.ingest.executors import PixelSettings, _pixel_batches

TEST_FILES = Path(get_testdata_file("MR_small.dcm")).parent
HERE = __name__  # imported by name in the sandbox's child: pytest puts this folder on sys.path


def segfault_or_hang_on_comment(data: bytes, max_decoded_bytes: int):
    """The real decoding, except for files whose ImageComments ask for a crash or a hang."""
    if b"SEGFAULT-HERE" in data:
        ctypes.string_at(0)
    if b"HANG-HERE" in data:
        time.sleep(600)
    yield from encoded_frames(data, max_decoded_bytes=max_decoded_bytes)


def _copy(tmp_path: Path, name: str, comment: str | None = None) -> Path:
    ds = pydicom.dcmread(TEST_FILES / name)
    if comment:
        ds.ImageComments = comment
    out = tmp_path / f"{comment or 'plain'}-{name}"
    ds.save_as(out)
    return out


def _record(path: Path) -> dict:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {
        "path": str(path),
        "member": None,
        "content_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "sop_instance_uid": f"{ds.SOPInstanceUID}.{path.name}",
        "series_key": "k",
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "plane": "AXIAL",
        "pixel_spacing": [0.3, 0.3],
        "slice_indices": [0],
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
    }


def _rows(paths: list[Path], settings: PixelSettings) -> list[dict]:
    groups = [[_record(p)] for p in paths]
    return [row for batch in _pixel_batches(groups, settings) for row in batch.to_pylist()]


@pytest.fixture
def crashing_sandbox(monkeypatch):
    """The executors' shared sandbox, running :func:`segfault_or_hang_on_comment`; records each use."""
    boxes: list[sandbox.Sandbox] = []
    calls: list[str] = []

    def shared(target, *, timeout_s, memory_headroom_bytes=None):
        assert target == "radlake.dicom.pixels:encoded_frames"
        calls.append(target)
        if not boxes:
            boxes.append(sandbox.Sandbox(f"{HERE}:segfault_or_hang_on_comment", timeout_s=timeout_s))
        return boxes[0]

    monkeypatch.setattr(sandbox, "shared_sandbox", shared)
    yield calls
    for box in boxes:
        box.close()


def test_a_decoder_crash_fails_that_file_and_the_next_files_decode(tmp_path, crashing_sandbox):
    files = [
        _copy(tmp_path, "MR_small_jp2klossless.dcm"),
        _copy(tmp_path, "MR_small_RLE.dcm", comment="SEGFAULT-HERE"),
        _copy(tmp_path, "MR_small_jpeg_ls_lossless.dcm"),
    ]
    rows = _rows(files, PixelSettings(max_member_bytes=1 << 30, max_decoded_bytes=1 << 30))
    assert [(r["path"], r["kind"]) for r in rows] == [
        (str(files[0]), "image"),
        (str(files[1]), "failure"),
        (str(files[2]), "image"),
    ]
    failure = rows[1]
    assert failure["stage"] == "pixels" and failure["frame_index"] == 0
    assert failure["error_class"] == "DecoderCrashed" and "SIGSEGV" in failure["error_message"]
    expected = pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array
    for row in (rows[0], rows[2]):
        assert row["dtype"] == "int16" and row["pixels"] == expected.astype("<i2").tobytes()  # as stored
        np.testing.assert_array_equal(row_values(row), expected)
    assert len(crashing_sandbox) == 3  # every compressed file went through the sandbox


def test_a_hung_decoder_is_killed_and_the_file_quarantined(tmp_path, crashing_sandbox):
    files = [_copy(tmp_path, "MR_small_RLE.dcm", comment="HANG-HERE"), _copy(tmp_path, "MR_small_RLE.dcm")]
    settings = PixelSettings(max_member_bytes=1 << 30, max_decoded_bytes=1 << 30, decode_timeout_s=2.0)
    started = time.monotonic()
    rows = _rows(files, settings)
    assert time.monotonic() - started < 60
    assert [r["kind"] for r in rows] == ["failure", "image"]
    assert rows[0]["error_class"] == "DecoderTimeout"


def test_uncompressed_data_and_isolate_decoders_off_decode_in_the_worker(tmp_path, crashing_sandbox):
    plain = _copy(tmp_path, "MR_small.dcm", comment="SEGFAULT-HERE")  # explicit VR: never sandboxed
    rows = _rows([plain], PixelSettings(max_member_bytes=1 << 30, max_decoded_bytes=1 << 30))
    assert [r["kind"] for r in rows] == ["image"] and crashing_sandbox == []
    rle = _copy(tmp_path, "MR_small_RLE.dcm")
    off = PixelSettings(max_member_bytes=1 << 30, max_decoded_bytes=1 << 30, isolate_decoders=False)
    assert [r["kind"] for r in _rows([rle], off)] == ["image"] and crashing_sandbox == []


class _Counter:
    """Stands in for a Spark accumulator: ``add`` only."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, amount: int) -> None:
        self.value += amount


def test_counts_give_the_image_rows_and_the_instances_short_of_their_frames(tmp_path):
    whole = tmp_path / "emri_small.dcm"  # pydicom-data's enhanced MR: 10 frames, uncompressed
    whole.write_bytes((Path(data_store.__file__).parent / "data" / "emri_small.dcm").read_bytes())
    cut = tmp_path / "cut-emri_small.dcm"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])  # truncated pixel data: a failure, no frame
    changed = _copy(tmp_path, "MR_small.dcm")
    records = [_record(whole), _record(cut), _record(changed)]
    for record, frames in zip(records, (10, 10, 1), strict=True):
        record["expected_frames"] = frames
    changed.write_bytes(changed.read_bytes() + b"\0\0")  # no longer the instance that was parsed
    counts = (_Counter(), _Counter())
    settings = PixelSettings(max_member_bytes=1 << 30, max_decoded_bytes=1 << 30)
    rows = [row for batch in _pixel_batches([records[:2], records[2:]], settings, counts) for row in batch.to_pylist()]
    images = [r for r in rows if r["kind"] == "image"]
    assert {r["path"] for r in images} == {str(whole)} and len(images) == 10
    assert {r["path"]: r["error_class"] for r in rows if r["kind"] == "failure"}.get(str(changed)) == "SourceChanged"
    assert any(r["kind"] == "failure" and r["path"] == str(cut) for r in rows)
    assert (counts[0].value, counts[1].value) == (len(images), 2)
    counts = (_Counter(), _Counter())
    assert len([r for b in _pixel_batches([records[:1]], settings, counts) for r in b.to_pylist()]) == 10
    assert (counts[0].value, counts[1].value) == (10, 0)
