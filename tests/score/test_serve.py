"""Real-time serving: ``mlflow models serve`` of the registered champion answers like the batch Spark UDF."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from radlake.models.detector import REGRESSION_BIAS, build_detector, vertebra_spec
from radlake.models.model_input import model_input_frames
from radlake.models.pyfunc import INPUT_COLUMNS, detections_column, log_detector
from radlake.models.serving import images_row_request
from radlake.tables import Table, table_ref

MODEL_NAME = "vertebra_detector"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
#: Below the untrained detector's scores, above FCOS's candidate floor: some boxes, not all.
PARAMS = {"score_threshold": 0.06}
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def image_row(spark, labelled_archive):
    """One real sagittal ``images`` row (the frame as stored, with its transform columns)."""
    images = table_ref(labelled_archive.config, Table.IMAGES).read(spark)
    return images.where("plane = 'SAGITTAL' AND pixels IS NOT NULL").orderBy("sop_instance_uid", "frame_index").first()


@pytest.fixture(scope="module")
def store(tmp_path_factory, image_row):
    """A sqlite MLflow store holding a small untrained detector, registered and aliased ``champion``."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        spec = vertebra_spec(image_size=128, score_threshold=0.3, detections_per_image=7)
        torch.manual_seed(0)
        model = build_detector(spec)
        # untrained FCOS: start the box distances at one anchor size (see tests/models/test_pyfunc.py)
        torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
        example = pd.DataFrame([{c: image_row[c] for c in INPUT_COLUMNS}])
        experiment = mlflow.create_experiment("serve-test", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_detector(model, spec, input_example=example, registered_model_name=MODEL_NAME)
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", info.registered_model_version)
        yield uri
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(store_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID" and not k.startswith("MLFLOW_EXPERIMENT_")}
    env.update(MLFLOW_TRACKING_URI=store_uri, MLFLOW_REGISTRY_URI=store_uri)
    # `mlflow models serve` execs `uvicorn` from PATH: this interpreter's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status


def _post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """``mlflow models serve`` of the champion on a free port; its process group is killed at teardown."""
    logs = tmp_path_factory.mktemp("serve-logs")
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        proc = subprocess.Popen(command, env=_server_env(store), stdout=out, stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if _get(f"{base}/ping") == 200:
                    break
            except OSError:
                pass
            stderr = (logs / "stderr").read_text(errors="replace")[-4000:]
            if proc.poll() is not None:
                pytest.fail(f"`mlflow models serve` exited with {proc.returncode} before /ping answered:\n{stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"`mlflow models serve` did not answer /ping within {START_TIMEOUT_S} s:\n{stderr}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_served_answer_equals_the_batch_udf(spark, labelled_archive, image_row, store, server):
    status, text = _post(f"{server}/invocations", json.dumps(images_row_request(image_row, PARAMS)).encode())
    assert status == 200, text[-2000:]
    (served,) = json.loads(text)["predictions"]
    served = served["detections"]

    images = table_ref(labelled_archive.config, Table.IMAGES).read(spark)
    one = images.where(
        (images.sop_instance_uid == image_row.sop_instance_uid) & (images.frame_index == image_row.frame_index)
    )
    frames = model_input_frames(one)  # what scoring gives the UDF: each frame's values
    (batch,) = frames.select(detections_column(spark, MODEL_URI, params=PARAMS).alias("d")).collect()
    batch = [d.asDict() for d in batch.d]

    assert 0 < len(served) == len(batch)
    assert [d["level"] for d in served] == [d["level"] for d in batch]
    assert [d["label"] for d in served] == [d["label"] for d in batch]
    for got, want in zip(served, batch, strict=True):
        for key in ("score", "x0", "y0", "x1", "y1"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), key
    assert min(d["score"] for d in served) >= PARAMS["score_threshold"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"dataframe_split": ', "valid JSON"),
        (json.dumps({"dataframe_split": {"columns": ["dtype"], "data": [["float16"]]}}).encode(), "pixels"),
    ],
    ids=["not-json", "missing-columns"],
)
def test_malformed_request_is_a_client_error(server, body, expected):
    status, text = _post(f"{server}/invocations", body)
    assert 400 <= status < 500, (status, text[-2000:])
    assert expected in json.loads(text)["message"]
