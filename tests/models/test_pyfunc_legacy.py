"""Detectors registered before models from code (a pickled ``DetectorModel``) still load and score.

The same weights are logged both ways, and registered: the pickled model of before
(:func:`pickled_detectors.log_pickled_detector`) and the one :func:`log_detector` logs now,
from code. Both load with ``mlflow.pyfunc.load_model`` and give the same detections, in
this process and as the pyfunc Spark UDF that scoring runs (:func:`detections_column`).
The whole scoring job over a pickled detector: ``tests/score/test_score_job.py``.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from pickled_detectors import is_pickled, log_pickled_detector
from radlake.dicom.pixels import encode_pixels
from radlake.models.detector import REGRESSION_BIAS, build_detector, vertebra_spec
from radlake.models.pyfunc import DetectorModel, detections_column, log_detector


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """``(pickled_uri, from_code_uri, frames)``: one seeded detector registered both ways in a store of its own."""
    root = tmp_path_factory.mktemp("pyfunc-legacy")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment = mlflow.create_experiment("pyfunc-legacy", artifact_location=(root / "artifacts").as_uri())
    spec = vertebra_spec(image_size=96, score_threshold=0.0, detections_per_image=4)
    torch.manual_seed(3)
    model = build_detector(spec)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    rng = np.random.default_rng(3)
    rows = []
    for height, width in ((120, 96), (80, 100)):
        buf, dtype = encode_pixels(rng.integers(0, 3000, (height, width)).astype(np.float32))
        rows.append({"pixels": buf, "dtype": dtype, "height": height, "width": width, "pixel_spacing": [0.8, 0.9]})
    frames = pd.DataFrame(rows)
    uris = []
    with mlflow.start_run(experiment_id=experiment):
        for log in (log_pickled_detector, log_detector):
            info = log(model, spec, input_example=frames, registered_model_name="legacy_test_vertebra")
            uris.append(f"models:/legacy_test_vertebra/{info.registered_model_version}")
    return uris[0], uris[1], frames


def _plain(detections) -> list[list[dict]]:
    return [
        [{k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in d.items()} for d in row] for row in detections
    ]


def test_a_pickled_detector_loads_and_predicts_as_one_logged_from_code(both):
    pickled, from_code, frames = both
    assert is_pickled(pickled) and not is_pickled(from_code)
    old, new = mlflow.pyfunc.load_model(pickled), mlflow.pyfunc.load_model(from_code)
    assert type(old.unwrap_python_model()) is DetectorModel is type(new.unwrap_python_model())
    found = _plain(old.predict(frames)["detections"])
    assert found == _plain(new.predict(frames)["detections"])
    assert all(len(row) > 0 for row in found)
    assert old.metadata.signature == new.metadata.signature


def test_a_pickled_detector_scores_as_a_spark_udf(spark, both):
    pickled, from_code, frames = both
    expected = mlflow.pyfunc.load_model(from_code).predict(frames)["detections"]
    rows = spark.createDataFrame(frames).select(detections_column(spark, pickled).alias("d")).collect()
    assert [len(r.d) for r in rows] == [len(row) for row in expected]
    for row, want in zip(rows, expected, strict=True):
        for got, d in zip(row.d, want, strict=True):
            assert (got.label, got.level_status) == (d["label"], d["level_status"])
            for key in ("score", "x0", "y0", "x1", "y1"):
                assert got[key] == pytest.approx(d[key], abs=1e-4), key
