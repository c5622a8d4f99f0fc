"""Models and the classic-only helpers over Spark Connect, in this process (``make connect-test``).

A Spark Connect client session of the ``connect_server`` fixture runs here:

- a registered detector scored through :func:`radlake.models.pyfunc.detections_column`
  gives what the model gives on the client, with the client's MLflow store moved away
  before the query runs: the model reached the server's Python workers with the session
  (:mod:`radlake.models.shipped`), not through the store;
- a model goes to a session once;
- :mod:`radlake.spark`'s persist and plan helpers and the training cache key take their
  Spark Connect paths.

The client session turns the process's Spark Connect mode on (``SPARK_CONNECT_MODE_ENABLED``);
the fixture restores the environment afterwards. Marked ``connect``.
"""

from __future__ import annotations

import os
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from radlake.config import load_config
from radlake.dicom.pixels import encode_pixels
from radlake.models.detector import REGRESSION_BIAS, build_detector, vertebra_spec
from radlake.models.pyfunc import detection_fields, detections_column, log_detector
from radlake.tracking import configure_mlflow

pytestmark = pytest.mark.connect

#: What a Spark Connect client session sets in the process environment.
CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")
FRAME_SCHEMA = "pixels binary, dtype string, height long, width long, pixel_spacing array<double>"


