"""MLflow set-up: tracking and registry URIs, and the experiment, from the configuration.

Locally the embedded default is a sqlite store ``<storage.root>/mlflow.db`` with artifacts
under ``<storage.root>/mlartifacts`` (MLflow 3 refuses a plain file store). On Databricks the
configuration says ``databricks`` / ``databricks-uc`` and experiments are workspace paths.

Runs are opened with :func:`run_scope` (``mlflow.start_run`` that ends a run KILLED, not
FAILED, when the process is stopped: :mod:`radlake.stops`).

Example
-------
>>> from radlake.config import load_config
>>> cfg = load_config(overrides=["storage.root=/tmp/rl-doc"])
>>> experiment_id = configure_mlflow(cfg)          # doctest: +SKIP
>>> print(ui_command(cfg))
mlflow server --backend-store-uri sqlite:////tmp/rl-doc/mlflow.db --host 127.0.0.1 --port 5000

"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import mlflow

from radlake.config import RadlakeConfig

if TYPE_CHECKING:
    from radlake.tables import Table

_logger = logging.getLogger(__name__)


def configure_mlflow(config: RadlakeConfig, experiment: str | None = None) -> str:
    """Point MLflow at the configured stores and make sure the experiment exists.

    Parameters
    ----------
    config
        Supplies ``mlflow.*`` and, for the local default, ``storage.root``.
    experiment
        Experiment name; default ``mlflow.experiment``.

    Returns
    -------
    str
        The experiment id (also set as the active experiment).
    """
    mc = config.mlflow
    tracking_uri = mc.resolved_tracking_uri(config.storage)
    if tracking_uri.startswith("sqlite:///"):
        config.storage.root_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(mc.registry_uri or tracking_uri)
    name = experiment or mc.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        artifact_location = mc.artifact_location
        if artifact_location is None and not mc.tracking_uri:
            artifact_location = (config.storage.root_dir / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def run_scope(**start_run: Any) -> Iterator[mlflow.ActiveRun]:
    """``with mlflow.start_run(**start_run)``, except that a stop ends the run KILLED.

    The run ends FINISHED when the block completes and FAILED when it raises; when it
    raises ``KeyboardInterrupt`` (SIGINT, or SIGTERM under :func:`radlake.stops.handle_stops`)
    it ends KILLED and the interrupt goes on.

    Example
    -------
    >>> with run_scope(run_name="train-vertebra", nested=True) as run:  # doctest: +SKIP
    ...     mlflow.log_param("epochs", 2)
    """
    with mlflow.start_run(**start_run) as run:
        try:
            yield run
        except KeyboardInterrupt:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.info.run_id:
                mlflow.end_run("KILLED")  # mlflow's own exit then leaves the ended run alone
            raise


def end_active_runs(status: str) -> list[str]:
    """End every run on this thread's active run stack with ``status``, innermost first; returns their ids.

    A run whose status cannot be written (the store is gone) is still taken off the stack,
    and the others are ended.
    """
    ended = []
    while (active := mlflow.active_run()) is not None:
        try:
            mlflow.end_run(status)
        except Exception as exc:  # noqa: BLE001 - end_run pops the run before it writes: the loop goes on
            _logger.warning("Could not end MLflow run %s %s: %s", active.info.run_id, status, exc)
            continue
        ended.append(active.info.run_id)
    return ended


def ui_command(config: RadlakeConfig, *, port: int = 5000) -> str:
    """The shell command that serves the MLflow UI over this configuration's tracking store, on 127.0.0.1 only."""
    uri = config.mlflow.resolved_tracking_uri(config.storage)
    return f"mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port {port}"


def detector_experiment(config: RadlakeConfig, detector: str) -> str:
    """The experiment of one detector's runs: ``train.<detector>.experiment`` or ``<mlflow.experiment>-<detector>``."""
    settings = getattr(config.train, detector)
    return settings.experiment or f"{config.mlflow.experiment}-{detector}"


def log_table_input(config: RadlakeConfig, table: Table, version: int, *, context: str) -> None:
    """Log one Delta table of ``config`` at ``version`` as an input of the active MLflow run (name ``<table>@v<version>``)."""
    import warnings

    from radlake.tables import table_ref

    ref = table_ref(config, table)
    kwargs = {"table_name": ref.name} if ref.name else {"path": ref.path}
    # MLflow infers the dataset's schema (a cached property) when the dataset is made and again when it is
    # logged, each time with a hint meant for model signatures: integer columns cannot hold missing values
    # at inference. A table's schema is a record, not a model's input, so the hint is not for it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.load_delta(**kwargs, version=version, name=f"{table.value}@v{version}")
        _ = dataset.schema  # inferred once, here; log_input reads the cached value
    mlflow.log_input(dataset, context=context, tags={"table": table.value, "version": str(version)})
