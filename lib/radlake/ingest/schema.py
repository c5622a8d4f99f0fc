"""Spark schemas of the ingest tables and of the executors' intermediate rows.

Units and conventions of the geometry columns follow DICOM: ``pixel_spacing`` is
``[row spacing, column spacing]`` in mm (the distance between row centres, then
between column centres); ``image_orientation_patient`` is the row then column
direction cosines; ``image_position_patient`` is the centre of the top-left pixel,
in mm, patient (LPS) coordinates.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructType,
    TimestampType,
)

from radlake.dicom.header import PROMOTED_COLUMNS
from radlake.tables import struct_fields

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_S, _I, _L, _D, _B = StringType(), IntegerType(), LongType(), DoubleType(), BooleanType()
_DOUBLES = ArrayType(DoubleType())


#: Where an instance came from: the stored file (``path``, ``file_size``, ``modification_time``)
#: and, inside a zip/tar file, the ``member`` name.
SOURCE_FIELDS = struct_fields(
    ("path", _S),
    ("member", _S),
    ("file_size", _L),
    ("modification_time", TimestampType()),
)

#: The Spark type of each Python type of a promoted header value.
_SPARK_TYPES = {str: _S, int: _I, float: _D, list[float]: _DOUBLES, dt.date: DateType(), bool: _B}

#: Header attributes promoted to typed columns: :data:`radlake.dicom.header.PROMOTED_COLUMNS` (names,
#: order and Python types, from ``parse_header``) in Spark types.
PROMOTED_FIELDS = struct_fields(*((name, _SPARK_TYPES[kind]) for name, kind in PROMOTED_COLUMNS.items()))

RUN_FIELDS = struct_fields(("ingest_run_id", _S), ("ingested_at", TimestampType()), ("radlake_version", _S))

INSTANCES = StructType(
    SOURCE_FIELDS
    + struct_fields(("instance_size", _L), ("content_sha256", _S))
    + PROMOTED_FIELDS
    + struct_fields(
        ("frame_positions", ArrayType(_DOUBLES)),
        ("series_key", _S),
        ("header_json", _S),
        ("header_json_truncated", _B),
    )
    + RUN_FIELDS
)

QUARANTINE = StructType(
    struct_fields(("quarantine_id", _S))
    + SOURCE_FIELDS
    + struct_fields(
        ("sop_instance_uid", _S),
        ("frame_index", _I),
        ("content_sha256", _S),
        ("stage", _S),
        ("error_class", _S),
        ("error_message", _S),
        ("ingest_run_id", _S),
        ("quarantined_at", TimestampType()),
    )
)

#: Extra copies of a stored instance: the same SOPInstanceUID and the same content (the same bytes,
#: or the same header without its encoding attributes and the same decoded pixel values), with the
#: copy that was kept. One row per copy (``duplicate_id``: path, member and bytes).
DUPLICATES = StructType(
    struct_fields(("duplicate_id", _S))
    + SOURCE_FIELDS
    + struct_fields(
        ("sop_instance_uid", _S),
        ("content_sha256", _S),
        ("transfer_syntax_uid", _S),
        ("same_bytes", _B),
        ("kept_path", _S),
        ("kept_member", _S),
        ("kept_content_sha256", _S),
        ("ingest_run_id", _S),
        ("recorded_at", TimestampType()),
    )
)

#: One copy's content digests (:func:`radlake.ingest.copies.copy_digests`), from the comparison pass.
COPY_DIGESTS = StructType(
    struct_fields(
        ("sop_instance_uid", _S),
        ("path", _S),
        ("member", _S),
        ("content_sha256", _S),
        ("header_sha256", _S),
        ("pixels_sha256", _S),
        ("error_message", _S),
    )
)

#: What the header pass yields per file or member: an instance, a failure, or a skipped record.
HEADER_RESULT = StructType(
    struct_fields(("kind", _S))
    + [f for f in INSTANCES.fields if f.name not in {"series_key", *(x.name for x in RUN_FIELDS)}]
    + struct_fields(("stage", _S), ("error_class", _S), ("error_message", _S))
)

SLICE = StructType(struct_fields(("sop_instance_uid", _S), ("frame_index", _I), ("position_mm", _D)))

SERIES = StructType(
    struct_fields(
        ("series_key", _S),
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("frame_of_reference_uid", _S),
        ("modality", _S),
        ("series_description", _S),
        ("plane", _S),
        ("image_orientation_patient", _DOUBLES),
        ("rows", _I),
        ("columns", _I),
        ("pixel_spacing", _DOUBLES),
        ("slice_thickness", _D),
        ("slice_count", _I),
        ("slice_spacing_mm", _D),
        ("uneven_spacing", _B),
        ("has_gaps", _B),
        ("has_duplicate_positions", _B),
        ("slices", ArrayType(SLICE)),
        ("updated_run_id", _S),
        ("updated_at", TimestampType()),
    )
)

#: One decoded 2D frame, as stored (:func:`radlake.dicom.pixels.encoded_frames`). ``pixels`` holds
#: ``height * width`` values of ``dtype`` (little endian, row-major): for ``uint8``, ``uint16``,
#: ``int16`` the stored values exactly as pydicom's ``pixel_array`` gives them, turned into the
#: frame's values (modality values, MONOCHROME1 inverted) by ``rescale_slope`` (modality units per
#: stored unit), ``rescale_intercept`` (modality units), ``invert`` and ``bits_stored``; for
#: ``float32`` the values themselves (float pixel data, colour as luma, a Modality LUT, 32-bit data:
#: slope 1, intercept 0, no inversion, ``bits_stored`` null). Readers get the values through
#: :func:`radlake.dicom.pixels.frame_values` / ``row_values``. Rows written before the transform
#: columns existed hold their values in any dtype of ``STORAGE_DTYPES`` and read them as null (the
#: identity): read the table through :func:`with_value_columns`.
IMAGES = StructType(
    struct_fields(
        ("sop_instance_uid", _S),
        ("frame_index", _I),
        ("series_key", _S),
        ("slice_index", _I),
        ("study_instance_uid", _S),
        ("series_instance_uid", _S),
        ("plane", _S),
        ("height", _I),
        ("width", _I),
        ("pixel_spacing", _DOUBLES),
        ("dtype", _S),
        ("pixels", BinaryType()),
        ("rescale_slope", _D),
        ("rescale_intercept", _D),
        ("invert", _B),
        ("bits_stored", _I),
    )
    + RUN_FIELDS
)


def with_value_columns(images: DataFrame) -> DataFrame:
    """``images`` rows with every column :func:`radlake.dicom.pixels.row_values` reads.

    A table written before the transform columns (:data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`)
    existed, or read at such a Delta version, lacks them: they are added as nulls, which
    read as the identity (those rows hold their values already). A no-op on current tables.

    Example::

        frames = with_value_columns(table_ref(config, Table.IMAGES).read(spark)).select(*VALUE_COLUMNS)
    """
    from pyspark.sql import functions as F

    from radlake.dicom.pixels import TRANSFORM_COLUMNS

    present = set(images.columns)
    missing = {c: F.lit(None).cast(IMAGES[c].dataType) for c in TRANSFORM_COLUMNS if c not in present}
    return images.withColumns(missing) if missing else images


#: What the pixel pass yields per frame: an image row or a failure.
PIXEL_RESULT = StructType(
    struct_fields(("kind", _S))
    + [f for f in IMAGES.fields if f.name not in {x.name for x in RUN_FIELDS}]
    + struct_fields(("path", _S), ("member", _S), ("content_sha256", _S))
    + struct_fields(("stage", _S), ("error_class", _S), ("error_message", _S))
)

INGEST_FILES = StructType(
    struct_fields(
        ("path", _S),
        ("file_size", _L),
        ("modification_time", TimestampType()),
        ("n_instances", _I),
        ("n_quarantined", _I),
        ("ingest_run_id", _S),
        ("ingested_at", TimestampType()),
    )
)
