"""DICOM files, one instance at a time: reading, checking, decoding, de-identifying, geometry.

- :mod:`.sources`: the files of an archive (folders, zip and tar members), safely.
- :mod:`.header`: one instance's header as typed columns and DICOM JSON.
- :mod:`.integrity`: damage found from the header alone (truncation, missing frames, sizes).
- :mod:`.identity`: the content digests that tell copies of one instance apart.
- :mod:`.pixels`: decoding through pydicom's pixel pipeline, frames as stored, and
  :func:`~radlake.dicom.pixels.frame_values`, the one way from a stored frame to its values.
- :mod:`.sandbox`: decoders in a child process with memory and time limits.
- :mod:`.deid`: PS3.15 de-identification with keyed pseudonyms and date shifts.
- :mod:`.geometry`: pixels <-> patient coordinates (LPS, mm), planes, slice order.

May import: :mod:`radlake.errors` only (no Spark: everything here runs on the executors).
Import names from their module (``from radlake.dicom.geometry import Plane``).
"""
