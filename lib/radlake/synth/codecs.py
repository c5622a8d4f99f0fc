"""The transfer syntax of each :class:`~radlake.synth.params.Codec`, and whether pydicom can write it here.

Below both the study planner (:mod:`radlake.synth.protocol`), which draws only codecs that
can be written, and the writer (:mod:`radlake.synth.writer`), which encodes with them.
"""

from __future__ import annotations

from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from radlake.synth.params import Codec

__all__ = ["CODEC_UIDS", "codec_available"]

#: Transfer syntax UID of each codec.
CODEC_UIDS: dict[Codec, UID] = {
    Codec.EXPLICIT: ExplicitVRLittleEndian,
    Codec.IMPLICIT: ImplicitVRLittleEndian,
    Codec.RLE: RLELossless,
    Codec.JPEG_LS: JPEGLSLossless,
    Codec.JPEG_2000: JPEG2000Lossless,
}


def codec_available(codec: Codec | str) -> bool:
    """True if pydicom can write ``codec`` here (uncompressed always; others need their plugin)."""
    codec_ = Codec(codec)
    uid = CODEC_UIDS[codec_]
    if not uid.is_compressed:
        return True
    from pydicom.pixels import get_encoder  # only compressed syntaxes have encoders

    try:
        return bool(get_encoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False
