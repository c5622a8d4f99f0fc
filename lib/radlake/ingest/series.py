"""Series as geometric stacks: a SeriesInstanceUID split by orientation, frame of reference and matrix.

A scout series often holds one sagittal, one coronal and one axial image; each is its
own stack here. Slices are ordered by their position projected on the stack's normal
(``dot(normal, ImagePositionPatient)``, mm) — never by InstanceNumber — and the
spacing is measured from the position differences.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import groupby, islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from radlake.ingest import schema as S

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

#: Positions closer than this (mm) count as the same slice position.
DUPLICATE_TOLERANCE_MM = 1e-3
#: A spacing more than this fraction away from the median spacing makes a stack uneven.
UNEVEN_TOLERANCE = 0.1
#: A spacing more than this multiple of the median spacing is a gap (missing slices).
GAP_FACTOR = 1.5

#: Stacks per Arrow batch that :func:`build_series` yields.
STACKS_PER_BATCH = 256

#: One stack as :func:`build_series` returns it: the ``series`` table without the run columns.
STACK = S.StructType([f for f in S.SERIES.fields if f.name not in {"updated_run_id", "updated_at"}])


def series_key_column() -> Column:
    """Spark expression of the stack key: a hash of series UID, frame of reference, orientation and matrix.

    Orientation cosines are rounded to 3 decimals so that float noise does not split a stack.
    """
    orientation = F.expr(
        "array_join(transform(image_orientation_patient, x -> format_string('%.3f', round(x, 3) + 0.0)), ',')"
    )
    parts = [
        F.coalesce(F.col("series_instance_uid"), F.lit("")),
        F.coalesce(F.col("frame_of_reference_uid"), F.lit("")),
        F.coalesce(orientation, F.lit("")),
        F.coalesce(F.col("rows").cast("string"), F.lit("")),
        F.coalesce(F.col("columns").cast("string"), F.lit("")),
    ]
    return F.substring(F.sha2(F.concat_ws("|", *parts), 256), 1, 32)


def build_series(instances: DataFrame) -> DataFrame:
    """One row per stack (:data:`radlake.ingest.schema.SERIES` without the run columns)."""
    columns = [
        "series_key",
        "sop_instance_uid",
        "study_instance_uid",
        "series_instance_uid",
        "frame_of_reference_uid",
        "modality",
        "series_description",
        "plane",
        "image_orientation_patient",
        "image_position_patient",
        "frame_positions",
        "number_of_frames",
        "instance_number",
        "rows",
        "columns",
        "pixel_spacing",
        "slice_thickness",
    ]
    # Rows of one stack meet in one partition, in a row: one Python call per partition walks
    # them (a grouped applyInArrow costs a round trip per stack, ~1 ms, with thousands of stacks).
    return (
        instances.select(*columns)
        .repartition("series_key")
        .sortWithinPartitions("series_key", "sop_instance_uid")
        .mapInArrow(_stack_batches, STACK)
    )


def _stack_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """:func:`describe_stack` of each run of rows with one ``series_key`` (the input is sorted by it)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(STACK)
    rows = (row for batch in batches for row in batch.to_pylist())
    stacks = (describe_stack(list(group)) for _, group in groupby(rows, key=itemgetter("series_key")))
    while chunk := list(islice(stacks, STACKS_PER_BATCH)):
        yield pa.RecordBatch.from_pylist(chunk, schema=schema)


def describe_stack(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Order the slices of one stack and measure its spacing.

    Parameters
    ----------
    instances
        Rows of one stack with at least ``sop_instance_uid``, ``image_orientation_patient``
        (6 cosines), ``image_position_patient`` (x, y, z mm, LPS), ``frame_positions``
        (per-frame positions or ``None``), ``number_of_frames`` and ``instance_number``.

    Returns
    -------
    dict
        The series row: ``slices`` sorted by ``position_mm`` (distance along the normal,
        mm; ``None`` where the geometry is missing, placed last by InstanceNumber),
        ``slice_spacing_mm`` (median of the position differences), and the flags
        ``uneven_spacing``, ``has_gaps`` and ``has_duplicate_positions``.
    """
    from radlake.dicom.geometry import slice_normal

    first = instances[0]
    normal = None
    try:
        if first.get("image_orientation_patient"):
            normal = slice_normal(first["image_orientation_patient"])
    except ValueError:
        normal = None
    slices: list[tuple[float | None, int, str, int]] = []
    for inst in instances:
        frames = max(int(inst.get("number_of_frames") or 1), 1)
        per_frame = inst.get("frame_positions")
        for frame in range(frames):
            position = None
            xyz = per_frame[frame] if per_frame and frame < len(per_frame) else inst.get("image_position_patient")
            if normal is not None and xyz is not None and len(xyz) == 3:
                position = float(np.dot(normal, np.asarray(xyz, dtype=float)))
            slices.append((position, int(inst.get("instance_number") or 0), inst["sop_instance_uid"], frame))
    slices.sort(key=lambda s: (s[0] is None, s[0] if s[0] is not None else 0.0, s[1], s[2], s[3]))

    known = np.array([s[0] for s in slices if s[0] is not None], dtype=float)
    diffs = np.diff(known) if known.size > 1 else np.array([])
    duplicates = bool(np.any(diffs < DUPLICATE_TOLERANCE_MM)) if diffs.size else False
    steps = diffs[diffs >= DUPLICATE_TOLERANCE_MM]
    spacing = float(np.median(steps)) if steps.size else None
    uneven = bool(spacing and np.any(np.abs(steps - spacing) > UNEVEN_TOLERANCE * spacing))
    gaps = bool(spacing and np.any(steps > GAP_FACTOR * spacing))
    return {
        "series_key": first["series_key"],
        **{k: first.get(k) for k in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid")},
        **{k: first.get(k) for k in ("modality", "series_description", "plane", "image_orientation_patient")},
        **{k: first.get(k) for k in ("rows", "columns", "pixel_spacing", "slice_thickness")},
        "slice_count": len(slices),
        "slice_spacing_mm": spacing if spacing is None or math.isfinite(spacing) else None,
        "uneven_spacing": uneven,
        "has_gaps": gaps,
        "has_duplicate_positions": duplicates,
        "slices": [{"sop_instance_uid": s[2], "frame_index": s[3], "position_mm": s[0]} for s in slices],
    }
