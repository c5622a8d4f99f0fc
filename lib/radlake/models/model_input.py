"""What a detector model takes: frames whose ``pixels`` hold their values.

A detector pyfunc (:mod:`radlake.models.pyfunc`) reads ``pixels``, ``dtype``, ``height``,
``width`` and ``pixel_spacing`` (:data:`radlake.models.pyfunc.INPUT_COLUMNS`): the frame's
values, as :func:`radlake.dicom.pixels.encode_pixels` stores them (crops, and every model
logged so far, take that). An ``images`` row holds its frame as stored, with the rescale and
the inversion in its transform columns (:data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`), so
rows go through :func:`radlake.dicom.pixels.values_encoding` first:

- :func:`model_input_frames`: a Spark DataFrame of frames, on the executors (before a
  pyfunc Spark UDF: the crops job, scoring);
- :func:`model_input_rows`: a pandas DataFrame (``predict`` on a cached split, an input
  example).

A row whose transform is the identity (most MR: slope 1, intercept 0, MONOCHROME2; rows
without transform columns) passes with its bytes untouched, without decoding.

Example
-------
>>> frames = model_input_frames(images.select("sop_instance_uid", "frame_index", *VALUE_COLUMNS,
...                                           "pixel_spacing"))                   # doctest: +SKIP
>>> frames.select(detections_column(spark, uri).alias("d"))                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from radlake.dicom.pixels import TRANSFORM_COLUMNS, values_encoding

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame

__all__ = ["model_input_frames", "model_input_rows", "values_batches"]


def model_input_frames(frames: DataFrame) -> DataFrame:
    """``frames`` with ``pixels`` / ``dtype`` holding each frame's values, and without the transform columns.

    Runs on the executors (``mapInArrow``, a narrow step: no shuffle); the other columns
    pass unchanged. A DataFrame without transform columns (crops, a table written before
    them) is returned as it is.
    """
    if not any(name in frames.columns for name in TRANSFORM_COLUMNS):
        return frames
    from pyspark.sql.types import StructType

    schema = StructType([f for f in frames.schema.fields if f.name not in TRANSFORM_COLUMNS])
    return frames.mapInArrow(values_batches, schema)


def values_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side of :func:`model_input_frames`: each batch with ``pixels`` / ``dtype`` as values.

    Only the rows whose transform is not the identity are decoded and stored again.
    """
    import pyarrow as pa

    for batch in batches:
        present = [name for name in TRANSFORM_COLUMNS if name in batch.schema.names]
        transforms = {name: batch.column(name).to_pylist() for name in present}
        pixels, dtypes = batch.column("pixels"), batch.column("dtype")
        new_pixels, new_dtypes = pixels.to_pylist(), dtypes.to_pylist()
        heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
        for i, buf in enumerate(new_pixels):
            if buf is None or new_dtypes[i] is None:
                continue  # nothing to decode: left to the model's own checks
            row = {"pixels": buf, "dtype": new_dtypes[i], "height": heights[i], "width": widths[i]}
            row.update({name: values[i] for name, values in transforms.items()})
            new_pixels[i], new_dtypes[i] = values_encoding(row)
        columns = {name: batch.column(name) for name in batch.schema.names if name not in TRANSFORM_COLUMNS}
        columns["pixels"] = pa.array(new_pixels, type=pixels.type)
        columns["dtype"] = pa.array(new_dtypes, type=dtypes.type)
        yield pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def model_input_rows(rows: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """``rows`` (a pandas DataFrame of frames) as a detector's input: ``pixels`` / ``dtype`` as values.

    Parameters
    ----------
    rows
        Frames with ``pixels``, ``dtype``, ``height``, ``width`` and, for ``images`` rows,
        the transform columns.
    columns
        The columns returned (default :data:`radlake.models.pyfunc.INPUT_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        A copy with ``columns``; ``rows`` is not changed.
    """
    from radlake.models.pyfunc import INPUT_COLUMNS

    wanted = list(columns or INPUT_COLUMNS)
    out = rows[wanted].copy()
    if any(name in rows.columns for name in TRANSFORM_COLUMNS):
        encoded = [values_encoding(row) for row in rows.to_dict("records")]
        if "pixels" in out.columns:
            out["pixels"] = [buf for buf, _ in encoded]
        if "dtype" in out.columns:
            out["dtype"] = [dtype for _, dtype in encoded]
    return out
