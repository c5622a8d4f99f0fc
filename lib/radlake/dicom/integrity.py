"""Damaged instances, found in the header pass without decoding anything.

A copy cut short by a failed transfer, or a header that promises more pixels than the
file holds, parses as a valid header: pydicom's ``stop_before_pixels`` reading stops
quietly at the end of the data. :func:`check_instance` looks at what the header pass
already has (the parsed header and the position where the pixel data element starts)
and reads only element headers and item tags:

- **A file that ends inside an element**: an element before the pixel data whose value
  is shorter than its declared length, or pixel data whose declared length runs past
  the end of the file.
- **Dimensions beyond the limit**: Rows x Columns x SamplesPerPixel x NumberOfFrames at
  BitsAllocated bits decode to more than ``ingest.max_decoded_bytes``: refused before
  anything is allocated.
- **Native pixel data of the wrong length**: the value length must be Rows x Columns x
  SamplesPerPixel x NumberOfFrames x BitsAllocated / 8 bytes, rounded up to an even
  number (PS3.5 8.1.1, A.1).
- **Encapsulated pixel data with missing fragments or frames**: items must be complete
  and end with the sequence delimiter; there must be at least one fragment per frame
  (PS3.5 A.4: a fragment holds data of one frame only), and a non-empty Basic Offset
  Table must list one offset per frame.
- A deflated dataset (PS3.5 A.5) whose compressed stream ends early.

Every failure names what was expected and what was found, in bytes, items or frames.
:func:`radlake.dicom.header.parse_header` runs :func:`truncated_header` on the dataset as
read and :func:`check_pixel_data` once the columns are known.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from radlake.dicom.sources import Failure
from radlake.vocabulary import QuarantineStage

__all__ = [
    "Damage",
    "Dimensions",
    "Located",
    "check_pixel_data",
    "decoded_size_bytes",
    "deflated_dataset",
    "locate_pixel_data",
    "native_pixel_bytes",
    "pixel_data_start",
    "truncated_header",
]

#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def decoded_size_bytes(
    rows: int | None, columns: int | None, frames: int | None, samples: int | None, bits_allocated: int | None
) -> int:
    """Bytes that decoding every frame would take: rows x columns x frames x samples x bytes per sample.

    Missing values count as 1 frame, 1 sample, 16 bits; 1-bit data counts one byte
    per pixel (pydicom unpacks it to uint8).

    >>> decoded_size_bytes(512, 512, 100, 1, 16)
    52428800
    """
    bytes_per_sample = max(1, (int(bits_allocated or 16) + 7) // 8)
    return int(rows or 0) * int(columns or 0) * max(1, int(frames or 1)) * max(1, int(samples or 1)) * bytes_per_sample


class Damage:
    """Error classes of a damaged instance (the quarantine's ``error_class``, stage ``header``)."""

    TRUNCATED = "TruncatedFile"
    """The data ends inside an element (before or in the pixel data)."""
    TOO_LARGE = "DimensionsOverLimit"
    """The declared dimensions decode to more than ``ingest.max_decoded_bytes``."""
    LENGTH = "PixelDataLengthMismatch"
    """Native pixel data whose length is not what the dimensions say."""
    FRAGMENTS = "EncapsulatedFramesMissing"
    """Fewer fragments (or offset table entries) than frames."""
    NO_PIXELS = "ImageWithoutPixelData"
    """An image (its SOP class, or Rows and Columns) whose file ends before any pixel data."""


@dataclass(frozen=True)
class Dimensions:
    """What the header says the pixel data holds (Image Pixel module), from the promoted columns."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    photometric: str = ""

    @classmethod
    def from_columns(cls, columns: dict) -> Dimensions | None:
        """From :func:`radlake.dicom.header.parse_header`'s columns; None without rows, columns or bits."""
        rows, cols, bits = columns.get("rows"), columns.get("columns"), columns.get("bits_allocated")
        if rows is None or cols is None or bits is None or min(rows, cols, bits) < 0:
            return None
        samples = max(int(columns.get("samples_per_pixel") or 1), 1)
        frames = max(int(columns.get("number_of_frames") or 1), 1)
        photometric = str(columns.get("photometric_interpretation") or "")
        return cls(int(rows), int(cols), samples, frames, int(bits), photometric)

    @property
    def text(self) -> str:
        return (
            f"{self.rows} rows x {self.columns} columns x {self.samples} samples x {self.frames} frames "
            f"x {self.bits_allocated} bits"
        )


@dataclass(frozen=True)
class Located:
    """Where an instance's pixel data element starts: in the stored bytes, or in the inflated dataset."""

    buffer: bytes
    """The stored bytes; for a Deflated Explicit VR Little Endian file, its inflated dataset."""
    stop: int
    """Position of the pixel data element's tag in ``buffer``; its length when there is none."""


def native_pixel_bytes(rows: int, columns: int, samples: int, frames: int, bits_allocated: int) -> int:
    """Length in bytes of native (uncompressed) pixel data, padded to even (PS3.5 8.1.1).

    >>> native_pixel_bytes(64, 64, 1, 1, 16), native_pixel_bytes(3, 3, 1, 1, 1)
    (8192, 2)
    """
    total_bits = rows * columns * samples * frames * bits_allocated
    length = (total_bits + 7) // 8
    return length + (length & 1)


def deflated_dataset(data: bytes) -> tuple[bytes, bool]:
    """The inflated dataset of a Deflated Explicit VR Little Endian file, and whether its stream was complete.

    The file meta group (explicit VR little endian, after the 128-byte preamble and
    ``DICM``) ends where its group length (0002,0000) says; the rest is a raw deflate
    stream (RFC 1951) of the dataset.
    """
    (meta_length,) = struct.unpack_from("<L", data, 140)  # (0002,0000) UL value: preamble 128 + DICM 4 + 8
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[144 + meta_length :])
    except zlib.error:
        return b"", False
    return inflated, inflater.eof


