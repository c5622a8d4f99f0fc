"""A trial ended by a stop is KILLED in MLflow but FAIL for Optuna (:class:`radlake.train.sweep.SweepStorage`).

The plain ``MlflowStorage`` maps KILLED to PRUNED; a stopped trial must not count as
pruned (the sampler would take its last value as an observation). No Spark, no training:
a study in a temporary sqlite store, with trials told by hand.
"""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow.optuna.storage import MlflowStorage
from optuna.trial import TrialState

from radlake.train.sweep import (
    ERROR_TAG,
    INTERRUPTED_TAG,
    SweepStorage,
    mark_interrupted,
    stop_trial,
    stop_trials,
    trial_storage_id,
)


@pytest.fixture
def experiment_id(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.create_experiment("sweep-storage", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(previous)


def test_a_stopped_trial_is_killed_in_mlflow_and_failed_for_optuna(experiment_id):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = SweepStorage(experiment_id)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    pruned, stopped, complete, left = (study.ask() for _ in range(4))
    pruned.report(0.1, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(complete, 0.5)
    storage.flush_all_batches()

    assert stop_trial(storage, trial_storage_id(stopped), "the sweep was stopped by SIGTERM while this trial ran")
    assert not stop_trial(storage, trial_storage_id(complete), "too late"), "a finished trial is left as it is"
    assert stop_trials(study, storage, "the sweep was stopped by SIGINT while this trial ran") == [left.number]

    client = mlflow.MlflowClient()
    for trial, signal_name in ((stopped, "SIGTERM"), (left, "SIGINT")):
        run = client.get_run(str(trial_storage_id(trial)))
        assert run.info.status == "KILLED" and run.data.tags[INTERRUPTED_TAG] == "true"
        assert run.data.tags[ERROR_TAG] == f"interrupted: the sweep was stopped by {signal_name} while this trial ran"
    assert client.get_run(str(trial_storage_id(complete))).info.status == "FINISHED"

    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.PRUNED, 1: TrialState.FAIL, 2: TrialState.COMPLETE, 3: TrialState.FAIL}
    plain = optuna.load_study(study_name="s", storage=MlflowStorage(experiment_id))
    seen_plain = {t.number: t.state for t in plain.trials}
    assert seen_plain[1] == TrialState.PRUNED, "why SweepStorage exists: KILLED alone reads as pruned"

    resumed = optuna.load_study(study_name="s", storage=SweepStorage(experiment_id))
    assert mark_interrupted(resumed, resumed._storage) == [], "a stopped trial is not RUNNING: resume leaves it"
    assert resumed.best_trial.number == complete.number
