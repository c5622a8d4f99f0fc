"""What the MLflow UI shows of the session's pipeline run: the experiment's kind, the runs' descriptions, the score
run's review PNGs and DICOM SR.

One ``mlflow run . -e main`` (the session fixture ``project_run`` of ``conftest.py``, shared with
``test_pipeline.py``) is read back from its store; the browser's view of the same things:
``make ui-screenshots`` (``bench/ui_screenshots.py``).
"""

from __future__ import annotations

import json

import mlflow
import pytest

from radlake.tracking import DESCRIPTION_TAG, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from radlake.workflow.pipeline import STEPS

#: How the description of each step's run begins once the step is done.
DONE = {
    "ingest": "Ingested ",
    "labels": "Imported ",
    "train_vertebra": "Trained the vertebra detector ",
    "promote_vertebra": "Registered ",
    "crops": "Cut ",
    "train_schmorl": "Trained the Schmorl's-node detector ",
    "promote_schmorl": "Registered ",
    "score": "Scored ",
}


@pytest.fixture
def runs(project_run):
    """``(config, parent, {step: run})`` of the session's pipeline run, with MLflow back on its store."""
    from radlake.tracking import configure_mlflow

    cfg, parent = project_run
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return cfg, client.get_run(parent.info.run_id), {r.data.tags["radlake.step"]: r for r in children}


def test_the_experiments_open_on_the_model_training_view(runs):
    cfg, parent, children = runs
    client = mlflow.MlflowClient()
    experiments = {parent.info.experiment_id} | {r.info.experiment_id for r in children.values()}
    for experiment_id in experiments:
        assert client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING_KIND


def test_every_run_of_the_pipeline_has_a_one_line_description_of_what_it_did(runs):
    cfg, parent, children = runs
    assert sorted(children) == sorted(STEPS)
    notes = {step: run.data.tags.get(DESCRIPTION_TAG, "") for step, run in children.items()}
    for step, note in notes.items():
        assert note.startswith(DONE[step]) and "\n" not in note and note.endswith("."), (step, note)
    assert f"{cfg.models.vertebra} version" in notes["promote_vertebra"] and "promoted" in notes["promote_vertebra"]
    assert "test mAP@0.5" in notes["train_vertebra"] and "test AP@0.3" in notes["train_schmorl"]
    assert children["promote_schmorl"].data.tags["output.schmorl_model"] in notes["score"]
    summary = parent.data.tags[DESCRIPTION_TAG]
    assert summary.startswith(f"radlake pipeline: {', '.join(STEPS)} in ") and "one child run per step" in summary


def test_the_score_run_carries_the_review_pngs_and_the_sr_summary(runs):
    _, _, children = runs
    score = children["score"]
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{score.info.run_id}/score/summary.json"))
    assert any(a.startswith("review/") and a.endswith(".png") for a in summary["artifacts"])
    sr = json.loads(mlflow.artifacts.load_text(f"runs:/{score.info.run_id}/sr/summary.json"))
    assert sr["studies_shown"] and sr["files"] == [a for a in summary["artifacts"] if a.endswith(".dcm")]
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(score.info.run_id)}
    assert {"review", "sr", "score"} <= listed
