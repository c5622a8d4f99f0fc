"""``radlake pipeline``: every stage in order, one MLflow parent run, one child run per step.

Steps (:data:`STEPS`), with what each takes and gives:

============== ========================================== ==========================================
step           inputs                                      outputs
============== ========================================== ==========================================
ingest         ``archive``                                 ``<table>_version`` of the ingest tables
labels         ``labels_file``                             ``annotations_version``, ``splits_version``
train_vertebra ``images_version``, ``annotations_version``, ``vertebra_run_id``,
               ``splits_version``                          ``vertebra_run_model_uri``
promote_vert.  ``vertebra_run_id``                         ``vertebra_model`` (the champion, pinned
                                                           ``models:/name/version``), ``vertebra_version``
crops          ``vertebra_model``                          ``vertebra_crops_version``
train_schmorl  ``vertebra_model``, ``vertebra_crops_version``, ``schmorl_run_id``,
               ``annotations_version``, ``splits_version``, ``schmorl_run_model_uri``
               ``images_version``
promote_schm.  ``schmorl_run_id``                          ``schmorl_model``, ``schmorl_version``
score          ``vertebra_model``, ``schmorl_model``       ``predictions_version``,
                                                           ``study_findings_version``, ``score_run_id``
============== ========================================== ==========================================

Each step's inputs are logged as params ``input.<name>`` of its child run and its
outputs as tags ``output.<name>`` (and ``outputs.json``), and handed on. A step run
alone (``--steps crops,train_schmorl``) takes its inputs from the command line; an
input nobody gave falls back to the current state (a table's latest version, the
configured model URI). Under ``mlflow run`` (the ``MLproject`` entry points) the
project's run is the parent. Stopped by SIGTERM or SIGINT, the parent and the running
step's run end KILLED (:mod:`radlake.stops`).

Every run has a one-line description (:func:`radlake.tracking.describe_run`): what the
step is for while it runs (and if it fails), what it did once it is done (files
ingested, boxes imported, the version registered and why it was or was not promoted,
crops cut); the training and scoring runs describe themselves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow

from radlake.config import RadlakeConfig
from radlake.console import say
from radlake.console import table as text_table
from radlake.errors import ConfigError, RadlakeError
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.tracking import configure_mlflow, describe_run, mark_model_training, run_scope
from radlake.workflow.task_values import publish


class PipelineError(RadlakeError):
    """A step cannot hand the next steps what they need (e.g. no champion after a refused promotion)."""


if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STEPS = (
    "ingest",
    "labels",
    "train_vertebra",
    "promote_vertebra",
    "crops",
    "train_schmorl",
    "promote_schmorl",
    "score",
)
#: Steps that start their own child run (the step's run is theirs).
_OWN_RUN = ("train_vertebra", "train_schmorl", "score")
#: Table versions a training step pins, by detector.
_TRAIN_TABLES = {
    "vertebra": (Table.IMAGES, Table.ANNOTATIONS, Table.SPLITS),
    "schmorl": (Table.VERTEBRA_CROPS, Table.ANNOTATIONS, Table.SPLITS, Table.IMAGES),
}


@dataclass
class PipelineSummary(Summary):
    """The parent run and every step's inputs and outputs, in order."""

    parent_run_id: str
    steps: list[dict] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


def _versions(spark: SparkSession, config: RadlakeConfig, tables: Sequence[Table], state: Mapping[str, str]):
    out = {}
    for table in tables:
        key = f"{table.value}_version"
        out[table.value] = (
            int(state[key]) if state.get(key) not in (None, "") else table_ref(config, table).version(spark)
        )
    return out


def _need(state: Mapping[str, str], key: str, step: str, flag: str) -> str:
    if not state.get(key):
        raise ConfigError(f"Step '{step}' needs {key}: run the step before it in the same pipeline or pass {flag}")
    return state[key]


def _ingest(spark, config, state):
    from radlake.ingest.job import run_ingest

    archive = state.get("archive") or config.ingest.archive
    if not archive:
        raise ConfigError("Step 'ingest' needs an archive: pass --archive or set ingest.archive")
    summary = run_ingest(spark, config, archive=archive)
    tables = (Table.INSTANCES, Table.SERIES, Table.IMAGES, Table.QUARANTINE)
    outputs = {f"{t.value}_version": str(table_ref(config, t).version(spark)) for t in tables}
    return {"archive": archive}, outputs, {"ingest": summary.as_dict()}


def _labels(spark, config, state):
    from radlake.data.splits import import_labels_and_split

    file = state.get("labels_file") or config.labels.file
    if not file:
        raise ConfigError("Step 'labels' needs a labels file: pass --labels or set labels.file")
    labels, splits = import_labels_and_split(spark, config, file)
    outputs = {
        f"{t.value}_version": str(table_ref(config, t).version(spark)) for t in (Table.ANNOTATIONS, Table.SPLITS)
    }
    return {"labels_file": str(file)}, outputs, {"labels": labels.as_dict(), "splits": splits.as_dict()}


