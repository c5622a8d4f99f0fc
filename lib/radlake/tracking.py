"""MLflow set-up: tracking and registry URIs, and the experiment, from the configuration.

Locally the embedded default is a sqlite store ``<storage.root>/mlflow.db`` with artifacts
under ``<storage.root>/mlartifacts`` (MLflow 3 refuses a plain file store). On Databricks the
configuration says ``databricks`` / ``databricks-uc`` and experiments are workspace paths.

Runs are opened with :func:`run_scope` (``mlflow.start_run`` that ends a run KILLED, not
FAILED, when the process is stopped: :mod:`radlake.stops`); :func:`describe_run` gives each
run its one-line description (the run page's *Description*).

radlake's experiments are model training, not GenAI: :func:`configure_mlflow` tags every
experiment it creates or opens with :data:`EXPERIMENT_KIND_TAG` = :data:`MODEL_TRAINING_KIND`,
which picks the experiment's view in the Databricks UI. The MLflow 3.17 UI picks its view
(*GenAI* or *Model training*, the switch at the top of its sidebar) per browser instead, from
the link's ``workflowType`` (:data:`MODEL_TRAINING_QUERY`) or the last choice made there:
:func:`ui_link` gives links that open on the model-training view.

Example
-------
>>> from radlake.config import load_config
>>> cfg = load_config(overrides=["storage.root=/tmp/rl-doc"])
>>> experiment_id = configure_mlflow(cfg)          # doctest: +SKIP
>>> print(ui_command(cfg))
mlflow server --backend-store-uri sqlite:////tmp/rl-doc/mlflow.db --host 127.0.0.1 --port 5000
>>> ui_link(experiment_id="3", run_id="4f1c")
'http://127.0.0.1:5000/#/experiments/3/runs/4f1c?workflowType=machine_learning'

"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import mlflow
from mlflow.data.spark_dataset import SparkDataset

from radlake.config import RadlakeConfig

if TYPE_CHECKING:
    from radlake.tables import Table

_logger = logging.getLogger(__name__)

#: The experiment tag of MLflow 3 that names what an experiment is for (the UI's view of it).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: Its value for model training ("Machine learning"), as opposed to ``genai_development``.
MODEL_TRAINING_KIND = "custom_model_development"
#: Values of :data:`EXPERIMENT_KIND_TAG` that nobody chose (MLflow's guesses, or none): radlake replaces them.
_GUESSED_KINDS = ("", "no_inferred_type")
#: The run tag the MLflow UI shows as the run's description.
DESCRIPTION_TAG = "mlflow.note.content"
#: The longest description kept, in characters (MLflow 3.17 stores tag values of up to 8,000).
MAX_DESCRIPTION_CHARS = 2000
#: The query of an MLflow UI link that opens it on the model-training view (MLflow 3.17's ``workflowType``).
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


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
        mark_model_training(found)
    else:
        artifact_location = mc.artifact_location
        if artifact_location is None and not mc.tracking_uri:
            artifact_location = (config.storage.root_dir / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def mark_model_training(experiment: mlflow.entities.Experiment | str) -> None:
    """Tag an existing experiment (or experiment id) as model training, unless its kind was chosen.

    A kind was chosen when :data:`EXPERIMENT_KIND_TAG` holds anything but MLflow's guesses
    (``*_inferred``, ``no_inferred_type``) or nothing. A store that refuses the tag (no
    permission to edit a workspace experiment) leaves the experiment as it is: the tag only
    chooses a view.
    """
    if isinstance(experiment, str):
        experiment = mlflow.MlflowClient().get_experiment(experiment)
    kind = experiment.tags.get(EXPERIMENT_KIND_TAG)
    if kind is not None and kind not in _GUESSED_KINDS and not kind.endswith("_inferred"):
        return
    try:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    except mlflow.exceptions.MlflowException as exc:
        _logger.info("Experiment %s keeps its kind (%s): %s", experiment.name, kind, str(exc).splitlines()[0])


def describe_run(text: str, *, run_id: str | None = None) -> None:
    """Set the one-line description of a run (tag :data:`DESCRIPTION_TAG`): the active run, or ``run_id``.

    Whitespace (newlines included) is folded into single spaces, so the description stays one
    line, cut to :data:`MAX_DESCRIPTION_CHARS` (ending in "...") if longer.

    Raises
    ------
    ValueError
        If ``text`` is empty, or no run is active and ``run_id`` is not given.

    Example
    -------
    >>> describe_run("Scored 240 frames with vertebra_detector v3 + schmorl_detector v2.")  # doctest: +SKIP
    """
    line = " ".join(str(text).split())
    if not line:
        raise ValueError("Argument 'text' must hold a description, got an empty string.")
    if len(line) > MAX_DESCRIPTION_CHARS:
        line = line[: MAX_DESCRIPTION_CHARS - 3] + "..."
    if run_id is None:
        if mlflow.active_run() is None:
            raise ValueError("No active MLflow run to describe: pass run_id.")
        mlflow.set_tag(DESCRIPTION_TAG, line)
    else:
        mlflow.MlflowClient().set_tag(run_id, DESCRIPTION_TAG, line)


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


def ui_link(
    *,
    experiment_id: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    version: str | int | None = None,
    base_url: str = "http://127.0.0.1:5000",
) -> str:
    """A link into the MLflow UI that opens on the model-training view (:data:`MODEL_TRAINING_QUERY`).

    An experiment (``experiment_id``), one of its runs (and ``run_id``), a registered model
    (``model``) or one of its versions (and ``version``).

    Raises
    ------
    ValueError
        If neither ``experiment_id`` nor ``model`` is given, both are, or ``run_id`` /
        ``version`` comes without its experiment / model.

    Examples
    --------
    >>> ui_link(model="vertebra_detector", version=3, base_url="http://127.0.0.1:5123")
    'http://127.0.0.1:5123/#/models/vertebra_detector/versions/3?workflowType=machine_learning'
    """
    if (experiment_id is None) == (model is None):
        raise ValueError(f"Give one of 'experiment_id' and 'model', got {experiment_id!r} and {model!r}.")
    if run_id is not None and experiment_id is None:
        raise ValueError(f"Argument 'run_id' needs its 'experiment_id', got run_id={run_id!r} alone.")
    if version is not None and model is None:
        raise ValueError(f"Argument 'version' needs its 'model', got version={version!r} alone.")
    if model is not None:
        route = f"models/{quote(model, safe='')}" + (f"/versions/{version}" if version is not None else "")
    else:
        route = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id is not None else "")
    return f"{base_url.rstrip('/')}/#/{route}?{MODEL_TRAINING_QUERY}"


def detector_experiment(config: RadlakeConfig, detector: str) -> str:
    """The experiment of one detector's runs: ``train.<detector>.experiment`` or ``<mlflow.experiment>-<detector>``."""
    settings = getattr(config.train, detector)
    return settings.experiment or f"{config.mlflow.experiment}-{detector}"


