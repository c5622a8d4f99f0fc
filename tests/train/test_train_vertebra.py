"""The vertebra training stage end to end on the labelled synthetic archive: DDP, MLflow, registry, pyfunc.

One short training (2 DDP processes, 2 epochs at 128 px) serves every test; what is
checked is that the run is complete and traceable, not the model's quality (that is
the demo's quality bar, reported by ``make demo``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest

from radlake.config import VERTEBRA_DEFAULTS
from radlake.data.view import NoTrainingDataError
from radlake.models.resolve import ModelNotFoundError, resolve_model_uri
from radlake.registry.promote import register_and_promote
from radlake.train.run import get_stage, train_detector

TRAIN = [
    "train.vertebra.epochs=2",
    "train.vertebra.val_every_epochs=1",  # a validation per epoch: the curves below
    "train.vertebra.image_size=128",
    "train.vertebra.batch_size=2",
    "train.vertebra.num_processes=2",
    "train.vertebra.max_train_minutes=5",
    "train.vertebra.val_images_logged=2",
    "loader.num_workers=1",
]
#: The comparison tests below compare two barely trained models: no absolute floor.
NO_FLOORS = "train.vertebra.promotion_floors={}"


@pytest.fixture(scope="module")
def trained(spark, labelled_archive, test_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    from radlake.config import load_config

    cfg = load_config(
        "local",
        overrides=[
            f"storage.root={labelled_archive.config.storage.root}",
            *test_settings,
            f"loader.cache_dir={root / 'cache'}",
            *TRAIN,
            NO_FLOORS,
        ],
    )
    result = train_detector(spark, cfg, "vertebra")
    return cfg, result


def test_an_untrained_model_is_refused_as_champion_even_on_an_empty_registry(trained):
    cfg, result = trained
    floors = VERTEBRA_DEFAULTS["promotion_floors"]
    cfg = cfg.model_copy(
        update={
            "models": cfg.models.model_copy(update={"vertebra": "floor_test_vertebra"}),  # a registry with no model
            "train": cfg.train.model_copy(
                update={"vertebra": cfg.train.vertebra.model_copy(update={"promotion_floors": floors})}
            ),
        }
    )
    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["test_map_50"] < 0.8  # two epochs at 128 px: not a usable detector
    verdict = register_and_promote(cfg, get_stage("vertebra"), result.run_id)
    assert not verdict.promoted and verdict.previous_champion is None
    assert "under the promotion floors" in verdict.reason and "test_map_50" in verdict.reason
    client = mlflow.MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("floor_test_vertebra", "champion")
    assert str(client.get_model_version_by_alias("floor_test_vertebra", "challenger").version) == verdict.version
    tags = client.get_model_version("floor_test_vertebra", verdict.version).tags
    assert "test_map_50" in tags["radlake.floor_failures"] and tags["radlake.promoted"] == "false"


def test_run_logs_params_metrics_data_and_artifacts(spark, trained):
    cfg, result = trained
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["config.train.vertebra.epochs"] == "2"
    assert json.loads(run.data.tags["radlake.data_versions"]).keys() == {"images", "annotations", "splits"}
    assert run.data.tags["radlake.git_commit"]
    for key in ("test_map_50", "test_map", "test_detection_rate", "test_level_id_rate", "test_study_all_levels"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    history = client.get_metric_history(result.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1]
    assert all(m.value > 0 for m in history)
    assert len(client.get_metric_history(result.run_id, "val_map_50")) == 2
    inputs = {d.dataset.name.split("@")[0]: d.dataset for d in run.inputs.dataset_inputs}
    assert inputs.keys() == {"images", "annotations", "splits"}
    for dataset in inputs.values():  # the table's rows at its pinned version, counted by the JVM
        rows = spark.read.format("delta").option("versionAsOf", int(dataset.name.split("@v")[1]))
        assert json.loads(dataset.profile) == {"num_rows": rows.load(json.loads(dataset.source)["path"]).count()}
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/training_curves.png", "plots/precision_recall_test.png"} <= artifacts
    assert len(client.list_artifacts(result.run_id, "plots/val_examples")) >= 1
    assert "train:" in mlflow.artifacts.load_text(f"runs:/{result.run_id}/config/config.yml")
    note = run.data.tags["mlflow.note.content"]  # the run's description in the MLflow UI
    assert note.startswith("Trained the vertebra detector (tiny backbone, 2 epochs) on ") and "test mAP@0.5 " in note


def test_register_promote_and_keep_champion_on_a_tie(spark, trained, labelled_archive):
    cfg, result = trained
    stage = get_stage("vertebra")
    first = register_and_promote(cfg, stage, result.run_id)
    assert first.promoted and first.previous_champion is None
    again = register_and_promote(cfg, stage, result.run_id)  # the same model: a tie is not a win
    assert not again.promoted and again.previous_champion == first.version
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(cfg.models.vertebra, "champion").version) == first.version
    assert str(client.get_model_version_by_alias(cfg.models.vertebra, "challenger").version) == again.version
    tags = client.get_model_version(cfg.models.vertebra, again.version).tags
    assert tags["radlake.promoted"] == "false" and tags["radlake.compared_with"] == first.version
    resolved = resolve_model_uri(f"models:/{cfg.models.vertebra}@champion")
    assert resolved.uri == f"models:/{cfg.models.vertebra}/{first.version}" and resolved.run_id == result.run_id
    with pytest.raises(ModelNotFoundError, match="no alias 'nope'"):
        resolve_model_uri(f"models:/{cfg.models.vertebra}@nope")
    with pytest.raises(ModelNotFoundError, match="not one of"):
        resolve_model_uri("s3://bucket/model")


def test_champion_loads_in_a_fresh_process_and_scores_images_rows(spark, trained):
    cfg, result = trained
    from radlake.tables import Table, table_ref

    images = table_ref(cfg, Table.IMAGES).path
    code = f"""
import json, mlflow, pyarrow.dataset as ds
mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
model = mlflow.pyfunc.load_model("models:/{cfg.models.vertebra}@champion")
from radlake.dicom.pixels import VALUE_COLUMNS
from radlake.models.model_input import model_input_rows
rows = ds.dataset({images!r}, format="parquet").head(2, columns=[*VALUE_COLUMNS, "pixel_spacing"]).to_pandas()
out = model.predict(model_input_rows(rows))["detections"]
print(json.dumps([len(x) for x in out]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 2


def test_missing_tables_fail_with_a_clear_error(spark, tmp_path):
    from radlake.config import load_config

    cfg = load_config("local", overrides=[f"storage.root={tmp_path}", "spark.master=local[2]"])
    with pytest.raises(NoTrainingDataError, match="radlake ingest"):
        train_detector(spark, cfg, "vertebra")


def test_reproduce_retrains_from_the_logged_config_and_data_versions(spark, trained):
    from radlake.train.reproduce import reproduce

    cfg, result = trained
    again = reproduce(spark, cfg, result.run_id)
    assert again.new_run_id != result.run_id
    assert "train_loss" in again.metrics and "test_map_50" in again.metrics
    assert again.mismatched == [], again.table()
    new = mlflow.MlflowClient().get_run(again.new_run_id)
    assert new.data.tags["radlake.reproduces"] == result.run_id
    assert new.data.tags["mlflow.note.content"].startswith(f"Reproduces run {result.run_id}: Trained the vertebra")
    assert (
        new.data.tags["radlake.data_versions"]
        == mlflow.MlflowClient().get_run(result.run_id).data.tags["radlake.data_versions"]
    )
    with pytest.raises(ModelNotFoundError, match="No MLflow run"):
        reproduce(spark, cfg, "0" * 32)
