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
import pytest

from pickled_detectors import is_pickled, log_pickled_detector
from radlake.models.pyfunc import DetectorModel, detections_column, log_detector
from seeded_detectors import seeded_case


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """``(pickled_uri, from_code_uri, frames)``: one seeded detector registered both ways in a store of its own."""
    case = seeded_case(tmp_path_factory.mktemp("pyfunc-legacy"), "pyfunc-legacy")
    frames = case.frames
    uris = []
    with mlflow.start_run(experiment_id=case.experiment_id):
        for log in (log_pickled_detector, log_detector):
            info = log(case.model, case.spec, input_example=frames, registered_model_name="legacy_test_vertebra")
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
