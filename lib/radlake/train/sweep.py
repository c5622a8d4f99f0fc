"""Hyperparameter sweeps: an Optuna study whose trials are nested MLflow runs, P at a time.

:func:`run_sweep` is the one entry point (``radlake sweep``, ``jobs/sweep.py``):

1. The study lives in the MLflow tracking store (:class:`mlflow.optuna.storage.MlflowStorage`):
   the study is an MLflow run (the sweep's parent run, named after the study) and every
   trial is a child run of it, whose status *is* the trial's state (RUNNING, FINISHED =
   complete, KILLED = pruned, FAILED). Locally that is the sqlite database of the MLflow
   store, so a sweep started again with the same name continues the same study. (An
   Optuna ``RDBStorage`` on the same sqlite file fails: both keep an ``alembic_version``
   table.) The data versions are pinned once, when the study is created, and kept in it.
2. The parent pins the tables and builds the Parquet caches once
   (:func:`radlake.train.run.prepare_training_data`); every trial trains on them in one
   process (no DDP inside a trial: parallelism is across trials) by calling
   :func:`radlake.train.worker.train_worker` with a per-epoch callback that reports
   ``val_<metric>`` to Optuna and raises :class:`optuna.TrialPruned` when the pruner says so.
3. Locally, P spawned processes pull trials from the study (``ask`` under a lock, so two
   never take the same enqueued trial) until the study holds ``trials`` trials; on a
   cluster :class:`mlflow.pyspark.optuna.study.MlflowSparkStudy` spreads them over the
   Spark executors.
4. A pruned trial's run ends KILLED with tag ``radlake.pruned_reason``; a crashed one
   FAILED with tag ``radlake.error`` (the sweep goes on). A sweep stopped by SIGTERM or
   SIGINT (:mod:`radlake.stops`) ends its running trials KILLED with tags
   ``radlake.interrupted`` and ``radlake.error`` "interrupted: ...", and its parent run
   KILLED: each trial process ends its own trial, then the parent ends any left. KILLED
   alone reads back as *pruned* in this storage, so a stopped trial also carries the
   system attribute :data:`INTERRUPTED_ATTR`, and :class:`SweepStorage` reads it as failed:
   it is no pruned trial to the sampler or in the study's counts. Trials left RUNNING by a
   sweep that could not end them (SIGKILL, a lost machine) are marked FAILED with
   ``radlake.error`` "interrupted: ..." when the sweep is started again. Either way the
   sweep, started again, continues its study.
5. The best complete trial by ``val_<metric>`` (the final epoch's validation value: the
   test split stays out of model selection, so the promotion gate's test comparison is
   not biased by the sweep) is registered as ``challenger`` and goes through
   :func:`radlake.registry.promote.register_and_promote`. The parent run gets
   ``leaderboard/leaderboard.csv``, ``leaderboard/leaderboard.png`` and tags naming the
   best trial and run.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.optuna.storage import MlflowStorage
from optuna.trial import TrialState

from radlake.config import RadlakeConfig, config_as_yaml
from radlake.errors import ConfigError
from radlake.stops import Stopped, die_with_parent, handle_stops
from radlake.tracking import configure_mlflow, detector_experiment, run_scope
from radlake.train.run import (
    TrainingData,
    get_stage,
    log_dataset_inputs,
    log_run_config,
    prepare_training_data,
    worker_settings,
)
from radlake.train.space import SearchSpace, apply_params, default_space_path, load_space

if TYPE_CHECKING:
    import optuna
    from pyspark.sql import SparkSession

_logger = logging.getLogger(__name__)

#: Tag on a pruned trial's run: which value fell behind, at which epoch, against what.
PRUNED_REASON_TAG = "radlake.pruned_reason"
#: Tag on a failed trial's run: the exception (class: message), or why it was interrupted.
ERROR_TAG = "radlake.error"
#: Longest error text kept in a tag (MLflow allows 8,000 characters).
MAX_TAG_CHARS = 4000
#: Tag (``"true"``) on a trial's run that a stop ended, or that a resume found left RUNNING.
INTERRUPTED_TAG = "radlake.interrupted"
#: Trial system attribute (True) of a trial a stop ended: its run is KILLED, but it was not pruned.
INTERRUPTED_ATTR = "radlake_interrupted"


def trial_storage_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial):
    """A trial's id in its storage (what ``storage.set_trial_state_values`` takes).

    Optuna has no public accessor for it, so this reads ``_trial_id`` in one place.
    """
    return trial._trial_id


def trial_run_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> str:
    """The MLflow run id of a trial: with ``MlflowStorage`` a trial's storage id is its run id."""
    return str(trial_storage_id(trial))


