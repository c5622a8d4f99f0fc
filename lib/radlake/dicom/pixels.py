"""Decoding frames one at a time, the modality transform, MONOCHROME1, colour, and storage.

Decoding goes through pydicom's pixel pipeline and its plugins (pylibjpeg, pyjpegls,
Pillow; RLE built in) for every transfer syntax they support, trying first the plugin
of :data:`PREFERRED_DECODERS` (the cheapest one measured here) and then the others in
pydicom's order, never GDCM (:data:`UNSAFE_DECODERS`). A decoder's error on one
frame, even a Rust panic, is that frame's failure, never the caller's exception. What
no exception reports (a segfault, an abort, an endless loop in native code) is caught
by running :func:`encoded_frames` in a :class:`radlake.dicom.sandbox.Sandbox`, as the
ingest pixel pass does for compressed data. A frame's *values*, what every reader of
radlake sees, are ``(H, W)`` float32 modality values:

- **Modality transform**: the Modality LUT Sequence if present, else RescaleSlope and
  RescaleIntercept, taken per frame for enhanced images (the Pixel Value
  Transformation Sequence of the frame's functional group, else the shared group),
  else from the top level; none for float pixel data.
- **MONOCHROME1 is inverted** so that higher values are always brighter:
  ``v' = lo + hi - v``, where ``[lo, hi]`` is the range that the stored values can
  take after the modality transform (the bits-stored range, rescaled; or
  ``[0, 2**bits - 1]`` for a Modality LUT of ``bits``-bit entries). pydicom's
  ``apply_presentation_lut`` does not do this without a PresentationLUTShape.
- **Colour is converted to grey**, not refused: RGB (and YBR, converted to RGB by
  pydicom) and PALETTE COLOR (through its palette) become the rounded luma
  ``round(0.299 R + 0.587 G + 0.114 B)`` of ITU-R BT.601, in the stored range.
  ``photometric_interpretation`` in the header tells colour images apart.

:func:`decode_frames` gives those values. The ``images`` table stores a frame *as
stored* instead (:func:`encoded_frames`): the bytes of pydicom's ``pixel_array``
(``uint8``, ``uint16`` or ``int16``, :data:`STORED_DTYPES`) with the frame's
``rescale_slope``, ``rescale_intercept``, ``invert`` (MONOCHROME1) and ``bits_stored``
(:data:`TRANSFORM_COLUMNS`), half the bytes of float32 for 16-bit data. A frame whose
values are not its stored integers through a linear rescale (float pixel data, colour,
a Modality LUT, 32-bit or other non-16-bit decoder output, or MONOCHROME1 whose decoded
sign disagrees with PixelRepresentation) is stored as its float32 values, with slope 1,
intercept 0, no inversion and no ``bits_stored``: ``dtype`` ``float32`` says so.

Every reader turns a stored frame into its values through one function,
:func:`frame_values` (:func:`row_values` for a row), which gives exactly the values of
:func:`decode_frames`. A row without the transform columns (an ``images`` table written
before they existed, a crop, a model's input) holds its values already: they read as
slope 1, intercept 0, no inversion. :func:`encode_pixels` stores values in the smallest
exact dtype (crops, a model's input: :func:`values_encoding`).

Example
-------
>>> from pydicom.data import get_testdata_file
>>> data = open(get_testdata_file("CT_small.dcm"), "rb").read()
>>> [frame] = decode_frames(data)
>>> frame.pixels.shape, frame.pixels.dtype, float(frame.pixels.min()) < 0  # Hounsfield units
((128, 128), dtype('float32'), True)
>>> [stored] = encoded_frames(data)
>>> stored.dtype, stored.rescale_slope, stored.rescale_intercept, stored.invert
('int16', 1.0, -1024.0, False)
>>> values = frame_values(stored.pixels, stored.dtype, stored.height, stored.width,
...                       rescale_slope=stored.rescale_slope, rescale_intercept=stored.rescale_intercept)
>>> bool((values == frame.pixels).all())
True

"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from radlake.dicom.header import HeaderResult, read_dataset
from radlake.dicom.integrity import decoded_size_bytes
from radlake.dicom.sources import Failure
from radlake.vocabulary import QuarantineStage

#: Storage dtypes of :func:`encode_pixels`, in the order tried (little-endian on disk): every
#: ``dtype`` an ``images`` row (of this version or an earlier one), a crop or a model's input holds.
STORAGE_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
_INTEGER_DTYPES = STORAGE_DTYPES[:-1]
#: dtypes in which :func:`encoded_frames` keeps a frame as stored (pydicom's ``pixel_array``; signed
#: 8-bit data is widened to ``int16``, the same values); any other frame is stored as float32 values.
STORED_DTYPES = ("uint8", "uint16", "int16")
#: The columns beside ``pixels``, ``dtype``, ``height`` and ``width`` that turn a stored frame into its
#: values (:func:`frame_values`): ``rescale_slope`` (modality units per stored unit), ``rescale_intercept``
#: (modality units), ``invert`` (MONOCHROME1: flipped within the stored range) and ``bits_stored`` (that
#: range: ``[0, 2**bits - 1]``, or ``[-2**(bits - 1), 2**(bits - 1) - 1]`` for a signed ``dtype``).
TRANSFORM_COLUMNS = ("rescale_slope", "rescale_intercept", "invert", "bits_stored")
#: Every column :func:`row_values` reads.
VALUE_COLUMNS = ("pixels", "dtype", "height", "width", *TRANSFORM_COLUMNS)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_LUMA = (0.299, 0.587, 0.114)

#: Decoding plugin tried first per transfer syntax. pydicom otherwise takes the first
#: available plugin in its own order, which for RLE is its pure-numpy decoder. Chosen by
#: CPU time per 384x384 16-bit frame with every core busy (2 processes on 2 cores, as
#: Spark executors run), not by one process's wall time: RLE pylibjpeg-rle 2.1 ms vs
#: pydicom 11 ms; JPEG-LS pyjpegls 5.4-6.7 ms vs GDCM 12 ms vs pylibjpeg 20 ms; JPEG 2000
#: pylibjpeg-openjpeg 34-38 ms vs GDCM 39-43 ms. GDCM decodes JPEG 2000 on every core
#: (26 ms wall but 43 ms CPU for one frame in one idle process), which only adds
#: contention when each core already decodes its own file. All are lossless-exact here.
#: Plugins never used: GDCM ends the process on some corrupt JPEG, JPEG-LS and JPEG 2000
#: data (SIGABRT, seen here by fuzzing pydicom's test files), see :func:`_plugin_order`.
UNSAFE_DECODERS = frozenset({"gdcm"})

PREFERRED_DECODERS: dict[str, str] = {
    RLELossless: "pylibjpeg",
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
}


#: Decoding time per pixel by transfer syntax, relative to uncompressed data, measured here
#: on 384x384 16-bit MR frames with the plugins of :data:`PREFERRED_DECODERS`, CPU time with
#: both cores decoding (per frame: JPEG 2000 lossless 36-40 ms, JPEG-LS 7.6 ms, RLE 2.5 ms,
#: uncompressed 1.6 ms, including the modality transform and storage encoding, before integer
#: frames skipped the float32 round trip, which saves ~0.5 ms a frame in every syntax). Other
#: compressed syntaxes count as JPEG-LS.
RELATIVE_DECODE_COST: dict[str, float] = {
    JPEG2000Lossless: 23.5,
    JPEG2000: 23.5,
    JPEGLSLossless: 4.7,
    JPEGLSNearLossless: 4.7,
    RLELossless: 1.5,
}
_UNCOMPRESSED_NS_PER_PIXEL = 11.0  # 1.6 ms per 384 x 384 frame
_INSTANCE_OVERHEAD_NS = 1.5e6  # reading, hashing and parsing one instance again


def decode_cost(transfer_syntax_uid: str | None, pixel_count: int | None) -> float:
    """Expected seconds to decode an instance of ``pixel_count`` pixels (all frames) here, one core.

    Used to balance decoding tasks, not as a promise: a JPEG 2000 instance costs far
    more per byte than an uncompressed one.

    >>> round(decode_cost("1.2.840.10008.1.2.1", 384 * 384), 4)  # Explicit VR Little Endian
    0.0031
    >>> round(decode_cost("1.2.840.10008.1.2.4.90", 384 * 384), 4)  # JPEG 2000 lossless
    0.0396
    """
    from pydicom.uid import UID

    syntax = str(transfer_syntax_uid or "")
    factor = RELATIVE_DECODE_COST.get(syntax)
    if factor is None:
        try:
            compressed = bool(syntax) and UID(syntax).is_compressed
        except ValueError:  # not a transfer syntax UID: assume the worst common case
            compressed = True
        factor = 4.7 if compressed else 1.0
    return (_INSTANCE_OVERHEAD_NS + factor * _UNCOMPRESSED_NS_PER_PIXEL * max(0, int(pixel_count or 0))) * 1e-9


@dataclass(frozen=True)
class FrameResult:
    """One decoded frame or its failure.

    Attributes
    ----------
    frame_index: int
        Zero-based frame number in the instance (0 for single-frame images, and for
        a failure of the whole instance).
    pixels: numpy.ndarray | None
        ``(H, W)`` float32 modality values (see the module docstring); None on failure.
    error: Failure | None
        Stage ``pixels`` failure; None on success.
    """

    frame_index: int
    pixels: np.ndarray | None = None
    error: Failure | None = None


def _too_large(size: int, limit: int) -> tuple[int, None, Failure]:
    message = f"decoded pixels would take {size} bytes, limit {limit}"
    return 0, None, Failure(QuarantineStage.PIXELS, "TooLarge", message)


def _ints(ds: Dataset, *keywords: str) -> list[int | None]:
    out: list[int | None] = []
    for keyword in keywords:
        try:
            value = ds.get(keyword)
            out.append(int(value) if value not in (None, "") else None)
        except Exception:  # noqa: BLE001
            out.append(None)
    return out


def decode_frames(
    data: bytes, *, header: HeaderResult | None = None, max_decoded_bytes: int = 1 << 30
) -> Iterator[FrameResult]:
    """Decode the frames of one instance, one at a time; never raises.

    Parameters
    ----------
    data: bytes
        The instance's bytes (as given to :func:`radlake.dicom.header.parse_header`).
    header: HeaderResult | None
        Its parsed header, if at hand: the size check then runs on its columns
        before the file is parsed again.
    max_decoded_bytes: int
        Limit on :func:`~radlake.dicom.integrity.decoded_size_bytes` of the whole instance: larger instances
        give one ``TooLarge`` failure and nothing is decoded or allocated.

    Yields
    ------
    FrameResult
        One per frame, in frame order, with ``(H, W)`` float32 pixels; or a failure
        (stage ``pixels``): ``TooLarge``, ``NoPixelData``, the decoder's error. A
        frame that fails to decode ends the instance (later frames are not tried).
    """
    for index, pixels, error in _frames(data, header, max_decoded_bytes, as_stored=False):
        yield FrameResult(index, pixels, error)


@dataclass(frozen=True)
class _Stored:
    """One frame as stored (pydicom's ``pixel_array``, 8- or 16-bit grey) and what turns it into its values."""

    array: np.ndarray
    rescale_slope: float
    rescale_intercept: float
    invert: bool
    bits_stored: int


#: One frame of :func:`_frames`: its index, its values (or, as stored, a :class:`_Stored`), or its failure.
_Frame = tuple[int, np.ndarray | _Stored | None, Failure | None]


def _frames(data: bytes, header: HeaderResult | None, max_decoded_bytes: int, *, as_stored: bool) -> Iterator[_Frame]:
    """:func:`decode_frames` as ``(index, pixels, failure)``; with ``as_stored`` a frame that
    :class:`_Transform` can keep as stored comes out as a :class:`_Stored` (no float values
    computed), any other frame as its float32 values.
    """
    if header is not None and header.error is None and header.columns.get("rows") is not None:
        c = header.columns
        size = decoded_size_bytes(
            c.get("rows"),
            c.get("columns"),
            c.get("number_of_frames"),
            c.get("samples_per_pixel"),
            c.get("bits_allocated"),
        )
        if size > max_decoded_bytes:
            yield _too_large(size, max_decoded_bytes)
            return
    try:
        ds = read_dataset(data, stop_before_pixels=False)
        if 0x00080018 not in ds:  # SOPInstanceUID: pydicom gives up silently on some corrupt pixel data
            message = "the instance could not be read in full (corrupt or truncated data)"
            yield 0, None, Failure(QuarantineStage.PIXELS, "InvalidDicomError", message)
            return
        if not any(tag in ds for tag in _PIXEL_TAGS):
            yield 0, None, Failure(QuarantineStage.PIXELS, "NoPixelData", "the instance has no pixel data")
            return
        size = decoded_size_bytes(*_ints(ds, "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated"))
        if size > max_decoded_bytes:
            yield _too_large(size, max_decoded_bytes)
            return
        _ensure_transfer_syntax(ds)
        frames = _iter_frames(ds)
        transform = _Transform(ds)
    except Exception as exc:  # noqa: BLE001 - anything wrong with this file is its failure
        yield 0, None, Failure.from_exception(QuarantineStage.PIXELS, exc)
        return
    index = 0
    while True:
        try:
            raw = next(frames)
        except StopIteration:
            return
        except BaseException as exc:  # noqa: BLE001 - a corrupt frame ends this instance
            _reraise_if_not_a_decoder_error(exc)
            yield index, None, Failure.from_exception(QuarantineStage.PIXELS, exc)
            return
        try:
            result = transform(raw, index, as_stored=as_stored)
        except Exception as exc:  # noqa: BLE001
            yield index, None, Failure.from_exception(QuarantineStage.PIXELS, exc)
            return
        yield index, result, None
        index += 1


def _reraise_if_not_a_decoder_error(exc: BaseException) -> None:
    """Re-raise interpreter signals; anything else a decoder raised is the file's failure.

    Decoders written in Rust (pylibjpeg-rle) raise pyo3's ``PanicException`` on some
    corrupt data. It derives from ``BaseException``, so ``except Exception`` would let one
    bad file end the Spark task and the whole run.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def _iter_frames(ds: Dataset) -> Iterator[np.ndarray]:
    """pydicom's frames of ``ds``, one at a time (``(H, W)`` or ``(H, W, samples)``).

    The plugins of :func:`_plugin_order` are tried in turn until one decodes the first
    frame; that one decodes the rest.
    """
    from pydicom.pixels import iter_pixels, pixel_array  # the pixel pipeline loads its plugins on first use

    plugins = _plugin_order(ds)
    for attempt, plugin in enumerate(plugins):
        frames = iter_pixels(ds, decoding_plugin=plugin)
        index = 0
        while True:
            try:
                array = next(frames)
            except StopIteration:
                return
            except BaseException as exc:  # noqa: BLE001
                _reraise_if_not_a_decoder_error(exc)
                if index == 0 and attempt + 1 < len(plugins):
                    break  # this plugin cannot do this file: the next one
                # pydicom 3.0's frame iterator fails on some files that its indexed path decodes
                # (sign correction of a read-only buffer, J2K_pixelrep_mismatch.dcm): go on frame
                # by frame; if that fails too, its error is this frame's failure.
                count = max(1, _ints(ds, "NumberOfFrames")[0] or 1)
                for i in range(index, count):
                    yield pixel_array(ds, index=i, decoding_plugin=plugin)
                return
            yield array
            index += 1


def _plugin_order(ds: Dataset) -> list[str]:
    """Decoding plugins to try for ``ds``: the preferred one, then pydicom's order, never GDCM.

    ``[""]`` (pydicom's own choice) for syntaxes without plugins: uncompressed data, or a
    syntax with no plugin installed, for which pydicom names what is missing. GDCM is
    left out because on corrupt JPEG, JPEG-LS and JPEG 2000 data it can end the process
    (a C++ exception thrown through C code calls ``std::terminate``: SIGABRT), which would
    end the Spark task and the run; every syntax it decodes has another plugin here
    (pylibjpeg, pyjpegls, Pillow).

    Raises
    ------
    RuntimeError
        If the only plugins installed for the syntax are in :data:`UNSAFE_DECODERS`.
    """
    from pydicom.pixels.decoders.base import get_decoder

    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        installed = list(get_decoder(syntax).available_plugins)
    except Exception:  # noqa: BLE001 - no decoder for this syntax: pydicom reports that itself
        return [""]
    available = [p for p in installed if p not in UNSAFE_DECODERS]
    if installed and not available:
        raise RuntimeError(
            f"transfer syntax {syntax} has no installed decoder but {installed}, which radlake does not use "
            "(it can end the process on corrupt data): install pylibjpeg, pyjpegls or Pillow"
        )
    preferred = PREFERRED_DECODERS.get(syntax, "")
    order = [preferred] if preferred in available else []
    order += [p for p in available if p != preferred]
    return order or [""]


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without file meta the transfer syntax it was read with."""
    meta = ds.file_meta
    if "TransferSyntaxUID" in meta and str(meta.TransferSyntaxUID).strip():
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        raise ValueError("the transfer syntax is unknown (no file meta information)")
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def _number(item: Dataset | None, keyword: str, default: float) -> float:
    try:
        value = item.get(keyword) if item is not None else None
        number = float(value) if value not in (None, "") else default
    except Exception:  # noqa: BLE001 - a malformed slope is treated as absent
        return default
    return number if math.isfinite(number) else default


class _Transform:
    """Stored values of one frame → ``(H, W)`` float32 modality values (see the module docstring)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        self.float_data = "PixelData" not in ds
        self.lut = "ModalityLUTSequence" in ds
        self.bits = _ints(ds, "BitsStored")[0] or _ints(ds, "BitsAllocated")[0] or 16
        self.signed = _ints(ds, "PixelRepresentation")[0] == 1
        try:
            self.per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
            shared = ds.get("SharedFunctionalGroupsSequence")
            self.shared = shared[0] if shared else None
        except Exception:  # noqa: BLE001
            self.per_frame, self.shared = [], None

    def rescale(self, frame: int) -> tuple[float, float]:
        """(slope, intercept) of one frame: its functional group, the shared group, else the top level."""
        groups = [self.per_frame[frame] if frame < len(self.per_frame) else None, self.shared]
        for group in groups:
            try:
                items = group.get("PixelValueTransformationSequence") if group is not None else None
            except Exception:  # noqa: BLE001
                items = None
            if items:
                return _number(items[0], "RescaleSlope", 1.0), _number(items[0], "RescaleIntercept", 0.0)
        return _number(self.ds, "RescaleSlope", 1.0), _number(self.ds, "RescaleIntercept", 0.0)

    def __call__(self, raw: np.ndarray, frame: int, *, as_stored: bool = False) -> np.ndarray | _Stored:
        """The frame's float32 values; with ``as_stored``, the frame as stored where :meth:`stored` keeps it."""
        if as_stored:
            stored = self.stored(raw, frame)
            if stored is not None:
                return stored
        if raw.ndim == 2 and self.photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            raw = apply_color_lut(raw, self.ds)
        if raw.ndim == 3:  # RGB (YBR is converted to RGB by pydicom): luma, rounded
            rgb = raw.astype(np.float32)
            return np.rint(rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2])
        if raw.ndim != 2:
            raise ValueError(f"a decoded frame must have shape (H, W) or (H, W, 3), got {raw.shape}")
        if self.float_data:
            return raw.astype(np.float32)
        if self.lut:
            from pydicom.pixels import apply_modality_lut

            values = np.asarray(apply_modality_lut(raw, self.ds), dtype=np.float32)
            if self.photometric == "MONOCHROME1":  # the LUT's outputs are 0 .. 2**bits - 1
                bits = int(self.ds.ModalityLUTSequence[0].LUTDescriptor[2])
                values = np.float32(2**bits - 1) - values
            return values
        slope, intercept = self.rescale(frame)
        invert_bits = self.bits if self.photometric == "MONOCHROME1" else None
        return _linear_values(raw, slope, intercept, invert_bits, self.signed)

    def stored(self, raw: np.ndarray, frame: int) -> _Stored | None:
        """The frame as stored, or None where its values are not its stored integers through a linear rescale.

        Kept: grey 8- or 16-bit integer frames (:data:`STORED_DTYPES`; ``int8`` widened to
        ``int16``) without a Modality LUT or a palette. Not kept: float pixel data,
        colour, a Modality LUT, other decoder outputs, and MONOCHROME1 whose decoded
        sign disagrees with PixelRepresentation (the inversion range comes from the
        latter; :func:`frame_values` takes it from the dtype).
        """
        if raw.ndim != 2 or self.float_data or self.lut or self.photometric == "PALETTE COLOR":
            return None
        if raw.dtype == np.int8:
            raw = raw.astype(np.int16)
        if raw.dtype.name not in STORED_DTYPES:
            return None
        invert = self.photometric == "MONOCHROME1"
        if invert and self.signed != (raw.dtype.kind == "i"):
            return None
        slope, intercept = self.rescale(frame)
        return _Stored(raw, slope, intercept, invert, self.bits)


def _linear_values(
    stored: np.ndarray,
    slope: float,
    intercept: float,
    invert_bits: int | None,
    signed: bool,
    dtype: type[np.floating] = np.float32,
) -> np.ndarray:
    """``stored * slope + intercept`` in ``dtype``; with ``invert_bits``, flipped within the rescaled range
    of ``invert_bits``-bit stored values (signed or not). The one arithmetic of :class:`_Transform` and
    :func:`frame_values`: the same operations in the same order, so the same float32 values.
    """
    values = stored.astype(dtype)
    if slope != 1.0 or intercept != 0.0:
        values = values * dtype(slope) + dtype(intercept)
    if invert_bits is not None:
        stored_range = (-(2 ** (invert_bits - 1)), 2 ** (invert_bits - 1) - 1) if signed else (0, 2**invert_bits - 1)
        lo, hi = sorted(v * slope + intercept for v in stored_range)
        values = dtype(lo + hi) - values
    return values


def encode_pixels(array: np.ndarray) -> tuple[bytes, str]:
    """Compact little-endian bytes of one ``(H, W)`` frame, and the dtype name to read them back.

    Integral values are stored in the first of ``uint8``, ``uint16``, ``int16``,
    ``int32`` that holds them all; anything else (fractions, NaN, infinities) as
    ``float32``. Decoding with :func:`decode_pixels` gives back the float32 values exactly.

    Parameters
    ----------
    array: numpy.ndarray
        Shape (H, W), any real dtype (typically float32 from :func:`decode_frames`).

    Returns
    -------
    tuple[bytes, str]
        The bytes (row-major) and one of :data:`STORAGE_DTYPES`.

    Raises
    ------
    ValueError
        If ``array`` is not 2-D.

    >>> encode_pixels(np.array([[0.0, 4095.0]], dtype=np.float32))[1]
    'uint16'
    >>> encode_pixels(np.array([[-1024.0, 3071.0]], dtype=np.float32))[1]
    'int16'
    """
    values = np.asarray(array)
    if values.ndim != 2:
        raise ValueError(f"Argument 'array' must have shape (H, W), got {values.shape}.")
    if values.dtype.kind not in "biuf":
        raise TypeError(f"Argument 'array' must hold real numbers, got dtype {values.dtype}.")
    integral = values.dtype.kind in "biu"
    if not integral and values.size:
        with np.errstate(invalid="ignore"):
            integral = bool(np.all(np.floor(values) == values))  # False for NaN and infinities
    if integral and values.size:
        lo, hi = values.min(), values.max()
        for name in _INTEGER_DTYPES:
            info = np.iinfo(name)
            if info.min <= lo and hi <= info.max:
                return values.astype(np.dtype(name).newbyteorder("<"), copy=False).tobytes(), name
    return values.astype("<f4", copy=False).tobytes(), "float32"


@dataclass(frozen=True)
class EncodedFrame:
    """One frame as the ``images`` table stores it (see the module docstring), or its failure.

    Attributes
    ----------
    frame_index: int
        Zero-based frame number in the instance.
    pixels: bytes | None
        Row-major little-endian values of ``dtype``, ``height`` x ``width``; None on failure.
    dtype: str | None
        One of :data:`STORED_DTYPES` (the stored values, as pydicom's ``pixel_array``
        gives them) or ``float32`` (the frame's values).
    height, width: int
        Rows and columns, pixels.
    error: Failure | None
        Stage ``pixels`` failure; None on success.
    rescale_slope, rescale_intercept: float
        Modality value = stored value x slope + intercept (modality units, e.g. HU);
        1 and 0 for float32 values.
    invert: bool
        MONOCHROME1: the values are flipped within the rescaled range of the stored values.
    bits_stored: int | None
        Bits of the stored values (their range, for the inversion); None for float32 values.
    """

    frame_index: int
    pixels: bytes | None = None
    dtype: str | None = None
    height: int = 0
    width: int = 0
    error: Failure | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    invert: bool = False
    bits_stored: int | None = None

    @property
    def transform(self) -> dict[str, float | bool | int | None]:
        """:data:`TRANSFORM_COLUMNS` → this frame's values, as :func:`frame_values` takes them."""
        return {
            "rescale_slope": self.rescale_slope,
            "rescale_intercept": self.rescale_intercept,
            "invert": self.invert,
            "bits_stored": self.bits_stored,
        }


def encoded_frames(data: bytes, *, max_decoded_bytes: int = 1 << 30) -> Iterator[EncodedFrame]:
    """The frames of one instance as the ``images`` table stores them, frame by frame; never raises.

    A grey 8- or 16-bit frame without a Modality LUT keeps pydicom's ``pixel_array``
    bytes with its rescale and inversion (no float values are computed: 0.4 ms less per
    384x384 frame than the modality values); any other frame is stored as its float32
    values (:func:`decode_frames`). Either way :func:`frame_values` gives back exactly
    the values of :func:`decode_frames`.

    The unit of work of the ingest pixel pass, in the Spark worker or in a
    :class:`radlake.dicom.sandbox.Sandbox` child (so it is a module-level function of
    picklable results).
    """
    for index, pixels, error in _frames(data, None, max_decoded_bytes, as_stored=True):
        if error is not None:
            yield EncodedFrame(index, error=error)
            return
        try:
            frame = _encoded(index, pixels)
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError: this frame's failure
            yield EncodedFrame(index, error=Failure.from_exception(QuarantineStage.PIXELS, exc))
            return
        yield frame


def _encoded(index: int, pixels: np.ndarray | _Stored) -> EncodedFrame:
    if isinstance(pixels, _Stored):
        array = pixels.array
        height, width = array.shape
        return EncodedFrame(
            index,
            _little_endian_bytes(array, array.dtype.name),
            array.dtype.name,
            int(height),
            int(width),
            rescale_slope=float(pixels.rescale_slope),
            rescale_intercept=float(pixels.rescale_intercept),
            invert=bool(pixels.invert),
            bits_stored=int(pixels.bits_stored),
        )
    height, width = pixels.shape
    return EncodedFrame(index, _little_endian_bytes(pixels, "float32"), "float32", int(height), int(width))


def _little_endian_bytes(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def needs_isolation(transfer_syntax_uid: str | None) -> bool:
    """Whether pixel data of this transfer syntax is decoded by native code (so in a sandbox).

    Uncompressed and deflated data are read by pydicom with NumPy and zlib, in the worker;
    every compressed syntax, and an unknown or invalid UID, goes to a native plugin.

    >>> needs_isolation("1.2.840.10008.1.2.1"), needs_isolation("1.2.840.10008.1.2.4.90"), needs_isolation(None)
    (False, True, True)
    """
    from pydicom.uid import UID

    try:
        uid = UID(str(transfer_syntax_uid or ""))
        return not uid.is_transfer_syntax or uid.is_compressed
    except ValueError:
        return True


def decoder_memory_headroom(max_decoded_bytes: int) -> int:
    """Address space a sandboxed decoder may add while decoding one instance, bytes.

    Twice the largest allowed decoded instance (the decoder's output and pydicom's
    float32 frame) plus 512 MiB for the decoder's own buffers: far more than any valid
    file needs, and far less than a crafted codestream that declares a huge image.

    >>> decoder_memory_headroom(1 << 30) // (1 << 20)
    2560
    """
    return 2 * int(max_decoded_bytes) + (512 << 20)


def frame_values(
    buf: bytes,
    dtype: str,
    height: int,
    width: int,
    *,
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    invert: bool | None = None,
    bits_stored: int | None = None,
    float64: bool = False,
) -> np.ndarray:
    """A stored frame's values: the ``(height, width)`` float32 array every reader of ``images`` sees.

    ``stored * rescale_slope + rescale_intercept`` (in float32), then with ``invert``
    flipped within the rescaled range of ``bits_stored``-bit stored values (signed for
    ``int16``): exactly the values of :func:`decode_frames` for the frame that
    :func:`encoded_frames` stored. A transform argument that is missing (``None`` or NaN,
    as a null column reads in pandas) is the identity: slope 1, intercept 0, no
    inversion, which is how rows that hold their values already (an ``images`` table
    written before these columns, crops, a model's input) read.

    Parameters
    ----------
    buf: bytes
        ``height * width`` row-major little-endian values of ``dtype``.
    dtype: str
        One of :data:`STORAGE_DTYPES`.
    height, width: int
        Rows and columns, pixels.
    rescale_slope: float | None
        Modality units per stored unit (DICOM RescaleSlope).
    rescale_intercept: float | None
        Modality units (DICOM RescaleIntercept), e.g. HU for CT.
    invert: bool | None
        MONOCHROME1: flip the values so that higher is brighter.
    bits_stored: int | None
        Bits of the stored values; needed with ``invert``.
    float64: bool
        Compute in float64 instead: pydicom's ``apply_modality_lut`` arithmetic (the same
        values, bit for bit, for a frame stored as its integers). The default float32
        is what every reader sees (and saw before frames were stored as integers).

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` float32 (float64 with ``float64``).

    Raises
    ------
    ValueError
        If ``dtype`` is not one of :data:`STORAGE_DTYPES`, ``buf`` does not hold
        ``height * width`` values, or ``invert`` comes without ``bits_stored`` or with a
        float ``dtype``.

    Examples
    --------
    >>> stored = np.array([[0, 4095]], dtype="<u2").tobytes()
    >>> frame_values(stored, "uint16", 1, 2, rescale_slope=0.5, rescale_intercept=-10.0).tolist()
    [[-10.0, 2037.5]]
    >>> frame_values(stored, "uint16", 1, 2, invert=True, bits_stored=12).tolist()  # MONOCHROME1
    [[4095.0, 0.0]]
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"Argument 'dtype' must be one of {STORAGE_DTYPES}, got {dtype!r}.")
    array = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != height * width:
        raise ValueError(f"Argument 'buf' holds {array.size} values, not height x width = {height} x {width}.")
    stored = array.reshape(int(height), int(width))
    slope = float(rescale_slope) if _given(rescale_slope) else 1.0
    intercept = float(rescale_intercept) if _given(rescale_intercept) else 0.0
    flip = bool(invert) if _given(invert) else False
    if flip and (not _given(bits_stored) or stored.dtype.kind not in "iu"):
        raise ValueError(
            f"Argument 'invert' needs 'bits_stored' and an integer 'dtype', got bits_stored={bits_stored!r}, "
            f"dtype={dtype!r}."
        )
    bits = int(bits_stored) if flip else None
    precision = np.float64 if float64 else np.float32
    return _linear_values(stored, slope, intercept, bits, stored.dtype.kind == "i", precision)


def _given(value: object) -> bool:
    """False for a missing transform value: None, NaN (a null in a float pandas column) or ``pandas.NA``."""
    if value is None or type(value).__name__ == "NAType":
        return False
    return not (isinstance(value, float | np.floating) and math.isnan(value))


def row_values(row: Any) -> np.ndarray:
    """:func:`frame_values` of a row's :data:`VALUE_COLUMNS` (a mapping, a ``pyspark.sql.Row`` or a
    ``pandas.Series``); transform columns the row lacks are the identity.

    >>> row = {"pixels": np.array([[7, 9]], dtype="<i2").tobytes(), "dtype": "int16", "height": 1, "width": 2,
    ...        "rescale_slope": 1.0, "rescale_intercept": -1024.0}
    >>> row_values(row).tolist()
    [[-1017.0, -1015.0]]
    """
    columns = _columns(row)
    return frame_values(
        columns["pixels"],
        columns["dtype"],
        int(columns["height"]),
        int(columns["width"]),
        **{name: columns.get(name) for name in TRANSFORM_COLUMNS},
    )


def values_encoding(row: Any) -> tuple[bytes, str]:
    """A row's frame as ``(pixels, dtype)`` that hold its values: what a detector model takes as input.

    A row with the identity transform (slope 1, intercept 0, no inversion, or no
    transform columns: crops, tables written before them) is returned as it is, without
    decoding; any other is :func:`row_values` stored by :func:`encode_pixels` (its
    smallest exact dtype). Either way ``frame_values(pixels, dtype, height, width)`` then
    gives the row's values.

    >>> row = {"pixels": np.array([[7, 9]], dtype="<u2").tobytes(), "dtype": "uint16", "height": 1, "width": 2,
    ...        "rescale_slope": 0.5, "rescale_intercept": 0.0, "invert": False, "bits_stored": 12}
    >>> values_encoding(row)[1]
    'float32'
    """
    columns = _columns(row)
    slope, intercept, invert = (columns.get(name) for name in TRANSFORM_COLUMNS[:3])
    identity = (
        (not _given(slope) or float(slope) == 1.0)
        and (not _given(intercept) or float(intercept) == 0.0)
        and not (_given(invert) and bool(invert))
    )
    if identity:
        return columns["pixels"], columns["dtype"]
    return encode_pixels(row_values(columns))


def _columns(row: Any) -> Mapping[str, Any]:
    if hasattr(row, "asDict"):  # pyspark.sql.Row
        return row.asDict()
    if isinstance(row, Mapping) or hasattr(row, "get"):  # a mapping, a pandas.Series
        return row
    raise TypeError(f"Argument 'row' must be a mapping, a pyspark Row or a pandas Series, got {type(row).__name__}.")
