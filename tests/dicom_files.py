"""Real DICOM test files (pydicom's and pydicom-data's) and the damaged files the tests make from them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import data_store
import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DATA_STORE = Path(data_store.__file__).parent / "data"
MR_SMALL = TEST_FILES / "MR_small.dcm"


def _saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def rle_with_a_cut_frame(index: int, *, entropy: str, pixel_spacing: list[float] | None = None) -> bytes:
    """pydicom-data's 10-frame RLE Enhanced MR with frame ``index`` cut short: earlier frames decode, it fails.

    Its SOPInstanceUID is made from ``entropy``; ``pixel_spacing`` (row, column mm) is added
    when given (the file has none).
    """
    ds = pydicom.dcmread(DATA_STORE / "emri_small_RLE.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[entropy])
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[index] = frames[index][:64]
    ds.PixelData = encapsulate(frames)
    return _saved(ds)


def pixels_cut(*, entropy: str) -> bytes:
    """MR_small under a SOPInstanceUID made from ``entropy``, cut two thirds of the way into its pixel data."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[entropy])
    data = _saved(ds)
    return data[: len(data) * 2 // 3]


def write_bad_files(bad: Path, *, entropy: str, frame_cut: bytes) -> None:
    """Files an ingest must quarantine, not fail on, into ``bad`` (created).

    An empty file, a text file, random bytes, a header cut short, pixel data cut short
    (:func:`pixels_cut`), ``frame_cut`` as ``frame5_cut.dcm`` and a zip with a member that
    escapes its folder beside a good one.
    """
    bad.mkdir()
    mr = MR_SMALL.read_bytes()
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "notes.txt").write_text("not a dicom file\n" * 20)
    (bad / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad / "header_cut.dcm").write_bytes(mr[:300])
    (bad / "pixels_cut.dcm").write_bytes(pixels_cut(entropy=entropy))
    (bad / "frame5_cut.dcm").write_bytes(frame_cut)
    with zipfile.ZipFile(bad / "evil.zip", "w") as zf:
        zf.writestr("../escape.dcm", mr)
        zf.writestr("ok/inside.dcm", (TEST_FILES / "CT_small.dcm").read_bytes())