class SweepStorage(MlflowStorage):
    """:class:`~mlflow.optuna.storage.MlflowStorage` that reads a stopped trial as failed, not pruned.

    The storage maps run statuses to trial states one to one, and KILLED is PRUNED. A
    trial that a stop ended (:func:`stop_trial`) has a KILLED run too, so that MLflow
    shows it stopped, and the system attribute :data:`INTERRUPTED_ATTR`: this storage
    reads such a trial as FAIL, so that it neither counts as pruned nor reaches a sampler
    as an observation. (Trials on Spark executors read the study through a plain
    ``MlflowStorage``, which still sees them pruned.)
    """

    def get_trial(self, trial_id) -> optuna.trial.FrozenTrial:
        trial = super().get_trial(trial_id)
        if trial.state == TrialState.PRUNED and trial.system_attrs.get(INTERRUPTED_ATTR):
            trial.state = TrialState.FAIL
        return trial


@dataclass(frozen=True)
class SweepResult:
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialObjective:
    """The objective of one trial (picklable: it travels to spawned processes and Spark executors).

    Returns the last epoch's ``val_<metric>``; raises :class:`optuna.TrialPruned` when pruned
    and the training error otherwise, after tagging the trial's run with the reason.
    """

    config: RadlakeConfig
    data: TrainingData
    space: SearchSpace
    #: Base metric name (``map_50``): ``val_<metric>`` is reported every epoch.
    metric: str
    study_name: str
    tracking_uri: str
    registry_uri: str
    #: torch CPU threads per trial (None: the worker's default).
    threads: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from radlake.train.worker import train_worker

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        client = mlflow.MlflowClient()
        run_id = trial_run_id(trial)
        client.set_tag(run_id, "mlflow.runName", f"{self.study_name}-trial-{trial.number:03d}")
        client.set_tag(run_id, "radlake.sweep", self.study_name)
        client.set_tag(run_id, "radlake.trial_number", str(trial.number))
        key = f"val_{self.metric}"
        try:
            values = self.space.suggest(trial)
            config = apply_params(self.config, self.data.detector, values)
            mlflow.start_run(run_id=run_id)
            try:
                log_run_config(config, self.data, {"radlake.sweep": self.study_name})
            finally:
                mlflow.end_run("RUNNING")  # the storage sets the final status when Optuna is told
            settings = {**worker_settings(config, self.data, run_id), "end_run": False, "threads": self.threads}
            last: dict[str, float] = {}

            def on_epoch(epoch: int, row: dict[str, float]) -> None:
                if key not in row:
                    raise KeyError(f"Epoch {epoch} logged no {key!r}; logged: {sorted(row)}")
                value = float(row[key])
                last["value"] = value
                trial.report(value, epoch)
                if trial.should_prune():
                    reason = prune_reason(trial, key, value, epoch)
                    client.set_tag(run_id, PRUNED_REASON_TAG, reason)
                    raise optuna.TrialPruned(reason)

            train_worker(settings, on_epoch=on_epoch)
            if f"test_{self.metric}" not in client.get_run(run_id).data.metrics:
                raise RuntimeError(f"Trial run {run_id} ended without test_{self.metric}")
            if "value" not in last:
                raise RuntimeError(f"Trial run {run_id} trained no epoch (no {key} reported)")
            return last["value"]
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            client.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:MAX_TAG_CHARS])
            raise


