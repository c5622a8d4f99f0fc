"""``radlake evaluate``: the pipeline's registered pair on another labelled archive, in tables of its own.

The pair comes from the session's pipeline run (``project_run``, barely trained): what is
checked is what an evaluation measures, where it writes and how it is traced in MLflow,
not the figures themselves (``make demo`` reports those).
"""

from __future__ import annotations

import csv
import io
import json

import mlflow
import pytest

from radlake.models.resolve import ModelNotFoundError
from radlake.tables import Table, table_ref
from radlake.workflow.evaluate import BARS, EvaluationInputError, evaluate_models


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Two labelled studies of a seed the pipeline never saw, at another matrix size."""
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    root = tmp_path_factory.mktemp("held-out")
    settings = {"studies": 2, "seed": 77, "image_size": 160, "sagittal_slices": 4, "axial_slices": 1}
    summary = generate_archive(root / "archive", SynthConfig(**settings, coronal_slices=1, node_fraction=0.6))
    return root, summary


@pytest.fixture(scope="module")
def evaluated(spark, project_run, held_out):
    from radlake.tracking import configure_mlflow

    cfg, _ = project_run
    configure_mlflow(cfg)
    root, summary = held_out
    training = {t: table_ref(cfg, t).version(spark) for t in (Table.IMAGES, Table.ANNOTATIONS, Table.PREDICTIONS)}
    result = evaluate_models(
        spark, cfg, archive=summary.out_dir, labels_file=summary.labels_path, root=root / "evaluation"
    )
    return cfg, result, training


def test_reports_every_figure_over_the_archive_and_per_study(evaluated):
    _, result, _ = evaluated
    m = result.metrics
    for key in (*BARS, "vertebra_detection_rate", "series_all_found_and_right", "schmorl_froc_sens_at_4fp"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["n_frames"] == 8 and m["n_series"] == 2 and m["n_true_vertebrae"] > 0
    assert len(result.per_study) == 2
    assert {"study_instance_uid", "vertebra_ap_50", "level_id_rate", "schmorl_froc_sens_at_1fp"} <= set(
        result.per_study[0]
    )
    assert result.vertebra_model["version"] and result.schmorl_model["version"]


def test_uses_tables_of_its_own_and_leaves_the_training_tables_alone(spark, evaluated, held_out):
    cfg, result, training = evaluated
    root, _ = held_out
    assert result.root == str(root / "evaluation")
    assert {t: table_ref(cfg, t).version(spark) for t in training} == training
    own = table_ref(
        cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"root": root / "evaluation"})}), "predictions"
    )
    assert own.exists(spark) and own.read(spark).count() == 8


def test_is_an_mlflow_run_linked_to_both_model_versions(evaluated):
    cfg, result, _ = evaluated
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == f"{cfg.mlflow.experiment}-evaluation"
    assert run.data.tags["radlake.vertebra_model_version"] == result.vertebra_model["version"]
    assert run.data.tags["radlake.schmorl_model_uri"] == result.schmorl_model["uri"]
    assert run.data.metrics["level_id_rate"] == pytest.approx(result.metrics["level_id_rate"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert artifacts == {"plots/froc.png", "plots/levels.png", "plots/per_study.png"}
    rows = list(
        csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/per_study.csv")))
    )
    assert len(rows) == 2
    assert [d.dataset.name.split("@")[0] for d in run.inputs.dataset_inputs] == ["annotations"]
    for model in (result.vertebra_model, result.schmorl_model):
        tags = client.get_model_version(model["name"], model["version"]).tags
        [key] = [k for k in tags if k.startswith("radlake.evaluation.")]
        assert json.loads(tags[key])["run_id"] == result.run_id
    # The scoring run is nested under the evaluation run.
    [score] = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert score.data.tags["radlake.step"] == "score"
    # Both runs say what they did (their description in the MLflow UI).
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"External validation of {result.vertebra_model['uri']} + {result.schmorl_model['uri']}")
    assert "(2 studies): vertebra AP@0.5 " in note and score.data.tags["mlflow.note.content"].startswith("Scored 8 ")


def test_a_second_evaluation_scores_nothing_again(spark, project_run, evaluated, held_out):
    cfg, first, _ = evaluated
    root, summary = held_out
    again = evaluate_models(
        spark, cfg, archive=summary.out_dir, labels_file=summary.labels_path, root=root / "evaluation"
    )
    assert again.metrics == pytest.approx(first.metrics)
    client = mlflow.MlflowClient()
    [score] = client.search_runs(
        [client.get_run(again.run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{again.run_id}'"
    )
    assert score.data.metrics["frames_scored"] == 0


def test_bad_inputs_fail_before_anything_is_written(spark, project_run, held_out, tmp_path):
    cfg, _ = project_run
    root, summary = held_out
    with pytest.raises(EvaluationInputError, match="does not exist"):
        evaluate_models(spark, cfg, archive=tmp_path / "missing", labels_file=summary.labels_path, root=tmp_path / "a")
    with pytest.raises(EvaluationInputError, match="training storage"):
        evaluate_models(spark, cfg, archive=summary.out_dir, labels_file=summary.labels_path, root=cfg.storage.root)
    with pytest.raises(ModelNotFoundError, match="nope"):
        evaluate_models(
            spark,
            cfg,
            archive=summary.out_dir,
            labels_file=summary.labels_path,
            vertebra_model="models:/nope@champion",
            root=tmp_path / "b",
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