def locate_pixel_data(data: bytes, ds: Dataset, stop: int) -> Located | Failure:
    """Where the pixel data element starts (see :class:`Located`), or a failure for a cut deflate stream.

    ``ds`` and ``stop`` are pydicom's reading of ``data`` with ``stop_before_pixels``.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        return Located(data, stop)
    inflated, complete = deflated_dataset(data)
    if not complete:
        return Failure(
            QuarantineStage.HEADER, Damage.TRUNCATED, "the deflated dataset ends before its end-of-stream mark"
        )
    return Located(inflated, pixel_data_start(inflated))


def truncated_header(ds: Dataset, located: Located) -> Failure | None:
    """Whether the data ends inside an element before the pixel data.

    Run on the dataset as read, before de-identification replaces elements: pydicom
    stops quietly at the end of the data, an element cut in its value keeps a shorter
    value than its declared length, one cut in its tag or length is dropped, so the
    reading ends (``stop == len(buffer)``) past the end of the last element it kept. A
    cut inside a top-level sequence that is the last element read is not seen (pydicom
    keeps no position for a parsed sequence).
    """
    size = len(located.buffer)
    end = None  # where the last element read ends, when pydicom kept its position (not for sequences)
    for tag in ds.keys():  # noqa: SIM118 - ds[tag] would convert the raw element
        raw = ds._dict[tag]  # the raw element, as read: no value conversion
        end = None
        if not isinstance(raw, RawDataElement):
            continue
        if raw.length != _UNDEFINED and raw.value is not None and len(raw.value) < raw.length:
            return Failure(
                QuarantineStage.HEADER,
                Damage.TRUNCATED,
                f"the file ends inside an element: ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {raw.length} "
                f"bytes, {len(raw.value)} present",
            )
        if raw.length != _UNDEFINED and raw.value_tell is not None:
            end = raw.value_tell + raw.length
    if located.stop >= size and end is not None and end < size:
        return Failure(
            QuarantineStage.HEADER,
            Damage.TRUNCATED,
            f"the file ends inside an element: {size - end} bytes after the last complete element do not make one",
        )
    return None


def check_pixel_data(
    located: Located, ds: Dataset, dims: Dimensions | None, *, max_decoded_bytes: int
) -> Failure | None:
    """Whether the pixel data disagrees with the header (see the module docstring); None when sound.

    Parameters
    ----------
    located
        Where the pixel data element starts (:func:`locate_pixel_data`).
    ds
        The dataset read with ``stop_before_pixels`` (for its encoding and SOP class).
    dims
        The dimensions in its header (:meth:`Dimensions.from_columns`); None when absent.
    max_decoded_bytes
        Limit on the decoded size of all frames (``ingest.max_decoded_bytes``).

    Returns
    -------
    Failure | None
        A stage ``header`` failure with a :class:`Damage` error class, naming the
        expected and the found sizes. Only element headers and item tags are read.
    """
    data, stop = located.buffer, located.stop
    at_pixels = stop + 8 <= len(data) and _tag(data, stop, ds) in PIXEL_DATA_TAGS
    if not at_pixels:
        if stop >= len(data) and dims is not None:
            return Failure(
                QuarantineStage.HEADER,
                Damage.NO_PIXELS,
                f"the header declares an image of {dims.text} but the file ends before its pixel data "
                f"({len(data)} bytes)",
            )
        if stop >= len(data) and (image_class := _image_storage_class(ds)) is not None:
            return Failure(
                QuarantineStage.HEADER,
                Damage.NO_PIXELS,
                f"a {image_class} instance without image attributes or pixel data: the file ({len(data)} bytes) "
                "ends after its last complete element (cut short, or stripped)",
            )
        return None  # no pixel data (a structured report, a presentation state)
    if dims is None:
        return None  # no dimensions to check against: the pixel pass reports what it cannot decode
    decoded = decoded_size_bytes(dims.rows, dims.columns, dims.frames, dims.samples, dims.bits_allocated)
    if decoded > max_decoded_bytes:
        return Failure(
            QuarantineStage.HEADER,
            Damage.TOO_LARGE,
            f"the header declares {dims.text} = {decoded} bytes decoded, over ingest.max_decoded_bytes "
            f"({max_decoded_bytes}); {len(data) - stop} bytes of pixel data are stored",
        )
    value_start, length = _element_header(data, stop, ds)
    if length == _UNDEFINED:
        failure, end = _check_fragments(data, value_start, dims, _order(ds))
        return failure or _trailing_damage(data, end, ds)
    if value_start + length > len(data):
        return Failure(
            QuarantineStage.HEADER,
            Damage.TRUNCATED,
            f"the file ends inside the pixel data: {length} bytes declared, {len(data) - value_start} present",
        )
    if (trailing := _trailing_damage(data, value_start + length, ds)) is not None:
        return trailing
    transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if transfer_syntax and UID(transfer_syntax).is_compressed:
        return None  # a defined length under a compressed syntax: left to the decoder to refuse
    # Native 4:2:2 stores two values per pixel: Y for each, Cb and Cr shared by two (PS3.3 C.7.6.3.1.2).
    samples = 2 if dims.photometric.strip() == "YBR_FULL_422" else dims.samples
    expected = native_pixel_bytes(dims.rows, dims.columns, samples, dims.frames, dims.bits_allocated)
    if length < expected:
        return Failure(
            QuarantineStage.HEADER,
            Damage.LENGTH,
            f"native pixel data of {length} bytes where {dims.text} need {expected}",
        )
    return None


def _order(ds: Dataset) -> str:
    _, little = ds.original_encoding
    return ">" if little is False else "<"


def _image_storage_class(ds: Dataset) -> str | None:
    """The name of the SOP class when it is an image storage class (pixel data is mandatory), else None."""
    try:
        name = UID(str(ds.get("SOPClassUID", "")).strip()).name
    except Exception:  # noqa: BLE001 - a malformed UID: no claim either way
        return None
    return name if name.endswith("Image Storage") else None


def _tag(data: bytes, position: int, ds: Dataset) -> int:
    group, element = struct.unpack_from(_order(ds) + "HH", data, position)
    return group << 16 | element


def _explicit(ds: Dataset) -> bool:
    implicit, _ = ds.original_encoding
    return implicit is False


def _element_header(data: bytes, start: int, ds: Dataset) -> tuple[int, int]:
    """(value start, value length) of the element whose tag is at ``start``."""
    order = _order(ds)
    if _explicit(ds) and data[start + 4 : start + 6].isalpha():
        vr = data[start + 4 : start + 6]
        if vr in _LONG_VRS:
            return start + 12, struct.unpack_from(order + "L", data, start + 8)[0]
        return start + 8, struct.unpack_from(order + "H", data, start + 6)[0]
    return start + 8, struct.unpack_from(order + "L", data, start + 4)[0]


def _trailing_damage(data: bytes, position: int, ds: Dataset) -> Failure | None:
    """Whether an element after the pixel data (trailing padding, vendor data) is cut short.

    Walks element headers of defined length from ``position`` to the end of the data;
    stops at an element of undefined length (a sequence, not followed here).
    """
    while position < len(data):
        if position + 8 > len(data):
            break
        value_start, length = _element_header(data, position, ds)
        if length == _UNDEFINED:
            return None
        if value_start > len(data) or value_start + length > len(data):
            break
        position = value_start + length
    else:
        return None
    tag = _tag(data, position, ds) if position + 4 <= len(data) else None
    where = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else f"byte {position}"
    return Failure(
        QuarantineStage.HEADER,
        Damage.TRUNCATED,
        f"the file ends inside {where} after the pixel data ({len(data)} bytes)",
    )


def pixel_data_start(inflated: bytes) -> int:
    """Where the pixel data element starts in an inflated dataset (its end when there is none)."""
    import io

    import pydicom

    fp = io.BytesIO(inflated)
    pydicom.filereader.read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixels)
    return fp.tell()


def _at_pixels(tag, vr, length) -> bool:  # noqa: ARG001 - pydicom's stop_when signature
    return int(tag) in PIXEL_DATA_TAGS


def _check_fragments(data: bytes, start: int, dims: Dimensions, order: str) -> tuple[Failure | None, int]:
    """Walk the items of encapsulated pixel data from ``start`` (the Basic Offset Table's item tag).

    Returns the failure, if any, and the position after the sequence delimiter.
    """
    position, items, offsets = start, 0, None
    while True:
        if position + 8 > len(data):
            return Failure(
                QuarantineStage.HEADER,
                Damage.TRUNCATED,
                f"the file ends inside the encapsulated pixel data after {max(items - 1, 0)} complete fragments "
                f"(no sequence delimiter); {dims.frames} frames declared",
            ), len(data)
        group, element, length = struct.unpack_from(order + "HHL", data, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            position += 8
            break
        if tag != _ITEM or length == _UNDEFINED:
            return Failure(
                QuarantineStage.HEADER,
                Damage.FRAGMENTS,
                f"encapsulated pixel data: expected an item tag at byte {position}, found ({group:04X},{element:04X})",
            ), len(data)
        if position + 8 + length > len(data):
            return Failure(
                QuarantineStage.HEADER,
                Damage.TRUNCATED,
                f"the file ends inside fragment {items} of the encapsulated pixel data: {length} bytes declared, "
                f"{len(data) - position - 8} present",
            ), len(data)
        if items == 0:
            offsets = length // 4  # the Basic Offset Table: one 4-byte offset per frame, or empty
        items += 1
        position += 8 + length
    fragments = items - 1
    if fragments < dims.frames:
        return Failure(
            QuarantineStage.HEADER,
            Damage.FRAGMENTS,
            f"encapsulated pixel data with {fragments} fragments for {dims.frames} declared frames",
        ), position
    if offsets and offsets != dims.frames:
        return Failure(
            QuarantineStage.HEADER,
            Damage.FRAGMENTS,
            f"the basic offset table lists {offsets} frames, the header declares {dims.frames}",
        ), position
    return None, position
