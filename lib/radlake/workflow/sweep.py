"""``radlake sweep``: a hyperparameter sweep of one detector, its best trial registered and gated.

:func:`run_sweep` is the one entry point (``radlake sweep``, ``jobs/sweep.py``). It reads as
its phases:

1. :func:`_study`: pin the tables and build the Parquet caches once
   (:func:`radlake.train.run.prepare_training_data`), and create the Optuna study in the
   MLflow store, or continue the one of that name (its data versions and vertebra model
   are kept in the study, so a resumed sweep trains on the same data).
2. :func:`_log_sweep_run`: the sweep's parent run gets its parameters, configuration,
   search space, datasets and tags.
3. :func:`_run_trials`: the trials run locally or on the Spark executors
   (:mod:`radlake.train.sweep`, which also says how a stop ends them).
4. :func:`_finish`: the best complete trial by ``val_<metric>`` (the final epoch's
   validation value: the test split stays out of model selection, so the promotion gate's
   test comparison is not biased by the sweep) is registered as ``challenger`` and goes
   through :func:`radlake.registry.promote.register_and_promote`. The parent run gets
   ``leaderboard/leaderboard.csv``, ``leaderboard/leaderboard.png`` and tags naming the
   best trial and run.

It lives above the registry because it registers; the trials themselves are training.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from radlake.config import RadlakeConfig, config_as_yaml
from radlake.console import Progress, polling, say, warn
from radlake.errors import ConfigError
from radlake.registry.leaderboard import plot_leaderboard, runs_frame
from radlake.registry.promote import register_and_promote
from radlake.stops import Stopped
from radlake.summary import Summary
from radlake.tracking import configure_mlflow, describe_run, detector_experiment, run_scope
from radlake.train.run import DETECTOR_WORDS, TrainingData, get_stage, log_dataset_inputs, prepare_training_data
from radlake.train.space import SearchSpace, default_space_path, load_space
from radlake.train.sweep import (
    SweepStorage,
    TrialObjective,
    mark_interrupted,
    open_study,
    run_local,
    run_on_executors,
    stop_trials,
    trial_run_id,
)

if TYPE_CHECKING:
    import optuna
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class SweepSummary(Summary):
    """What a sweep did, read back from the study at its end."""

    study_name: str
    detector: str
    experiment_id: str
    parent_run_id: str
    #: MLflow metric the trials are ranked by (``val_<metric>``, higher or lower is better per ``direction``).
    metric: str
    direction: str
    resumed: bool
    #: Trial state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING) → how many trials of the study are in it.
    states: dict[str, int]
    best_trial: int | None = None
    best_run_id: str | None = None
    best_value: float | None = None
    registry: dict[str, Any] | None = None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Study:
    """The study of a sweep, open, with the data its trials train on."""

    study: optuna.Study
    storage: SweepStorage
    data: TrainingData
    resumed: bool
    #: Trials a resume found left RUNNING and marked failed (their numbers).
    interrupted: list[int]


def run_sweep(
    spark: SparkSession,
    config: RadlakeConfig,
    detector: str,
    *,
    trials: int,
    parallel: int = 2,
    space: str | os.PathLike[str] | None = None,
    metric: str | None = None,
    timeout: float | None = None,
    name: str | None = None,
    on_executors: bool | None = None,
    register: bool = True,
) -> SweepSummary:
    """Run (or continue) the sweep ``name`` until its study holds ``trials`` trials; see the module docstring.

    Parameters
    ----------
    trials
        Total number of trials the study should hold (all states; a resumed study counts its old ones).
    parallel
        Trials running at a time (local processes, or Spark tasks on a cluster).
    space
        Search-space YAML (default ``conf/sweep/<detector>.yml``).
    metric
        Base metric name, e.g. ``map_50`` (default the space's, else the detector's primary metric);
        trials report and are ranked by ``val_<metric>``.
    timeout
        Seconds after which no new trial starts (running ones finish).
    name
        Study name (default ``<detector>-sweep``): the same name continues the same study.
    on_executors
        Spread trials over the Spark executors (default: when ``environment`` is dev or prod).
    register
        Register the best trial's model and run the promotion gate.

    Raises
    ------
    ConfigError
        For an unknown detector, a bad space file, ``trials`` < 1, ``parallel`` < 1, or a resumed
        study whose metric or direction differs from the request.
    """
    import optuna

    if trials < 1:
        raise ConfigError(f"Argument 'trials' must be >= 1, got {trials}.")
    if parallel < 1:
        raise ConfigError(f"Argument 'parallel' must be >= 1, got {parallel}.")
    stage = get_stage(detector)
    space_path = Path(space) if space is not None else default_space_path(detector)
    search = load_space(space_path)
    metric = metric or search.metric or stage.primary_metric
    name = name or f"{detector}-sweep"
    on_executors = config.environment in ("dev", "prod") if on_executors is None else on_executors
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    experiment_id = configure_mlflow(config, detector_experiment(config, detector))
    opened = _study(spark, config, SweepStorage(experiment_id), name, detector, search, metric)
    parent_run_id = opened.storage.get_study_id_from_name(name)
    opened.storage.flush_all_batches()
    with run_scope(run_id=parent_run_id):
        _log_sweep_run(spark, opened, stage, search, space_path, name, metric, trials=trials, parallel=parallel)
        _run_trials(opened, search, name, metric, experiment_id, trials, parallel, on_executors, timeout)
        return _finish(
            spark,
            config,
            opened.data,
            stage,
            opened.study,
            opened.storage,
            name,
            metric,
            register,
            opened.resumed,
            experiment_id,
        )


def _study(
    spark: SparkSession,
    config: RadlakeConfig,
    storage: SweepStorage,
    name: str,
    detector: str,
    search: SearchSpace,
    metric: str,
) -> _Study:
    """The study ``name``, continued if the store has it (checked against the request), else created.

    The training data is pinned and cached here: at the versions the study keeps when it
    is continued, at the tables' latest versions when it is new.

    Raises
    ------
    ConfigError
        If a continued study optimises another metric or direction, or trains another detector.
    """
    import optuna

    resumed = storage.get_study_id_by_name_if_exists(name) is not None
    versions = None
    if resumed:
        study = open_study(storage, name, search)
        attrs = study.user_attrs
        if attrs.get("metric") != metric:
            raise ConfigError(f"Study {name!r} optimises {attrs.get('metric')!r}, not {metric!r}: use another --name.")
        if study.direction.name.lower() != search.direction.value:
            raise ConfigError(f"Study {name!r} is {study.direction.name.lower()}d; the space says {search.direction}.")
        if attrs.get("detector") != detector:
            raise ConfigError(f"Study {name!r} trains {attrs.get('detector')!r}, not {detector!r}.")
        versions = attrs.get("data_versions")
        if attrs.get("vertebra_model_uri"):
            config = config.with_vertebra_model(attrs["vertebra_model_uri"])
    data = prepare_training_data(spark, config, detector, versions=versions)
    if not resumed:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=search.direction.value,
            sampler=search.make_sampler(),
            pruner=search.make_pruner(),
        )
        study.set_user_attr("detector", detector)
        study.set_user_attr("metric", metric)
        study.set_user_attr("data_versions", data.pinned)
        if data.stage_tags.get("radlake.vertebra_model_uri"):
            study.set_user_attr("vertebra_model_uri", data.stage_tags["radlake.vertebra_model_uri"])
        for fixed in search.enqueue:
            study.enqueue_trial(fixed)
    interrupted = mark_interrupted(study, storage) if resumed else []
    return _Study(study=study, storage=storage, data=data, resumed=resumed, interrupted=interrupted)


def _log_sweep_run(
    spark: SparkSession,
    opened: _Study,
    stage,
    search: SearchSpace,
    space_path: Path,
    name: str,
    metric: str,
    *,
    trials: int,
    parallel: int,
) -> None:
    """Parameters, configuration and datasets (a new study) and the space and tags (every start) on the parent run."""
    data = opened.data
    if not opened.resumed:
        mlflow.log_params(
            {
                "sweep.detector": data.detector,
                "sweep.metric": f"val_{metric}",
                "sweep.direction": search.direction.value,
                "sweep.pruner": search.pruner.type,
                "sweep.sampler": search.sampler.type,
                **{"data.rows." + k: v for k, v in data.sizes.items()},
            }
        )
        mlflow.log_text(config_as_yaml(data.config), "config/config.yml")
        log_dataset_inputs(spark, data.config, stage, data.pinned)
    mlflow.log_text(space_path.read_text(), "sweep/space.yml")
    mlflow.set_tags(
        {
            **data.tags(),
            "radlake.kind": "sweep",
            "radlake.sweep": name,
            "radlake.sweep.trials_requested": str(trials),
            "radlake.sweep.parallel": str(parallel),
            "radlake.sweep.resumed": str(opened.resumed).lower(),
            "radlake.sweep.interrupted_trials": json.dumps(opened.interrupted),
        }
    )
    continued = "Continues the" if opened.resumed else "The"
    describe_run(
        f"{continued} Optuna sweep {name} of the {_detector_words(data.detector)}: {trials} trials, {parallel} at a "
        f"time, ranked by val_{metric}."
    )


def _detector_words(detector: str) -> str:
    return DETECTOR_WORDS.get(detector, (f"{detector} detector",))[0]


def sweep_note(summary: SweepSummary) -> str:
    """The sweep run's one-line description once it is done: its trials, the best one and what became of it.

    Examples
    --------
    >>> s = SweepSummary("vertebra-sweep", "vertebra", "1", "r", "val_map_50", "maximize", False,
    ...                  {"COMPLETE": 3, "PRUNED": 1}, best_trial=2, best_value=0.8123,
    ...                  registry={"model_name": "vertebra_detector", "version": "4", "promoted": False})
    >>> print(sweep_note(s))  # doctest: +NORMALIZE_WHITESPACE
    Optuna sweep vertebra-sweep of the vertebra detector: 4 trials (3 complete, 1 pruned);
    best trial 2, val_map_50 0.812; registered as vertebra_detector version 4, not promoted.
    """
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.states.items()))
    head = (
        f"Optuna sweep {summary.study_name} of the {_detector_words(summary.detector)}: "
        f"{sum(summary.states.values())} trials ({states or 'none'})"
    )
    if summary.best_trial is None:
        return f"{head}; no trial completed, nothing registered."
    value = "n/a" if summary.best_value is None else f"{summary.best_value:.3f}"
    best = f"best trial {summary.best_trial}, {summary.metric} {value}"
    registry = summary.registry
    if not registry:
        return f"{head}; {best}, not registered."
    verdict = "promoted to champion" if registry.get("promoted") else "not promoted"
    return f"{head}; {best}; registered as {registry['model_name']} version {registry['version']}, {verdict}."


def _run_trials(
    opened: _Study,
    search: SearchSpace,
    name: str,
    metric: str,
    experiment_id: str,
    trials: int,
    parallel: int,
    on_executors: bool,
    timeout: float | None,
) -> None:
    """Run the trials the study still lacks to hold ``trials``; a stop ends the running ones as stopped."""
    import optuna

    study, data = opened.study, opened.data
    started = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    remaining = max(0, trials - len(started))
    if not remaining:
        return
    objective = TrialObjective(
        config=data.config,
        data=data,
        space=search,
        metric=metric,
        study_name=name,
        tracking_uri=mlflow.get_tracking_uri(),
        registry_uri=mlflow.get_registry_uri(),
        threads=None if on_executors else max(1, (os.cpu_count() or 1) // min(parallel, max(1, remaining))),
    )
    where = "Spark tasks" if on_executors else "local processes"
    say("sweep %s: %d trials to run, %d at a time in %s", name, remaining, parallel, where)
    try:
        with polling(_trial_progress(experiment_id, name, trials), every_s=10):
            if on_executors:
                run_on_executors(objective, opened.storage, search, remaining, parallel, timeout)
            else:
                deadline = time.time() + timeout if timeout else None
                run_local(objective, experiment_id, remaining, min(parallel, remaining), deadline)
    except KeyboardInterrupt as exc:  # the trial processes are gone (or their Spark jobs cancelled)
        stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
        stop_trials(study, opened.storage, f"the sweep was {stop} while this trial ran")
        raise


def _trial_progress(experiment_id: str, name: str, trials: int):
    """A progress report of the sweep's ended trial runs (children of the active run), for :func:`polling`.

    Read from MLflow with a client of its own, not through the study's storage, which the
    sweep itself uses meanwhile.
    """
    client = mlflow.MlflowClient()
    parent = mlflow.active_run().info.run_id
    progress = Progress(f"sweep {name}", total=trials, unit="trials ended")
    words = {"FINISHED": "complete", "KILLED": "pruned or stopped", "FAILED": "failed"}
    shown = {"done": -1}

    def report() -> None:
        runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
        states: dict[str, int] = {}
        for run in runs:
            if run.info.status in words:
                states[words[run.info.status]] = states.get(words[run.info.status], 0) + 1
        done = sum(states.values())
        if done != shown["done"]:
            shown["done"] = done
            progress.update(done, detail=", ".join(f"{v} {k}" for k, v in sorted(states.items())))

    return report


def _finish(spark, config, data, stage, study, storage, name, metric, register, resumed, experiment_id) -> SweepSummary:
    """Best trial → registry; leaderboard and tags on the active parent run."""
    import matplotlib.pyplot as plt
    import optuna

    storage.flush_all_batches()
    client = mlflow.MlflowClient()
    key = f"val_{metric}"
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    best = None
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(complete, key=lambda t: (t.value, -t.number))
    registry = None
    tags = {"radlake.sweep.states": json.dumps(states, sort_keys=True)}
    if best is not None:
        best_run = trial_run_id(best)
        if stage.evaluate is not None:  # the Schmorl's end-to-end metrics need Spark: on the driver
            extra = stage.evaluate(spark, data.config, data.pinned, f"runs:/{best_run}/model")
            now = int(time.time() * 1000)
            client.log_batch(best_run, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in extra.items()])
        if register:
            registry = register_and_promote(data.config, stage, best_run)
            configure_mlflow(config, detector_experiment(config, data.detector))
            tags["radlake.sweep.registered_version"] = registry.version
            tags["radlake.sweep.promoted"] = str(registry.promoted).lower()
        tags.update(
            {
                "radlake.sweep.best_trial": str(best.number),
                "radlake.sweep.best_run_id": best_run,
                "radlake.sweep.best_value": f"{best.value:.6g}",
            }
        )
        mlflow.log_metric(f"best_{key}", float(best.value))
    else:
        tags["radlake.sweep.best_trial"] = "none"
        warn(f"sweep {name}: no trial completed, so nothing was registered")
    mlflow.set_tags(tags)
    parent = mlflow.active_run().info.run_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
    frame = runs_frame(children, metric=key, client=client)
    if not frame.empty:
        mlflow.log_text(frame.to_csv(index=False), "leaderboard/leaderboard.csv")
        fig = plot_leaderboard(frame, key, title=f"{name}: {key} per trial")
        mlflow.log_figure(fig, "leaderboard/leaderboard.png")
        plt.close(fig)
    board = [] if frame.empty else json.loads(frame.to_json(orient="records"))
    summary = SweepSummary(
        study_name=name,
        detector=data.detector,
        experiment_id=experiment_id,
        parent_run_id=parent,
        metric=key,
        direction=study.direction.name.lower(),
        resumed=resumed,
        states=states,
        best_trial=best.number if best else None,
        best_run_id=trial_run_id(best) if best else None,
        best_value=float(best.value) if best and not math.isnan(best.value) else None,
        registry=registry.as_dict() if registry else None,
        leaderboard=board,
    )
    describe_run(sweep_note(summary))
    return summary
