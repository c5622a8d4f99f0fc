"""radlake's MLflow set-up for the UI: experiments of the model-training kind, run descriptions, links."""

from __future__ import annotations

import mlflow
import pytest

from radlake.config import load_config
from radlake.tracking import (
    DESCRIPTION_TAG,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    configure_mlflow,
    describe_run,
    ui_link,
)


@pytest.fixture
def config(tmp_path):
    """A local configuration whose sqlite store and artifacts live in this test's folder."""
    return load_config("local", overrides=[f"storage.root={tmp_path}", "environment=test"])


def _kind(name: str) -> str | None:
    return mlflow.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)


def test_experiments_radlake_creates_are_model_training(config):
    configure_mlflow(config)
    configure_mlflow(config, "radlake-vertebra")
    assert _kind(config.mlflow.experiment) == MODEL_TRAINING_KIND == "custom_model_development"
    assert _kind("radlake-vertebra") == MODEL_TRAINING_KIND


def test_experiments_that_exist_become_model_training_unless_their_kind_was_chosen(config):
    configure_mlflow(config)  # the store, then experiments made elsewhere (an older radlake, `mlflow run`)
    mlflow.create_experiment("older")
    mlflow.create_experiment("guessed", tags={EXPERIMENT_KIND_TAG: "genai_development_inferred"})
    mlflow.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("older", "guessed", "chosen"):
        configure_mlflow(config, name)
    assert _kind("older") == _kind("guessed") == MODEL_TRAINING_KIND
    assert _kind("chosen") == "genai_development"


def test_a_run_description_is_one_line_on_the_active_run_or_a_given_one(config):
    experiment_id = configure_mlflow(config)
    with mlflow.start_run() as run:
        describe_run("Scored 12 frames\n  with two models.")
    describe_run("Later:  another line.", run_id=run.info.run_id)
    with mlflow.start_run(experiment_id=experiment_id) as other:
        describe_run("First.")
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.tags[DESCRIPTION_TAG] == "Later: another line."
    assert client.get_run(other.info.run_id).data.tags["mlflow.note.content"] == "First."
    with pytest.raises(ValueError, match="No active MLflow run"):
        describe_run("Nobody.")
    with pytest.raises(ValueError, match="'text'"):
        describe_run(" \n", run_id=run.info.run_id)


def test_ui_links_open_on_the_model_training_view():
    assert (
        ui_link(experiment_id="2", run_id="ab12", base_url="http://127.0.0.1:5111/")
        == "http://127.0.0.1:5111/#/experiments/2/runs/ab12?workflowType=machine_learning"
    )
    assert ui_link(experiment_id="2").endswith("/#/experiments/2?workflowType=machine_learning")
    assert ui_link(model="main.radlake.vertebra_detector", version=3) == (
        "http://127.0.0.1:5000/#/models/main.radlake.vertebra_detector/versions/3?workflowType=machine_learning"
    )
    for bad in ({}, {"experiment_id": "1", "model": "m"}, {"run_id": "r", "model": "m"}, {"version": 1}):
        with pytest.raises(ValueError, match="Give one of|needs its"):
            ui_link(**bad)
