"""The whole pipeline through its MLflow Projects entry point, then steps re-run alone.

One ``mlflow run . -e main --env-manager local`` over the labelled 4-study archive
(tiny training settings; the session fixture ``project_run`` of ``conftest.py``) serves every test: what is checked is the traceability of
the two stages (parent and child runs, inputs and outputs, the vertebra model behind
the Schmorl's model, end-to-end metrics), not model quality (that is ``make demo``'s).
"""

from __future__ import annotations

import json

import mlflow
import pytest

from radlake.errors import ConfigError
from radlake.models.resolve import ModelNotFoundError, resolve_model_uri
from radlake.tables import Table, table_ref
from radlake.workflow.pipeline import STEPS, parse_steps, run_pipeline


@pytest.fixture
def project_run(project_run):
    """The session's pipeline run, with MLflow back on its store (other modules point it at their own)."""
    from radlake.tracking import configure_mlflow

    configure_mlflow(project_run[0])
    return project_run


def _children(cfg, parent):
    client = mlflow.MlflowClient()
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {r.data.tags["radlake.step"]: r for r in runs}


def test_every_step_is_a_child_run_with_its_inputs_and_outputs(project_run):
    cfg, parent = project_run
    children = _children(cfg, parent)
    assert sorted(children) == sorted(STEPS)
    assert children["train_vertebra"].data.params["input.images_version"].isdigit()
    assert (
        children["crops"].data.params["input.vertebra_model"]
        == children["promote_vertebra"].data.tags["output.vertebra_model"]
    )
    assert (
        children["train_schmorl"].data.params["input.vertebra_crops_version"]
        == children["crops"].data.tags["output.vertebra_crops_version"]
    )
    assert children["promote_schmorl"].data.params["input.schmorl_run_id"] == children["train_schmorl"].info.run_id
    outputs = json.loads(mlflow.artifacts.load_text(f"runs:/{children['crops'].info.run_id}/step/outputs.json"))
    assert outputs["outputs"]["vertebra_model"].startswith("models:/")


def test_both_models_are_champions_and_the_schmorl_model_names_its_vertebra_model(project_run):
    cfg, parent = project_run
    vertebra = resolve_model_uri(f"models:/{cfg.models.vertebra}@champion")
    schmorl = resolve_model_uri(f"models:/{cfg.models.schmorl}@champion")
    client = mlflow.MlflowClient()
    tags = client.get_model_version(cfg.models.schmorl, schmorl.version).tags
    assert tags["radlake.vertebra_model_uri"] == vertebra.uri
    assert tags["radlake.vertebra_model_version"] == vertebra.version
    assert tags["radlake.vertebra_model_run_id"] == vertebra.run_id
    run = client.get_run(schmorl.run_id)
    assert {d.dataset.name.split("@")[0] for d in run.inputs.dataset_inputs} >= {"vertebra_crops", "annotations"}
    for key in ("test_ap_30", "test_ap_50", "test_map_50", "e2e_n_images", "e2e_fp_per_image"):
        assert key in run.data.metrics, key
    assert run.data.metrics["e2e_n_images"] > 0


def test_the_score_step_scores_every_image_with_both_champions(spark, project_run):
    cfg, parent = project_run
    children = _children(cfg, parent)
    score = children["score"]
    assert score.data.params["input.vertebra_model"] == children["promote_vertebra"].data.tags["output.vertebra_model"]
    assert score.data.params["input.schmorl_model"] == children["promote_schmorl"].data.tags["output.schmorl_model"]
    predictions = table_ref(cfg, Table.PREDICTIONS).read(spark)
    assert predictions.count() == table_ref(cfg, Table.IMAGES).read(spark).count()
    assert {r.score_run_id for r in predictions.select("score_run_id").distinct().collect()} == {score.info.run_id}
    assert score.data.tags["output.predictions_version"] == str(table_ref(cfg, Table.PREDICTIONS).version(spark))


def test_crops_record_the_vertebra_model_and_map_nodes(spark, project_run):
    cfg, _ = project_run
    crops = table_ref(cfg, Table.VERTEBRA_CROPS).read(spark)
    vertebra = resolve_model_uri(f"models:/{cfg.models.vertebra}@champion")
    rows = crops.select(
        "source", "vertebra_model_uri", "vertebra_model_version", "height", "width", "boxes_xyxy_px", "labels"
    ).collect()
    assert {r.source for r in rows} <= {"predicted", "ground_truth"} and "ground_truth" in {r.source for r in rows}
    assert {(r.vertebra_model_uri, r.vertebra_model_version) for r in rows} == {(vertebra.uri, vertebra.version)}
    assert {(r.height, r.width) for r in rows} == {(64, 64)}
    with_nodes = [r for r in rows if r.labels]
    assert with_nodes, "the archive has Schmorl's nodes: some crops must hold them"
    for r in with_nodes:
        assert len(r.labels) == len(r.boxes_xyxy_px)
        assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in r.boxes_xyxy_px)


def test_a_step_re_run_alone_with_an_earlier_steps_uri_adds_nothing(spark, project_run):
    cfg, _ = project_run
    ref = table_ref(cfg, Table.VERTEBRA_CROPS)
    before = ref.read(spark).count()
    vertebra = resolve_model_uri(f"models:/{cfg.models.vertebra}@champion")
    result = run_pipeline(spark, cfg, steps=["crops"], inputs={"vertebra_model": vertebra.uri}, log=lambda _: None)
    [step] = result.steps
    assert step["details"]["crops"]["new_crops"] == 0
    assert step["details"]["crops"]["vertebra_model"]["version"] == vertebra.version
    assert ref.read(spark).count() == before


def test_a_model_uri_that_does_not_exist_fails_before_any_work(spark, project_run):
    from radlake.data.crops import make_crops

    cfg, _ = project_run
    ref = table_ref(cfg, Table.VERTEBRA_CROPS)
    version = ref.version(spark)
    with pytest.raises(ModelNotFoundError, match="no alias 'nope'"):
        make_crops(spark, cfg, vertebra_model=f"models:/{cfg.models.vertebra}@nope")
    with pytest.raises(ModelNotFoundError, match="no version 999"):
        run_pipeline(spark, cfg, steps=["crops"], inputs={"vertebra_model": f"models:/{cfg.models.vertebra}/999"})
    assert ref.version(spark) == version


def test_steps_are_checked_by_name_and_inputs_are_required():
    assert parse_steps("train_schmorl, crops") == ["crops", "train_schmorl"]
    assert parse_steps(None) == list(STEPS)
    with pytest.raises(ConfigError, match="Unknown pipeline step"):
        parse_steps("crops,sweep")


def test_promote_without_a_run_id_names_the_missing_input(spark, project_run):
    cfg, _ = project_run
    with pytest.raises(ConfigError, match="--schmorl-run-id"):
        run_pipeline(spark, cfg, steps=["promote_schmorl"], log=lambda _: None)