def prune_reason(trial: optuna.Trial, key: str, value: float, epoch: int) -> str:
    """Why ``trial`` is pruned at ``epoch``: its value against the completed trials' at that epoch."""
    import numpy as np
    import optuna

    pruner = trial.study.pruner
    finished = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    others = [t.intermediate_values[epoch] for t in finished if epoch in t.intermediate_values]
    name = type(pruner).__name__
    if isinstance(pruner, optuna.pruners.PercentilePruner) and others:
        q = getattr(pruner, "_percentile", 50.0)
        if trial.study.direction == optuna.study.StudyDirection.MAXIMIZE:
            q = 100.0 - q
        label = "median" if q == 50.0 else f"{q:g}th percentile"
        return (
            f"{key} {value:.4f} at epoch {epoch} fell behind the {label} {float(np.percentile(others, q)):.4f} "
            f"of {len(others)} completed trials ({name})"
        )
    return f"{key} {value:.4f} at epoch {epoch}: pruned by {name}"


def _open_study(storage, name: str, space: SearchSpace, *, seed_offset: int = 0) -> optuna.Study:
    import optuna

    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=space.make_sampler(seed_offset=seed_offset),
        pruner=space.make_pruner(),
    )


def _local_worker(
    objective: TrialObjective, experiment_id: str, quota: int, deadline: float | None, lock, index: int
) -> None:
    """One local sweep process: ``quota`` trials, ask/tell through the shared study.

    Stopped (the parent terminates it, or SIGINT reaches the whole process group), it ends
    its running trial as stopped (:func:`stop_trial`) and exits with 143 or 130; it gets
    SIGTERM when the parent dies.
    """
    import optuna

    die_with_parent(signal.SIGTERM)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(objective.tracking_uri)
    mlflow.set_registry_uri(objective.registry_uri)
    storage = SweepStorage(experiment_id)
    try:
        with handle_stops():
            _pull_trials(objective, storage, quota, deadline, lock, index)
    except Stopped as stop:
        sys.exit(stop.exit_code)  # no traceback from multiprocessing: the parent reports the stop


def _pull_trials(
    objective: TrialObjective, storage: SweepStorage, quota: int, deadline: float | None, lock, index: int
) -> None:
    import optuna

    study = _open_study(storage, objective.study_name, objective.space, seed_offset=index)
    trial = None
    try:
        for _ in range(quota):
            if deadline is not None and time.time() >= deadline:
                break
            trial = None
            with lock:  # MlflowStorage's claim of an enqueued trial is not atomic across processes
                trial = study.ask()
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except Exception:  # tagged by the objective; the sweep goes on
                _logger.exception("Trial %d failed", trial.number)
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
    except KeyboardInterrupt as exc:
        if trial is not None:  # a trial asked for but not told: this process's to end
            stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
            stop_trial(storage, trial_storage_id(trial), f"the sweep was {stop} while this trial ran")
        raise
    finally:
        storage.flush_all_batches()


def _run_local(objective: TrialObjective, experiment_id: str, remaining: int, parallel: int, deadline) -> None:
    ctx = multiprocessing.get_context("spawn")
    lock = ctx.Lock()
    quotas = [remaining // parallel + (1 if i < remaining % parallel else 0) for i in range(parallel)]
    processes = [
        ctx.Process(
            target=_local_worker, args=(objective, experiment_id, q, deadline, lock, i), name=f"radlake-sweep-{i}"
        )
        for i, q in enumerate(quotas)
        if q > 0
    ]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except BaseException:
        # Stopped (or failing): each process ends its trial on SIGTERM; none may outlive this one.
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
        raise
    bad = [f"{p.name} (exit code {p.exitcode})" for p in processes if p.exitcode != 0]
    if bad:  # trial errors are caught inside; this is the process itself (its log is above)
        raise RuntimeError(f"Sweep processes ended abnormally: {', '.join(bad)}; start the sweep again to resume")


def _run_on_executors(
    objective: TrialObjective, storage, space: SearchSpace, remaining: int, parallel: int, timeout: float | None
) -> None:
    from mlflow.pyspark.optuna.study import MlflowSparkStudy

    study = MlflowSparkStudy(
        objective.study_name,
        storage,
        sampler=space.make_sampler(),
        pruner=space.make_pruner(),
        mlflow_tracking_uri=objective.tracking_uri,
    )
    # One Spark task per parallel slot, each running its share of the trials one after the other.
    study.optimize(objective, n_trials=remaining, n_jobs=parallel, timeout=timeout, catch=(Exception,))


def stop_trial(storage: MlflowStorage, trial_id, reason: str) -> bool:
    """End a RUNNING trial that a stop interrupted: run KILLED, read back as FAIL by :class:`SweepStorage`.

    Tags ``radlake.interrupted`` and ``radlake.error`` ("interrupted: <reason>") go on the
    run, and the system attribute :data:`INTERRUPTED_ATTR` is written before the status, so
    that no reader ever sees the trial pruned. A trial that is no longer RUNNING (it
    completed, was pruned or failed before the stop took effect) is left as it is.

    Returns
    -------
    bool
        Whether the trial was ended.
    """
    client = mlflow.MlflowClient()
    run_id = str(trial_id)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, ERROR_TAG, f"interrupted: {reason}"[:MAX_TAG_CHARS])
    client.set_tag(run_id, INTERRUPTED_TAG, "true")
    storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, True)
    storage.flush_all_batches()
    client.set_terminated(run_id, "KILLED")
    return True