def _train(detector: str):
    def step(spark, config, state):
        from radlake.train.run import train_detector

        inputs = {f"{k}_version": str(v) for k, v in _versions(spark, config, _TRAIN_TABLES[detector], state).items()}
        if detector == "schmorl":
            inputs["vertebra_model"] = state.get("vertebra_model") or config.crops.model_uri(config.models)
            config = config.with_vertebra_model(inputs["vertebra_model"])
        versions = {k.removesuffix("_version"): int(v) for k, v in inputs.items() if k.endswith("_version")}
        result = train_detector(spark, config, detector, versions=versions, run_name=f"train_{detector}")
        outputs = {f"{detector}_run_id": result.run_id, f"{detector}_run_model_uri": result.model_uri}
        return inputs, outputs, {"metrics": result.metrics, "run_id": result.run_id}

    return step


def _promote(detector: str):
    def step(spark, config, state):
        from radlake.models.resolve import ModelNotFoundError, resolve_model_uri
        from radlake.registry.promote import register_and_promote
        from radlake.train.run import get_stage

        run_id = _need(state, f"{detector}_run_id", f"promote_{detector}", f"--{detector}-run-id")
        result = register_and_promote(config, get_stage(detector), run_id)
        try:
            champion = resolve_model_uri(f"models:/{result.model_name}@champion")
        except ModelNotFoundError:
            raise PipelineError(
                f"promote_{detector}: version {result.version} of {result.model_name} was not promoted "
                f"({result.reason}) and there is no champion for the next steps to use"
            ) from None
        outputs = {
            f"{detector}_model": champion.uri,
            f"{detector}_version": result.version,
            f"{detector}_promoted": str(result.promoted).lower(),
        }
        return {f"{detector}_run_id": run_id}, outputs, {"registry": result.as_dict()}

    return step


def _crops(spark, config, state):
    from radlake.data.crops import make_crops

    model = state.get("vertebra_model") or config.crops.model_uri(config.models)
    summary = make_crops(spark, config, vertebra_model=model)
    outputs = {"vertebra_crops_version": str(summary.table_version), "vertebra_model": summary.vertebra_model["uri"]}
    return {"vertebra_model": model}, outputs, {"crops": summary.as_dict()}


def _score(spark, config, state):
    from radlake.score.job import score_archive

    default_vertebra, default_schmorl = config.score.model_uris(config.models)
    inputs = {
        "vertebra_model": state.get("vertebra_model") or default_vertebra,
        "schmorl_model": state.get("schmorl_model") or default_schmorl,
    }
    summary = score_archive(spark, config, **inputs)
    outputs = {
        "predictions_version": str(summary.predictions_version),
        "study_findings_version": str(summary.study_findings_version),
        "score_run_id": summary.run_id,
    }
    return inputs, outputs, {"score": summary.as_dict(), "run_id": summary.run_id}


def _counts(by_name: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in by_name.items()) or "none"


def _ingest_note(inputs, outputs, details) -> str:
    d = details["ingest"]
    return (
        f"Ingested {d['files_ingested']} new or changed files of {d['archive']} ({d['files_unchanged']} unchanged): "
        f"{d['new_instances']} new instances, {d['new_images']} new frames; {d['quarantined']} quarantined, "
        f"{d['duplicates']} duplicate copies."
    )


def _labels_note(inputs, outputs, details) -> str:
    labels, splits = details["labels"], details["splits"]
    return (
        f"Imported {labels['accepted']} boxes on {labels['frames_in_file']} frames from {labels['source_file']} "
        f"({labels['inserted']} new, {labels['rejected']} rejected); {splits['new_studies']} new studies split "
        f"({_counts(splits['new_by_split'])})."
    )


def _promote_note(inputs, outputs, details) -> str:
    r = details["registry"]
    verdict = "promoted to champion" if r["promoted"] else "not promoted"
    return f"Registered {r['model_name']} version {r['version']} from training run {r['run_id']}: {verdict} ({r['reason']})."


def _crops_note(inputs, outputs, details) -> str:
    c = details["crops"]
    return (
        f"Cut {c['new_crops']} new vertebra crops ({c['crops_with_nodes']} with Schmorl's nodes) from {c['frames']} "
        f"labelled frames ({' and '.join(c['sources'])} boxes) with {c['vertebra_model']['uri']}."
    )


#: What each step that runs in a child run of its own here is for: its description until it is done.
_STEP_PURPOSES = {
    "ingest": "Ingests the DICOM archive into the instances, series, images and quarantine tables.",
    "labels": "Imports the box labels into annotations and splits new studies into train, val and test.",
    "promote_vertebra": "Registers the vertebra detector's training run; champion if it beats the current one.",
    "crops": "Crops every vertebra of the labelled frames for the Schmorl's-node detector.",
    "promote_schmorl": "Registers the Schmorl's-node detector's training run; champion if it beats the current one.",
}
#: What such a step did, from its inputs, outputs and details: its description once it is done.
_STEP_NOTES: dict[str, Callable[[dict, dict, dict], str]] = {
    "ingest": _ingest_note,
    "labels": _labels_note,
    "promote_vertebra": _promote_note,
    "crops": _crops_note,
    "promote_schmorl": _promote_note,
}


