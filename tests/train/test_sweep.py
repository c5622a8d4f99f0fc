"""Sweeps on the labelled synthetic archive: pruned, failed and completed trials, the best one registered, resume.

One sweep (2 processes) serves the tests: phase 1 runs the three enqueued trials of the
space (a complete one, one pruned at epoch 2, one that crashes on an invalid image size);
then a trial is left RUNNING, as if its process had been killed, and the sweep is
started again through the command line with ``--trials 6``: the stale trial is marked
failed and two sampled trials bring the study to 6, not 9.

Pruning is made deterministic with a ``ThresholdPruner`` (validation AP below 0.5 from
epoch 2 on): a tiny model trained for 2-3 epochs scores about 0, so only trials that run a
third epoch are pruned. (A median pruner needs trials whose scores differ.)
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from radlake.config import load_config
from radlake.errors import ConfigError
from radlake.tables import Table, table_ref

SPACE = {
    "direction": "maximize",
    "metric": "map_50",
    "pruner": {"type": "threshold", "lower": 0.5, "n_warmup_steps": 2},
    "sampler": {"type": "random", "seed": 0},
    "params": {
        "learning_rate": {"type": "float", "low": 1.0e-3, "high": 5.0e-3, "log": True},
        "image_size": {"type": "int", "low": 64, "high": 96, "step": 32},
        "epochs": {"type": "int", "low": 2, "high": 3},
    },
    "enqueue": [
        {"learning_rate": 3.0e-3, "image_size": 64, "epochs": 2},  # completes
        {"learning_rate": 3.0e-3, "image_size": 64, "epochs": 3},  # pruned at epoch 2
        {"learning_rate": 3.0e-3, "image_size": 16, "epochs": 2},  # crashes: image_size >= 32
    ],
}


#: On top of :func:`conftest.training_overrides` (pruning reads every epoch's validation).
SWEEP_TRAINING = ("train.vertebra.max_train_minutes=3", "models.vertebra=sweep_vertebra")


@pytest.fixture(scope="module")
def sweep(tiny_training, spark, labelled_archive, tmp_path_factory):
    """Phase 1 (3 enqueued trials), a stale RUNNING trial, phase 2 through the CLI (--trials 6)."""
    import optuna
    from mlflow.optuna.storage import MlflowStorage

    from radlake.cli import main
    from radlake.train.sweep import trial_run_id
    from radlake.workflow.sweep import run_sweep

    root = tmp_path_factory.mktemp("sweep")
    warehouse = Path(table_ref(labelled_archive.config, Table.IMAGES).path).parent
    space = root / "space.yml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    overrides = tiny_training(root / "radlake", warehouse, *SWEEP_TRAINING)
    cfg = load_config("local", overrides=overrides)
    first = run_sweep(spark, cfg, "vertebra", trials=3, parallel=2, space=space, name="tiny")

    # A sweep killed mid-trial leaves its trial RUNNING: make one.
    storage = MlflowStorage(first.experiment_id)
    study = optuna.load_study(study_name="tiny", storage=storage)
    stale = study.ask()
    storage.flush_all_batches()

    summary = root / "summary.json"
    args = ["sweep", "vertebra", "--trials", "6", "--parallel", "2", "--space", str(space), "--name", "tiny"]
    args += ["--summary-json", str(summary), "--conf", "local"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    second = json.loads(summary.read_text())
    return cfg, first, second, trial_run_id(stale)


def _children(parent_run_id: str, experiment_id: str):
    runs = mlflow.MlflowClient().search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {int(r.data.tags["radlake.trial_number"]) if "radlake.trial_number" in r.data.tags else -1: r for r in runs}


def test_first_phase_has_completed_pruned_and_failed_trials(sweep):
    cfg, first, _, _ = sweep
    assert first.states == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1}
    runs = list(_children(first.parent_run_id, first.experiment_id).values())
    by_status = {r.info.status: r for r in runs}
    assert set(by_status) == {"FINISHED", "KILLED", "FAILED"}

    done = by_status["FINISHED"]
    assert done.data.params["epochs"] == "2" and done.data.params["config.train.vertebra.epochs"] == "2"
    assert "test_map_50" in done.data.metrics and done.data.tags["radlake.test_split_digest"]
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(done.info.run_id, "val_map_50")] == [0, 1]
    assert mlflow.models.get_model_info(f"runs:/{done.info.run_id}/model").signature is not None

    pruned = by_status["KILLED"]
    assert pruned.data.tags["radlake.pruned_reason"].startswith("val_map_50 0.")
    assert "at epoch 2" in pruned.data.tags["radlake.pruned_reason"]
    assert "test_map_50" not in pruned.data.metrics  # stopped before the test evaluation and the model
    assert len(client.get_metric_history(pruned.info.run_id, "val_map_50")) == 3

    failed = by_status["FAILED"]
    assert failed.data.tags["radlake.error"].startswith("ConfigError: ")
    assert "image_size" in failed.data.tags["radlake.error"]


def test_best_trial_is_registered_and_gated(sweep):
    cfg, first, _, _ = sweep
    client = mlflow.MlflowClient()
    assert first.registry is not None and first.registry["run_id"] == first.best_run_id
    challenger = client.get_model_version_by_alias("sweep_vertebra", "challenger")
    assert challenger.run_id in {first.best_run_id}
    assert client.get_model_version("sweep_vertebra", first.registry["version"]).tags["radlake.promoted"] in {
        "true",
        "false",
    }
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["mlflow.runName"] == "tiny"
    assert parent.data.params["sweep.metric"] == "val_map_50"


def test_resume_continues_to_six_trials_and_fails_the_stale_one(sweep):
    cfg, first, second, stale_run = sweep
    assert second["resumed"] is True and second["parent_run_id"] == first.parent_run_id
    assert sum(second["states"].values()) == 6, second["states"]
    assert second["states"]["FAIL"] == 2  # the crash and the interrupted trial
    stale = mlflow.MlflowClient().get_run(stale_run)
    assert stale.info.status == "FAILED"
    assert stale.data.tags["radlake.error"].startswith("interrupted:")
    runs = _children(first.parent_run_id, first.experiment_id)
    assert len(runs) == 6
    assert all(r.info.status in {"FINISHED", "KILLED", "FAILED"} for r in runs.values())
    registered = mlflow.MlflowClient().get_model_version_by_alias("sweep_vertebra", "challenger")
    assert registered.run_id == second["best_run_id"]


def test_parent_run_holds_the_leaderboard(sweep):
    import pandas as pd

    _, first, second, _ = sweep
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(first.parent_run_id, "leaderboard")}
    assert names == {"leaderboard/leaderboard.csv", "leaderboard/leaderboard.png"}
    local = mlflow.artifacts.download_artifacts(run_id=first.parent_run_id, artifact_path="leaderboard/leaderboard.csv")
    board = pd.read_csv(local)
    assert len(board) == 6 and board["rank"].tolist() == list(range(1, 7))
    assert set(board["status"]) >= {"FINISHED", "KILLED", "FAILED"}
    assert board.loc[0, "run_id"] == second["best_run_id"]
    assert "sweep_vertebra v" in "".join(board["registered"].fillna(""))
    tags = client.get_run(first.parent_run_id).data.tags
    assert tags["radlake.sweep.best_run_id"] == second["best_run_id"]


def test_the_sweep_and_its_trials_are_described(sweep):
    _, first, second, stale_run = sweep
    client = mlflow.MlflowClient()
    note = client.get_run(first.parent_run_id).data.tags["mlflow.note.content"]
    assert note.startswith("Optuna sweep tiny of the vertebra detector: 6 trials (") and "val_map_50" in note
    assert f"best trial {second['best_trial']}" in note and "registered as sweep_vertebra version" in note
    trials = _children(first.parent_run_id, first.experiment_id)
    notes = {r.info.run_id: r.data.tags.get("mlflow.note.content", "") for r in trials.values()}
    assert all(n.startswith("Trial ") and " of sweep tiny" in n for n in notes.values()), notes
    by_status = {r.info.status: notes[r.info.run_id] for r in trials.values() if r.info.run_id != stale_run}
    assert (
        " the vertebra detector with learning_rate " in by_status["FINISHED"]
        and "Done: val_map_50 " in by_status["FINISHED"]
    )
    assert "Pruned: val_map_50 " in by_status["KILLED"]
    assert "Interrupted: the sweep stopped while it ran" in notes[stale_run]


def test_runs_prints_a_leaderboard(sweep, capsys):
    from radlake.cli import main

    cfg, first, second, _ = sweep
    args = ["runs", "--experiment", "radlake-vertebra", "--metric", "val_map_50", "--top", "3", "--conf", "local"]
    args += ["--set", f"storage.root={cfg.storage.root}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "ranked by val_map_50 (higher is better)"
    assert lines[1].split()[:4] == ["rank", "run_name", "status", "trial"]
    assert len(lines) == 2 + 1 + 3  # title, header, rule, top 3
    assert second["best_run_id"][:8] in lines[3] and "(challenger" in out


def test_runs_names_an_unknown_experiment(sweep, capsys):
    from radlake.cli import main

    cfg = sweep[0]
    assert main(["runs", "--experiment", "nope", "--conf", "local", "--set", f"storage.root={cfg.storage.root}"]) == 2
    assert "No MLflow experiment named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"learning_rat": {"type": "float", "low": 0.1, "high": 1.0}}}, "unknown parameter 'learning_rat'"),
        ({"pruners": {"type": "median"}}, "unknown key 'pruners'"),
        ({"pruner": {"type": "median", "n_startup": 1}}, "unknown pruner option 'n_startup'"),
        ({"params": {"seed": {"type": "int", "low": 0, "high": 3}}}, "cannot vary between trials"),
        ({"enqueue": [{"momentum": 0.9}]}, "enqueue[0] names ['momentum']"),
        ({"params": {"image_size": {"type": "int", "low": 96}}}, "needs 'low' <= 'high'"),
    ],
)
def test_a_bad_space_file_is_a_config_error_naming_the_key(tmp_path, change, message):
    from radlake.train.space import load_space

    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump({**SPACE, "enqueue": [], **change}))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert message in str(err.value)


def test_cli_sweep_rejects_a_bad_space_before_spark(tmp_path, capsys):
    from radlake.cli import main

    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump({"params": {"colour": {"type": "categorical", "choices": ["red"]}}}))
    assert main(["sweep", "vertebra", "--trials", "2", "--space", str(path)]) == 2
    assert "unknown parameter 'colour'" in capsys.readouterr().err


def test_space_values_change_the_training_config():
    from radlake.train.space import apply_params, scaled_augment

    cfg = load_config("local")
    changed = apply_params(cfg, "vertebra", {"learning_rate": 0.01, "augment.noise_std": 0.0, "augment_strength": 0})
    assert changed.train.vertebra.learning_rate == 0.01 and not changed.train.vertebra.augment.enabled
    double = scaled_augment(cfg.train.vertebra.augment, 2.0)
    assert double.noise_std == pytest.approx(2 * cfg.train.vertebra.augment.noise_std)
    assert double.scale_range == pytest.approx((0.7, 1.3))
    with pytest.raises(ConfigError, match="train.vertebra.image_size"):
        apply_params(cfg, "vertebra", {"image_size": 16})


def test_prune_reason_names_the_median_of_completed_trials():
    import optuna

    from radlake.train.sweep import prune_reason

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for value in (0.4, 0.6):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, intermediate_values={0: value / 2, 1: value}, params={}, distributions={}
            )
        )
    trial = study.ask()
    trial.report(0.1, 1)
    assert trial.should_prune()
    reason = prune_reason(trial, "val_map_50", 0.1, 1)
    assert reason == "val_map_50 0.1000 at epoch 1 fell behind the median 0.5000 of 2 completed trials (MedianPruner)"


def test_a_sweep_killed_mid_trial_resumes_to_the_requested_total(lr_space, tiny_training, spark, sweep, tmp_path):
    """SIGKILL the whole sweep (driver and trial processes) while a trial trains, then start it again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg, first, _, _ = sweep
    space = lr_space
    overrides = [
        *tiny_training(cfg.storage.root_dir, cfg.storage.warehouse_dir, *SWEEP_TRAINING),
        "train.vertebra.image_size=64",
    ]
    # Long trials, so that one is surely caught training (a 2-epoch trial can end between two polls);
    # the resumed sweep below trains its trials for 2 epochs.
    overrides.append("train.vertebra.epochs=200")
    args = ["sweep", "vertebra", "--trials", "3", "--parallel", "2", "--space", str(space), "--name", "killed"]
    args += ["--no-register", *[x for item in overrides for x in ("--set", item)]]
    proc = subprocess.Popen(
        [sys.executable, "-m", "radlake", *args],
        start_new_session=True,  # its own process group: the kill takes the spawned trial processes too
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "killed.log").open("w"),
    )
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(first.experiment_id)
    training = None
    deadline = time.time() + 420  # as tests/test_stops.py waits: a busy machine starts trials slowly
    try:
        while time.time() < deadline and proc.poll() is None and training is None:
            time.sleep(1)
            running = client.search_runs(
                [experiment.experiment_id],
                "tags.`radlake.sweep` = 'killed' and attributes.status = 'RUNNING'",
            )
            training = next((r for r in running if any(k.startswith("val_") for k in r.data.metrics)), None)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    log = (tmp_path / "killed.log").read_text()[-3000:]
    assert training is not None, f"no trial of the sweep was seen training (exit {proc.returncode}):\n{log}"

    from radlake.workflow.sweep import run_sweep

    interrupted = {
        r.info.run_id
        for r in client.search_runs(
            [experiment.experiment_id], "tags.`radlake.sweep` = 'killed' and attributes.status = 'RUNNING'"
        )
        if "radlake.trial_number" in r.data.tags
    }
    assert training.info.run_id in interrupted
    result = run_sweep(
        spark,
        load_config("local", overrides=[*overrides[:-1], "train.vertebra.epochs=2"]),
        "vertebra",
        trials=3,
        parallel=2,
        space=space,
        name="killed",
        register=False,
    )
    assert result.resumed and sum(result.states.values()) == 3, result.states
    assert result.states["FAIL"] == len(interrupted) and result.states.get("COMPLETE", 0) == 3 - len(interrupted)
    trials = _children(result.parent_run_id, result.experiment_id)
    assert len(trials) == 3 and all(r.info.status in {"FINISHED", "FAILED"} for r in trials.values())
    for run_id in interrupted:
        killed = client.get_run(run_id)
        assert killed.info.status == "FAILED" and killed.data.tags["radlake.error"].startswith("interrupted:")
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