def stop_trials(study: optuna.Study, storage: MlflowStorage, reason: str) -> list[int]:
    """:func:`stop_trial` every trial of ``study`` still RUNNING; returns their numbers.

    For the sweep's parent, after its trial processes ended (or its Spark jobs were
    cancelled): it ends what they could not. Only while no other sweep of the study runs.
    """
    return [
        trial.number
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if stop_trial(storage, trial_storage_id(trial), reason)
    ]


def mark_interrupted(study: optuna.Study, storage) -> list[int]:
    """Mark trials left RUNNING (by a sweep that was stopped) FAILED, with an ``interrupted`` reason.

    ``storage`` is the study's MlflowStorage. Only call it when no other sweep of the same study
    is running. Returns their numbers.
    """
    import optuna

    client = mlflow.MlflowClient()
    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_id = trial_run_id(trial)
        client.set_tag(
            run_id, ERROR_TAG, "interrupted: the sweep stopped while this trial ran; marked failed on resume"
        )
        client.set_tag(run_id, INTERRUPTED_TAG, "true")
        storage.set_trial_state_values(trial_storage_id(trial), optuna.trial.TrialState.FAIL)
        numbers.append(trial.number)
    return numbers


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
) -> SweepResult:
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
    key = f"val_{metric}"
    name = name or f"{detector}-sweep"
    on_executors = config.environment in ("dev", "prod") if on_executors is None else on_executors
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    experiment_id = configure_mlflow(config, detector_experiment(config, detector))
    storage = SweepStorage(experiment_id)
    resumed = storage.get_study_id_by_name_if_exists(name) is not None
    versions = None
    if resumed:
        study = _open_study(storage, name, search)
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
    parent_run_id = storage.get_study_id_from_name(name)
    storage.flush_all_batches()

    with run_scope(run_id=parent_run_id):
        if not resumed:
            mlflow.log_params(
                {
                    "sweep.detector": detector,
                    "sweep.metric": key,
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
                "radlake.sweep.resumed": str(resumed).lower(),
                "radlake.sweep.interrupted_trials": json.dumps(interrupted),
            }
        )
        started = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
        remaining = max(0, trials - len(started))
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
        if remaining:
            _logger.info("Sweep %s: %d trials to run, %d at a time", name, remaining, parallel)
            try:
                if on_executors:
                    _run_on_executors(objective, storage, search, remaining, parallel, timeout)
                else:
                    deadline = time.time() + timeout if timeout else None
                    _run_local(objective, experiment_id, remaining, min(parallel, remaining), deadline)
            except KeyboardInterrupt as exc:  # the trial processes are gone (or their Spark jobs cancelled)
                stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
                stop_trials(study, storage, f"the sweep was {stop} while this trial ran")
                raise
        return _finish(spark, config, data, stage, study, storage, name, metric, register, resumed, experiment_id)


def _finish(spark, config, data, stage, study, storage, name, metric, register, resumed, experiment_id) -> SweepResult:
    """Best trial → registry; leaderboard and tags on the active parent run."""
    import matplotlib.pyplot as plt
    import optuna

    from radlake.registry.leaderboard import plot_leaderboard, runs_frame
    from radlake.registry.promote import register_and_promote

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
        _logger.warning("Sweep %s: no trial completed; nothing registered", name)
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
    return SweepResult(
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
