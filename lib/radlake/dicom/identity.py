"""Whether two copies of one SOP instance hold the same content, whatever their encoding.

A PACS export often holds an instance twice: a byte-identical copy, or the same
instance in another transfer syntax (implicit or explicit VR, big endian, RLE, JPEG-LS or
JPEG 2000 lossless, deflated). Such copies are one instance. They are told apart from a
*conflict* (the same SOPInstanceUID with other content) by two digests:

- :func:`header_digest`: the header as DICOM JSON (PS3.18 F.2; values decoded, so
  byte order and VR encoding do not matter), without the attributes that only say how
  the data is encoded: the file meta group (transfer syntax), group lengths,
  Specific Character Set (the text is compared decoded), Planar Configuration and Data
  Set Trailing Padding. Binary values over
  :data:`radlake.dicom.header.BULK_DATA_BYTES` (pixel, overlay data) are not part of it.
- :func:`pixels_digest`: the decoded frames' values (:class:`radlake.dicom.pixels.EncodedFrame`
  through :func:`radlake.dicom.pixels.frame_values`: modality values, MONOCHROME1 inverted,
  in their smallest exact dtype), frame by frame, whatever dtype a decoder gave. Colour
  frames are compared as their luma, as radlake stores them.

Both are SHA-256 hex digests. A lossy copy decodes to other values: a conflict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from radlake.dicom.header import parse_header
from radlake.dicom.pixels import EncodedFrame, encode_pixels, frame_values

__all__ = ["ENCODING_KEYWORDS", "header_digest", "pixels_digest"]

#: Dataset attributes that say how the data is encoded, not what it is (left out of :func:`header_digest`).
ENCODING_KEYWORDS: dict[str, str] = {
    "00080005": "SpecificCharacterSet",
    "00280006": "PlanarConfiguration",
    "FFFCFFFC": "DataSetTrailingPadding",
}


def header_digest(data: bytes) -> str:
    """SHA-256 of the instance's header without its encoding attributes (see the module docstring).

    Raises
    ------
    ValueError
        If the header cannot be parsed (the message is the parse failure's).
    """
    result = parse_header(data, deid=None, max_json_bytes=1 << 62)
    if result.error is not None:
        raise ValueError(f"{result.error.error_class}: {result.error.message}")
    elements = {k: v for k, v in json.loads(result.header_json).items() if k not in ENCODING_KEYWORDS}
    return hashlib.sha256(json.dumps(elements, sort_keys=True).encode()).hexdigest()


def pixels_digest(frames: Iterable[EncodedFrame]) -> str:
    """SHA-256 of the decoded frames' values, in order (shape, dtype and values of each).

    Raises
    ------
    ValueError
        If a frame failed to decode (naming the frame and the failure).
    """
    digest = hashlib.sha256()
    for frame in frames:
        if frame.error is not None:
            raise ValueError(f"frame {frame.frame_index}: {frame.error.error_class}: {frame.error.message}")
        values = frame_values(frame.pixels, frame.dtype, frame.height, frame.width, **frame.transform)
        buf, dtype = encode_pixels(values)
        digest.update(f"{frame.frame_index}:{frame.height}x{frame.width}:{dtype};".encode())
        digest.update(buf)
    return digest.hexdigest()
