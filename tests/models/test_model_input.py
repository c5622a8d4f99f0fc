"""A detector's input from ``images`` rows: each frame's values, decoded only where a transform applies."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radlake.dicom.pixels import TRANSFORM_COLUMNS, frame_values, row_values
from radlake.ingest.schema import IMAGES
from radlake.models.model_input import model_input_frames, model_input_rows, values_batches
from radlake.models.pyfunc import INPUT_COLUMNS

STORED = np.array([[0, 100], [2000, 4095]], dtype="<u2")
PLAIN = {"rescale_slope": 1.0, "rescale_intercept": 0.0, "invert": False, "bits_stored": 12}
TRANSFORMS = [
    PLAIN,  # most MR: passes untouched
    {"rescale_slope": 3.774114, "rescale_intercept": 0.000061, "invert": False, "bits_stored": 12},
    {"rescale_slope": 1.0, "rescale_intercept": 0.0, "invert": True, "bits_stored": 12},  # MONOCHROME1
    {name: None for name in TRANSFORM_COLUMNS},  # a row written before the transform columns
]


def _rows() -> list[dict]:
    return [
        {
            "sop_instance_uid": f"1.2.{i}",
            "frame_index": 0,
            "pixels": STORED.tobytes(),
            "dtype": "uint16",
            "height": 2,
            "width": 2,
            **transform,
            "pixel_spacing": [0.5, 0.5],
        }
        for i, transform in enumerate(TRANSFORMS)
    ]


def _check(inputs: list[dict], rows: list[dict]) -> None:
    for got, row in zip(inputs, rows, strict=True):
        assert not set(TRANSFORM_COLUMNS) & set(got)
        assert frame_values(got["pixels"], got["dtype"], 2, 2).tobytes() == row_values(row).tobytes()
    assert inputs[0]["pixels"] == inputs[3]["pixels"] == STORED.tobytes()  # identity: not decoded
    assert inputs[1]["dtype"] == "float32" and inputs[2]["dtype"] == "uint16"  # 4095 - v: integers


def test_model_input_frames_gives_the_udf_each_frames_values(spark):
    rows = _rows()
    schema = type(IMAGES)([IMAGES[c] for c in rows[0]])
    frames = spark.createDataFrame([tuple(r[f.name] for f in schema.fields) for r in rows], schema)
    inputs = model_input_frames(frames)
    assert inputs.columns == [c for c in frames.columns if c not in TRANSFORM_COLUMNS]
    _check([r.asDict() for r in inputs.orderBy("sop_instance_uid").collect()], rows)
    plain = frames.drop(*TRANSFORM_COLUMNS)
    assert model_input_frames(plain) is plain  # crops, an old table's rows: nothing to do


def test_model_input_rows_and_the_executor_side_agree():
    import pyarrow as pa

    rows = _rows()
    pdf = model_input_rows(pd.DataFrame(rows))
    assert list(pdf.columns) == list(INPUT_COLUMNS)
    _check(pdf.to_dict("records"), rows)
    [batch] = values_batches(iter([pa.RecordBatch.from_pylist(rows)]))
    _check(batch.to_pylist(), rows)
