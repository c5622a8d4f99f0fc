"""The detector pyfunc: logged with a signature, loaded in a fresh process, and run as a Spark UDF."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from radlake.models.detector import vertebra_spec
from radlake.models.levels import LEVELS
from radlake.models.pyfunc import log_detector, udf_result_type
from seeded_detectors import seeded_case


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    case = seeded_case(tmp_path_factory.mktemp("pyfunc"), "pyfunc-test")
    with mlflow.start_run(experiment_id=case.experiment_id):
        info = log_detector(case.model, case.spec, input_example=case.frames)
    return info.model_uri, case.frames, mlflow.get_tracking_uri()


def test_predicts_boxes_in_source_pixels(logged):
    uri, frame, _ = logged
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(frame)["detections"]
    assert len(out) == 2
    for detections, (_, row) in zip(out, frame.iterrows(), strict=True):
        assert 0 < len(detections) <= 5
        for d in detections:
            assert set(d) == {
                "label", "level", "score", "x0", "y0", "x1", "y1", "level_status", "level_probability", "level_scores"
            }  # fmt: skip
            assert d["label"] == "vertebra" and len(d["level_scores"]) == len(LEVELS)
            # An untrained model sees no anchor: a level is named only when its status says so.
            assert d["level_status"] in {"identified", "uncertain", "outside"}
            assert (d["level"] in LEVELS) == (d["level_status"] == "identified")
            # boxes are in the frame's pixels, clipped to it (not the letterboxed network input)
            assert 0 <= d["x0"] < d["x1"] <= row["width"] and 0 <= d["y0"] < d["y1"] <= row["height"]
    assert model.metadata.signature.inputs.input_names() == ["pixels", "dtype", "height", "width", "pixel_spacing"]


def test_is_logged_from_code_not_pickled(logged):
    from radlake.models.pyfunc import MODEL_CODE

    uri, _, _ = logged
    flavor = mlflow.models.get_model_info(uri).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(flavor["model_code_path"]).name == MODEL_CODE.name and "python_model" not in flavor
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert (local / MODEL_CODE.name).read_text() == MODEL_CODE.read_text()
    assert not list(local.glob("python_model.pkl*")) and (local / "code" / "radlake" / "models" / "pyfunc.py").is_file()


def test_loads_in_a_fresh_process_without_unpickling(logged):
    uri, _, tracking = logged
    code = (
        f"import mlflow, json; mlflow.set_tracking_uri({tracking!r}); m = mlflow.pyfunc.load_model({uri!r}); "
        "print(json.dumps(m.metadata.get_input_schema().input_names()))"
    )
    # MLflow refuses to unpickle a pyfunc under this setting: the model loads from its code.
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])[0] == "pixels"


def test_runs_as_a_spark_udf(spark, logged):
    uri, frame, _ = logged
    udf = mlflow.pyfunc.spark_udf(spark, uri, result_type=udf_result_type(), env_manager="local")
    df = spark.createDataFrame(frame.assign(height=frame.height.astype("int64"), width=frame.width.astype("int64")))
    scored = df.withColumn("detections", udf("pixels", "dtype", "height", "width", "pixel_spacing").detections)
    rows = scored.select("height", "detections").collect()
    assert [len(r.detections) > 0 for r in rows] == [True, True]
    assert all(d.label == "vertebra" and d.x1 >= d.x0 for r in rows for d in r.detections)
    assert all(len(d.level_scores) == len(LEVELS) and d.level_status for r in rows for d in r.detections)


def test_params_raise_the_score_threshold(logged):
    uri, frame, _ = logged
    model = mlflow.pyfunc.load_model(uri)
    scores = sorted(d["score"] for row in model.predict(frame)["detections"] for d in row)
    best = scores[-1]
    kept = model.predict(frame, params={"score_threshold": best, "batch_size": 1})["detections"]
    assert [d["score"] for row in kept for d in row] == [pytest.approx(best, abs=1e-5)]  # batch 1: float noise
    above = model.predict(frame, params={"score_threshold": best + 1e-4})["detections"]
    assert [len(row) for row in above] == [0, 0]
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    assert params == {"score_threshold": 0.0, "batch_size": 8}


def test_udf_passes_params(spark, logged):
    from radlake.models.pyfunc import detections_column

    uri, frame, _ = logged
    df = spark.createDataFrame(frame)
    counts = [
        df.select(F.size(detections_column(spark, uri, params={"score_threshold": t})).alias("n")).first().n
        for t in (0.0, 1.01)
    ]
    assert counts[0] > 0 and counts[1] == 0


class _OlderDetector(mlflow.pyfunc.PythonModel):
    """What detectors logged before the level fields returned: no status, probability or evidence."""

    def predict(self, context, model_input, params=None):
        box = {"label": "vertebra", "level": "L3", "score": 0.9, "x0": 1.0, "y0": 2.0, "x1": 30.0, "y1": 20.0}
        return pd.DataFrame({"detections": [[box] for _ in range(len(model_input))]})


def test_a_detector_without_the_level_fields_still_runs_as_a_udf(spark, logged):
    from radlake.models.levels import _evidence
    from radlake.models.pyfunc import _signature, detection_fields, detections_column

    older_fields = ("label", "level", "score", "x0", "y0", "x1", "y1")

    import cloudpickle

    _, frame, _ = logged
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Spark's workers cannot import this test module
    try:
        with mlflow.start_run():
            model = _OlderDetector()
            signature = _signature(vertebra_spec(), older_fields)
            info = mlflow.pyfunc.log_model(name="older", python_model=model, signature=signature)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert detection_fields(info.model_uri) == older_fields
    df = spark.createDataFrame(frame)
    [row] = df.limit(1).select(detections_column(spark, info.model_uri).alias("d")).collect()
    [d] = row.d
    assert d.level == "L3" and d.level_status is None and d.level_scores is None
    # The stack decoding then takes the level it named as its only evidence.
    evidence = _evidence(d.asDict())
    assert int(np.argmax(evidence)) == LEVELS.index("L3")