@pytest.fixture(scope="module")
def remote(connect_server):
    """A Spark Connect client session of the test server; the process's environment is restored after."""
    from pyspark.sql import SparkSession

    saved = {k: os.environ.get(k) for k in CONNECT_ENV}
    session = SparkSession.builder.remote(connect_server.url).getOrCreate()
    yield session
    session.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _frames(n: int = 3, size: int = 64) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        image = np.zeros((size, size), np.float32)
        image[8 + 4 * i : 40 + 4 * i, 16:48] = 900.0  # a bright block: something to find
        buf, dtype = encode_pixels(image + rng.normal(0, 20, image.shape).astype(np.float32))
        rows.append({"pixels": buf, "dtype": dtype, "height": size, "width": size, "pixel_spacing": [1.0, 1.2]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A seeded, confident vertebra detector registered in a sqlite store of its own: (config, URI)."""
    root = tmp_path_factory.mktemp("connect-models")
    cfg = load_config("local", overrides=[f"storage.root={root}", "environment=test"])
    configure_mlflow(cfg)
    torch.manual_seed(1)
    spec = vertebra_spec(image_size=64, score_threshold=0.0, detections_per_image=4)
    model = build_detector(spec)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 3.0)
    with mlflow.start_run(run_name="connect-model"):
        info = log_detector(model, spec, input_example=_frames(1), registered_model_name="connect_test_vertebra")
    return cfg, f"models:/connect_test_vertebra/{info.registered_model_version}"


def _rows(detections) -> list[list[dict]]:
    """Detections as plain, comparable lists of dicts (floats rounded)."""

    def plain(value):
        if isinstance(value, float):
            return value
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(v) for v in value]
        return value

    out = []
    for row in detections:
        out.append([{k: plain(v) for k, v in (d.asDict() if hasattr(d, "asDict") else d).items()} for d in row])
    return out


def _shipped() -> set[tuple[str, str]]:
    from radlake.models import shipped

    return set(shipped._SHIPPED)


def test_detector_runs_on_the_server_without_the_clients_store(remote, registered):
    from radlake.models.shipped import ARCHIVE_PREFIX

    cfg, uri = registered
    frames = _frames()
    params = {"score_threshold": 0.0, "batch_size": 2}
    fields = detection_fields(uri)
    expected = mlflow.pyfunc.load_model(uri).predict(frames, params=params)["detections"]
    expected = [[{f: d.get(f) for f in fields} for d in row] for row in expected]
    column = detections_column(remote, uri, params)  # ships the model with the session
    store = cfg.storage.root_dir
    moved = store.with_name(store.name + "-moved")
    shutil.move(store, moved)  # the client's MLflow store (sqlite file and artifacts) is gone now
    try:
        found = remote.createDataFrame(frames, FRAME_SCHEMA).select(column.alias("d")).collect()
    finally:
        shutil.move(moved, store)
    got = _rows(r["d"] for r in found)
    assert sum(len(row) for row in got) > 0
    want = _rows(expected)
    assert [len(row) for row in got] == [len(row) for row in want]
    for row_got, row_want in zip(got, want, strict=True):  # floats: batches of other sizes on the server
        for d_got, d_want in zip(row_got, row_want, strict=True):
            assert d_got.keys() == d_want.keys()
            for name, value in d_want.items():
                assert d_got[name] == (
                    pytest.approx(value, abs=1e-3) if name not in ("label", "level_status", "level") else value
                ), name
    assert any(name.startswith(ARCHIVE_PREFIX) for _, name in _shipped())


def test_a_model_goes_to_a_session_once(remote, registered, monkeypatch):
    from radlake.models import shipped

    _, uri = registered
    sent: list[tuple] = []
    original = type(remote).addArtifacts
    monkeypatch.setattr(type(remote), "addArtifacts", lambda self, *a, **k: sent.append(a) or original(self, *a, **k))
    first = shipped.ship_model(remote, uri)
    again = shipped.ship_model(remote, uri)
    assert first == again and first.startswith(shipped.ARCHIVE_PREFIX) and first.endswith(".tar.gz")
    assert len(sent) <= 1  # the detector test may have shipped it already: then nothing is sent
    assert (str(remote.session_id), first) in shipped._SHIPPED


def test_classic_only_helpers_take_their_connect_paths(remote, connect_server, tmp_path):
    from pyspark.sql import SparkSession

    from radlake.data.converter import cache_key
    from radlake.spark import analyzed_plan_text, file_sources, is_connect, persist, unpersist

    assert is_connect(remote)
    path = str(tmp_path / "t")
    remote.range(20).selectExpr("id", "id % 3 AS k").write.format("delta").save(path)
    remote.range(20, 25).selectExpr("id", "id % 3 AS k").write.format("delta").mode("append").save(path)
    query = remote.read.format("delta").option("versionAsOf", 0).load(path).where("k = 1")
    cached = persist(query)
    assert cached.count() == 7
    unpersist(cached)
    plan = analyzed_plan_text(query)
    assert "Filter" in plan and "Analyzed Logical Plan" not in plan and "Optimized" not in plan
    assert file_sources(query) is None
    key = cache_key(query, {"t": 0})
    assert key == cache_key(remote.read.format("delta").option("versionAsOf", 0).load(path).where("k = 1"), {"t": 0})
    assert key != cache_key(query, {"t": 1})
    other = SparkSession.builder.remote(connect_server.url).create()  # a session of its own, as a later run has
    try:
        assert other.session_id != remote.session_id
        again = other.read.format("delta").option("versionAsOf", 0).load(path).where("k = 1")
        assert cache_key(again, {"t": 0}) == key  # with the versions given, a later run reuses the entry
    finally:
        other.stop()


# ------------------------------------------------------- the steps after ingest, in this process

#: Settings of the in-process steps: scores and crops from untrained but confident models.
STEP_SETTINGS = (
    "environment=test",
    "crops.size=64",
    "crops.source=both",
    "crops.min_score=0.0",
    "score.vertebra_threshold=0.0",
    "score.schmorl_threshold=0.0",
    "models.vertebra=connect_steps_vertebra",
    "models.schmorl=connect_steps_schmorl",
)


def _register_pair(cfg) -> None:
    """An untrained, seeded, confident detector pair, each the champion of its registered model."""
    from radlake.models.detector import schmorl_spec

    configure_mlflow(cfg)
    for spec, name, seed in (
        (vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6), cfg.models.vertebra, 1),
        (schmorl_spec(image_size=64, score_threshold=0.0, detections_per_image=3), cfg.models.schmorl, 2),
    ):
        torch.manual_seed(seed)
        model = build_detector(spec)
        torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
        torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 3.0)
        with mlflow.start_run(run_name=f"connect-steps-{spec.name}"):
            info = log_detector(model, spec, input_example=_frames(1), registered_model_name=name)
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))


@pytest.fixture(scope="module")
def steps(remote, tmp_path_factory):
    """A one-study archive ingested, labelled, cropped and scored over Spark Connect: (config, crops, score)."""
    from radlake.data.crops import make_crops
    from radlake.data.labels import import_labels
    from radlake.ingest.job import run_ingest
    from radlake.score.job import score_archive
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    root = tmp_path_factory.mktemp("connect-steps")
    synth = SynthConfig(studies=1, seed=7, image_size=128, sagittal_slices=5, axial_slices=1, coronal_slices=1)
    archive = generate_archive(root / "archive", synth)
    cfg = load_config("local", overrides=[f"storage.root={root / 'radlake'}", *STEP_SETTINGS])
    saved = os.environ.get("RADLAKE_DEID_KEY")
    os.environ["RADLAKE_DEID_KEY"] = "radlake-connect-steps"
    try:
        run_ingest(remote, cfg, archive=str(root / "archive"))
        import_labels(remote, cfg, archive.labels_path)
    finally:
        if saved is None:
            os.environ.pop("RADLAKE_DEID_KEY", None)
        else:
            os.environ["RADLAKE_DEID_KEY"] = saved
    _register_pair(cfg)
    return cfg, make_crops(remote, cfg), score_archive(remote, cfg)


def test_crops_and_score_run_over_spark_connect(remote, steps):
    from radlake.data.crops import make_crops
    from radlake.score.job import score_archive
    from radlake.tables import Table, table_ref

    cfg, crops, score = steps
    assert crops.new_crops > 0 and crops.frames > 0
    assert table_ref(cfg, Table.VERTEBRA_CROPS).read(remote).count() == crops.new_crops
    images = table_ref(cfg, Table.IMAGES).read(remote).count()
    assert score.frames_scored == score.frames_in_images == images > 0
    assert score.vertebrae > 0
    assert table_ref(cfg, Table.PREDICTIONS).read(remote).count() == images
    assert make_crops(remote, cfg).new_crops == 0  # nothing new to crop
    again = score_archive(remote, cfg)
    assert again.frames_scored == 0 and again.frames_already_scored == images


def test_export_sr_and_the_notebooks_queries_run_over_spark_connect(remote, steps, tmp_path):
    import pydicom

    from radlake.score.sr import export_sr
    from radlake.workflow import explore

    cfg, _, score = steps
    exported = export_sr(remote, cfg, out_dir=tmp_path / "sr")
    assert exported.studies == 1 and len(exported.files) == 1
    assert pydicom.dcmread(exported.files[0]).Modality == "SR"
    counts = explore.archive_counts(remote, cfg)
    assert counts["frames"] == score.frames_in_images
    assert explore.series_by_plane(remote, cfg).count() > 0
    assert explore.transfer_syntaxes(remote, cfg).count() > 0
    assert len(explore.thumbnails(remote, cfg, count=1, planes=["SAGITTAL"]).collect()) == 1
    pair = explore.latest_model_pair(remote, cfg)
    assert explore.level_counts(remote, cfg, pair).toPandas().shape[0] > 0
    assert explore.scoring_coverage(remote, cfg).count() > 0
