"""The trials of a hyperparameter sweep: an Optuna study whose trials are nested MLflow runs.

The sweep itself (pin the data, open or continue the study, run the trials, register the
best) is :func:`radlake.workflow.sweep.run_sweep`; this module is what runs its trials:

1. The study lives in the MLflow tracking store (:class:`SweepStorage`, an
   :class:`mlflow.optuna.storage.MlflowStorage`): the study is an MLflow run (the sweep's
   parent run, named after the study) and every trial is a child run of it, whose status
   *is* the trial's state (RUNNING, FINISHED = complete, KILLED = pruned, FAILED). Locally
   that is the sqlite database of the MLflow store, so a sweep started again with the same
   name continues the same study. (An Optuna ``RDBStorage`` on the same sqlite file fails:
   both keep an ``alembic_version`` table.)
2. Every trial trains on the parent's Parquet caches in one process (no DDP inside a trial:
   parallelism is across trials) by calling :func:`radlake.train.worker.train_worker` with a
   per-epoch callback that reports ``val_<metric>`` to Optuna and raises
   :class:`optuna.TrialPruned` when the pruner says so (:class:`TrialObjective`).
3. Locally, P spawned processes pull trials from the study (``ask`` under a lock, so two
   never take the same enqueued trial) until the study holds ``trials`` trials
   (:func:`run_local`); on a cluster :class:`mlflow.pyspark.optuna.study.MlflowSparkStudy`
   spreads them over the Spark executors (:func:`run_on_executors`).
4. A pruned trial's run ends KILLED with tag ``radlake.pruned_reason``; a crashed one
   FAILED with tag ``radlake.error`` (the sweep goes on). A sweep stopped by SIGTERM or
   SIGINT (:mod:`radlake.stops`) ends its running trials KILLED with tags
   ``radlake.interrupted`` and ``radlake.error`` "interrupted: ...", and its parent run
   KILLED: each trial process ends its own trial, then the parent ends any left. KILLED
   alone reads back as *pruned* in this storage, so a stopped trial also carries the
   system attribute :data:`INTERRUPTED_ATTR`, and :class:`SweepStorage` reads it as failed:
   it is no pruned trial to the sampler or in the study's counts. Trials left RUNNING by a
   sweep that could not end them (SIGKILL, a lost machine) are marked FAILED with
   ``radlake.error`` "interrupted: ..." when the sweep is started again
   (:func:`mark_interrupted`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.optuna.storage import MlflowStorage
from optuna.trial import TrialState

from radlake.config import RadlakeConfig
from radlake.stops import Stopped, die_with_parent, handle_stops
from radlake.tracking import DESCRIPTION_TAG, describe_run
from radlake.train.run import (
    DETECTOR_WORDS,
    TrainingData,
    log_run_config,
    worker_settings,
)
from radlake.train.space import SearchSpace, apply_params

if TYPE_CHECKING:
    import optuna

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
        note = f"Trial {trial.number} of sweep {self.study_name}."
        try:
            values = self.space.suggest(trial)
            note = trial_note(self.study_name, trial.number, self.data.detector, values)
            describe_run(note, run_id=run_id)
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
                    describe_run(f"{note} Pruned: {reason}.", run_id=run_id)
                    raise optuna.TrialPruned(reason)

            train_worker(settings, on_epoch=on_epoch)
            if f"test_{self.metric}" not in client.get_run(run_id).data.metrics:
                raise RuntimeError(f"Trial run {run_id} ended without test_{self.metric}")
            if "value" not in last:
                raise RuntimeError(f"Trial run {run_id} trained no epoch (no {key} reported)")
            describe_run(f"{note} Done: {key} {last['value']:.3f} at its last epoch.", run_id=run_id)
            return last["value"]
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            client.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:MAX_TAG_CHARS])
            describe_run(f"{note} Failed: {type(exc).__name__}.", run_id=run_id)
            raise


def trial_note(study_name: str, number: int, detector: str, values: dict[str, object]) -> str:
    """A trial run's one-line description: its sweep, its detector and the values drawn for it.

    Examples
    --------
    >>> trial_note("vertebra-sweep", 3, "vertebra", {"learning_rate": 0.0021347, "batch_size": 8})
    'Trial 3 of sweep vertebra-sweep: the vertebra detector with learning_rate 0.002135, batch_size 8.'
    """
    what = DETECTOR_WORDS.get(detector, (f"{detector} detector",))[0]
    drawn = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    return f"Trial {number} of sweep {study_name}: the {what} with {drawn or 'the fixed settings'}."


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


def open_study(storage, name: str, space: SearchSpace, *, seed_offset: int = 0) -> optuna.Study:
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

    study = open_study(storage, objective.study_name, objective.space, seed_offset=index)
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


def run_local(objective: TrialObjective, experiment_id: str, remaining: int, parallel: int, deadline) -> None:
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


def run_on_executors(
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
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    client.set_tag(run_id, ERROR_TAG, f"interrupted: {reason}"[:MAX_TAG_CHARS])
    _describe_interrupted(run, reason)
    client.set_tag(run_id, INTERRUPTED_TAG, "true")
    storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, True)
    storage.flush_all_batches()
    client.set_terminated(run_id, "KILLED")
    return True


def _describe_interrupted(run, reason: str, *, fallback: str | None = None) -> None:
    """Add to a trial run's description (or to ``fallback``, for a trial that never started) that it was interrupted."""
    note = run.data.tags.get(DESCRIPTION_TAG) or fallback or f"Sweep trial {run.info.run_name}."
    describe_run(f"{note} Interrupted: {reason}.", run_id=run.info.run_id)


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
        _describe_interrupted(
            client.get_run(run_id),
            "the sweep stopped while it ran; marked failed on resume",
            fallback=f"Trial {trial.number} of sweep {study.study_name}.",
        )
        client.set_tag(run_id, INTERRUPTED_TAG, "true")
        storage.set_trial_state_values(trial_storage_id(trial), optuna.trial.TrialState.FAIL)
        numbers.append(trial.number)
    return numbers