def _pipeline_note(chosen: Sequence[str], state: Mapping[str, str], seconds: float | None = None) -> str:
    """The parent run's description: its steps, and once done their time and the models they used."""
    steps = ", ".join(chosen)
    if seconds is None:
        return f"radlake pipeline: {steps}, one child run per step."
    models = [state[k] for k in ("vertebra_model", "schmorl_model") if state.get(k)]
    used = f"; models {' and '.join(models)}" if models else ""
    return f"radlake pipeline: {steps} in {seconds:.0f} s, one child run per step{used}."


_STEP_FUNCTIONS: dict[str, Callable] = {
    "ingest": _ingest,
    "labels": _labels,
    "train_vertebra": _train("vertebra"),
    "promote_vertebra": _promote("vertebra"),
    "crops": _crops,
    "train_schmorl": _train("schmorl"),
    "promote_schmorl": _promote("schmorl"),
    "score": _score,
}


def parse_steps(text: str | Sequence[str] | None) -> list[str]:
    """``"crops,train_schmorl"`` → the steps in pipeline order; raises ConfigError naming an unknown step."""
    if not text:
        return list(STEPS)
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        raise ConfigError(f"Unknown pipeline step(s) {unknown}; steps are: {', '.join(STEPS)}")
    return [s for s in STEPS if s in names]


def run_pipeline(
    spark: SparkSession,
    config: RadlakeConfig,
    *,
    steps: Sequence[str] | None = None,
    inputs: Mapping[str, str] | None = None,
    log: Callable[[str], None] = say,
) -> PipelineSummary:
    """Run ``steps`` (default all) under one parent MLflow run; see the module docstring.

    ``log`` gets a line as each step starts and ends (default: :func:`radlake.console.say`).
    """
    chosen = parse_steps(steps)
    state = {k: str(v) for k, v in (inputs or {}).items() if v not in (None, "")}
    experiment_id = configure_mlflow(config)
    # Under `mlflow run` (MLFLOW_RUN_ID set) the project's run, in its own experiment, is the parent.
    under_project = bool(os.environ.get("MLFLOW_RUN_ID"))
    pipeline_started = time.perf_counter()
    with run_scope(run_name="pipeline", experiment_id=None if under_project else experiment_id) as parent:
        experiment_id = parent.info.experiment_id  # under `mlflow run`, the project's run and experiment
        if under_project:  # which `mlflow run --experiment-name` may have created: a model-training one too
            mark_model_training(experiment_id)
        mlflow.set_tags({"radlake.pipeline_steps": ",".join(chosen)})
        describe_run(_pipeline_note(chosen, state))
        mlflow.log_params({f"input.{k}": v for k, v in state.items()})
        result = PipelineSummary(parent.info.run_id)
        for number, name in enumerate(chosen, 1):
            started = time.perf_counter()
            log(f"pipeline: step {number}/{len(chosen)} {name} ...")
            step_inputs, outputs, details = _run_step(name, spark, config, state, experiment_id)
            state.update(outputs)
            publish(outputs)  # Databricks job: task values for the next task; a no-op elsewhere
            seconds = round(time.perf_counter() - started, 1)
            result.steps.append(
                {"step": name, "inputs": step_inputs, "outputs": outputs, "seconds": seconds, "details": details}
            )
            log(f"pipeline: step {name} done in {seconds} s: {', '.join(f'{k}={v}' for k, v in outputs.items())}")
        result.outputs = dict(state)
        mlflow.set_tags({f"output.{k}": v for k, v in state.items()})
        describe_run(_pipeline_note(chosen, state, time.perf_counter() - pipeline_started))
        mlflow.log_dict(result.as_dict(), "pipeline.json")
    return result


def steps_table(summary: PipelineSummary) -> str:
    """The steps of a pipeline run as a text table: step, seconds and what each handed on."""
    rows = [
        [step["step"], step["seconds"], ", ".join(f"{k}={v}" for k, v in step["outputs"].items())]
        for step in summary.steps
    ]
    return text_table(rows, ["step", "seconds", "outputs"])


def _run_step(name, spark, config, state, experiment_id):
    """Run one step as a child run (training and scoring steps: their own run is the child)."""
    client = mlflow.MlflowClient()
    if name in _OWN_RUN:
        step_inputs, outputs, details = _STEP_FUNCTIONS[name](spark, config, state)
        run_id = details["run_id"]
    else:
        with run_scope(run_name=name, nested=True, experiment_id=experiment_id) as child:
            describe_run(_STEP_PURPOSES[name])
            step_inputs, outputs, details = _STEP_FUNCTIONS[name](spark, config, state)
            run_id = child.info.run_id
            describe_run(_STEP_NOTES[name](step_inputs, outputs, details))
    client.set_tag(run_id, "radlake.step", name)
    for key, value in step_inputs.items():
        client.log_param(run_id, f"input.{key}", value)
    for key, value in outputs.items():
        client.set_tag(run_id, f"output.{key}", value)
    client.log_dict(run_id, {"inputs": step_inputs, "outputs": outputs}, "step/outputs.json")
    return step_inputs, outputs, details