def log_table_input(config: RadlakeConfig, table: Table, version: int, *, context: str) -> None:
    """Log one Delta table of ``config`` at ``version`` as an input of the active MLflow run (name ``<table>@v<version>``).

    Its profile is the table's row count at that version, ``{"num_rows": n}`` (:class:`CountedSparkDataset`).
    """
    import warnings

    from radlake.tables import table_ref

    ref = table_ref(config, table)
    kwargs = {"table_name": ref.name} if ref.name else {"path": ref.path}
    # MLflow infers the dataset's schema (a cached property) when the dataset is made and again when it is
    # logged, each time with a hint meant for model signatures: integer columns cannot hold missing values
    # at inference. A table's schema is a record, not a model's input, so the hint is not for it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = CountedSparkDataset.of(
            mlflow.data.load_delta(**kwargs, version=version, name=f"{table.value}@v{version}")
        )
        _ = dataset.schema  # inferred once, here; log_input reads the cached value
    mlflow.log_input(dataset, context=context, tags={"table": table.value, "version": str(version)})


class CountedSparkDataset(SparkDataset):
    """A Spark dataset whose profile is its exact row count, counted by the JVM.

    MLflow's own profile of a Spark dataset (``SparkDataset.profile``) turns the DataFrame into a
    Python RDD and sums its partitions' row counts on the executors' Python workers: every row of
    the table, pixel bytes included for ``images``, is pickled to Python to be counted, and the job
    goes on in the background after its 5 s timeout. ``DataFrame.count()`` over a Delta table at
    a version reads no column (Delta answers it from the log's statistics where it can, else Spark
    from the Parquet footers).
    """

    @classmethod
    def of(cls, dataset: SparkDataset) -> CountedSparkDataset:
        """``dataset`` (name, source, digest, targets, predictions kept) with a counted profile."""
        return cls(
            df=dataset.df,
            source=dataset.source,
            targets=dataset.targets,
            name=dataset.name,
            digest=dataset.digest,
            predictions=dataset.predictions,
        )

    @property
    def profile(self) -> dict[str, int]:
        """``{"num_rows": n}``: the DataFrame's row count (counted once)."""
        if not hasattr(self, "_num_rows"):
            self._num_rows = self.df.count()
        return {"num_rows": self._num_rows}
