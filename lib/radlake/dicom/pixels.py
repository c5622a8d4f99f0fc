"""Decoding frames one at a time, the modality transform, MONOCHROME1, and compact storage.

Decoding goes through pydicom's pixel pipeline and its plugins (pylibjpeg, pyjpegls,
GDCM) for RLE, JPEG, JPEG-LS and JPEG 2000. Each frame comes out as a ``(H, W)``
float32 array in the modality's units (RescaleSlope/Intercept or the Modality LUT
applied, per frame for enhanced images) and with MONOCHROME1 inverted so that higher
always means brighter: ``v' = lo + hi - v``, where ``lo``/``hi`` is the rescaled range
of the stored values (pydicom's ``apply_presentation_lut`` does not invert MONOCHROME1
without a PresentationLUTShape). Colour frames are converted to luminance
(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from radlake.dicom.sources import Failure, Stage

#: Storage dtypes of :func:`encode_pixels`, most compact first.
_INTEGER_DTYPES = ("uint8", "uint16", "int16", "int32")


@dataclass(frozen=True)
class FrameResult:
    """One decoded frame (``pixels``: ``(H, W)`` float32) or its failure."""

    frame_index: int
    pixels: np.ndarray | None = None
    error: Failure | None = None


def decoded_size_bytes(ds: Dataset) -> int:
    """Bytes the decoded pixel data of ``ds`` would take (all frames, stored sample size)."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    return rows * cols * frames * samples * max(1, (bits + 7) // 8)


def decode_frames(data: bytes, *, max_decoded_bytes: int = 1 << 30) -> Iterator[FrameResult]:
    """Decode every frame of one instance, one at a time.

    Parameters
    ----------
    data
        The instance's bytes.
    max_decoded_bytes
        If the decoded pixel data would be larger, one failure (``TooLarge``) is
        yielded and nothing is decoded.

    Yields
    ------
    FrameResult
        One per frame; a failure (stage ``pixels``) instead of raising.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
        size = decoded_size_bytes(ds)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            yield FrameResult(0, error=Failure(Stage.PIXELS, "NoPixelData", "the instance has no pixel data"))
            return
        if size > max_decoded_bytes:
            message = f"decoded pixels would take {size} bytes, limit {max_decoded_bytes}"
            yield FrameResult(0, error=Failure(Stage.PIXELS, "TooLarge", message))
            return
        frames = pydicom.pixels.iter_pixels(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        yield FrameResult(0, error=Failure.from_exception(Stage.PIXELS, exc))
        return
    index = 0
    while True:
        try:
            raw = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - a corrupt frame ends this instance
            yield FrameResult(index, error=Failure.from_exception(Stage.PIXELS, exc))
            return
        try:
            yield FrameResult(index, to_display_values(raw, ds, index))
        except Exception as exc:  # noqa: BLE001
            yield FrameResult(index, error=Failure.from_exception(Stage.PIXELS, exc))
        index += 1


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of one frame: per-frame or shared Pixel Value Transformation, else top level."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(container)
        if items and index < len(items):
            transform = items[index].get("PixelValueTransformationSequence")
            if transform:
                item = transform[0]
                return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def to_display_values(raw: np.ndarray, ds: Dataset, frame: int = 0) -> np.ndarray:
    """Stored values of one frame → ``(H, W)`` float32 modality values, MONOCHROME1 inverted.

    Parameters
    ----------
    raw
        One decoded frame: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB.
    ds
        The instance's dataset (rescale, modality LUT, photometric interpretation).
    frame
        Zero-based frame index (for per-frame rescale of enhanced images).
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if raw.ndim == 3:
        rgb = raw.astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    values = raw.astype(np.float32)
    if "ModalityLUTSequence" in ds:
        values = np.asarray(pydicom.pixels.apply_modality_lut(raw, ds), dtype=np.float32)
        lut = ds.ModalityLUTSequence[0]
        lo, hi = float(np.min(lut.LUTData)), float(np.max(lut.LUTData))
    else:
        slope, intercept = _rescale(ds, frame)
        if slope != 1.0 or intercept != 0.0:
            values = values * np.float32(slope) + np.float32(intercept)
        bits = int(ds.get("BitsStored", 16) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        stored_lo, stored_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        lo, hi = sorted((stored_lo * slope + intercept, stored_hi * slope + intercept))
    if photometric == "MONOCHROME1":
        values = np.float32(lo + hi) - values
    return values


def encode_pixels(pixels: np.ndarray) -> tuple[bytes, str]:
    """Compact little-endian bytes of a ``(H, W)`` frame and the dtype name to read them back.

    Integral values are stored in the smallest integer dtype that holds them exactly
    (``uint8``, ``uint16``, ``int16``, ``int32``); anything else as ``float32``.

    >>> encode_pixels(np.array([[0.0, 4095.0]], dtype=np.float32))[1]
    'uint16'
    """
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise ValueError(f"Argument 'pixels' must have shape (H, W), got {array.shape}.")
    if array.size and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
        lo, hi = float(array.min()), float(array.max())
        for name in _INTEGER_DTYPES:
            info = np.iinfo(name)
            if info.min <= lo and hi <= info.max:
                return array.astype(np.dtype(name).newbyteorder("<")).tobytes(), name
    return array.astype("<f4").tobytes(), "float32"


def decode_pixels(buf: bytes, dtype: str, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_pixels`: a ``(height, width)`` float32 array."""
    if dtype not in (*_INTEGER_DTYPES, "float32"):
        raise ValueError(f"Argument 'dtype' must be one of {(*_INTEGER_DTYPES, 'float32')}, got {dtype!r}.")
    array = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != height * width:
        raise ValueError(f"{array.size} values do not make a ({height}, {width}) frame.")
    return array.reshape(height, width).astype(np.float32)
