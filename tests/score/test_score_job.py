"""``radlake score``: both stages as pyfunc Spark UDFs over every frame, incremental per model pair."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F

from pickled_detectors import is_pickled, log_pickled_detector
from radlake.dicom.geometry import pixel_to_patient
from radlake.dicom.pixels import encode_pixels
from radlake.models.detector import REGRESSION_BIAS, build_detector, schmorl_spec, vertebra_spec
from radlake.models.pyfunc import ModelSignatureError, log_detector
from radlake.models.resolve import ModelNotFoundError
from radlake.score.job import score_archive
from radlake.score.stacks import FRAME_RESULT, finish_stacks
from radlake.tables import Table, table_ref
from radlake.tracking import configure_mlflow

#: Model names and tables of this file only (the archive and its MLflow store are shared).
OVERRIDES = (
    "models.vertebra=score_test_vertebra",
    "models.schmorl=score_test_schmorl",
    "tables.predictions=score_test_predictions",
    "tables.study_findings=score_test_study_findings",
    "score.vertebra_threshold=0.0",
    "score.schmorl_threshold=0.0",
)


def _example() -> pd.DataFrame:
    buf, dtype = encode_pixels(np.zeros((64, 64), np.float32))
    return pd.DataFrame([{"pixels": buf, "dtype": dtype, "height": 64, "width": 64, "pixel_spacing": [1.0, 1.0]}])


def _confident_detector(spec, seed: int):
    """An untrained, seeded detector, confident in its boxes (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    model = build_detector(spec)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    # Confident in its (untrained) boxes: the level decoding would call faint boxes false detections.
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 3.0)
    return model


def _register(config, spec, seed: int) -> str:
    """Log an untrained, seeded, confident detector and make it the champion of its registered model; returns its version."""
    configure_mlflow(config)
    model = _confident_detector(spec, seed)
    name = config.models.vertebra if spec.name == "vertebra" else config.models.schmorl
    with mlflow.start_run(run_name=f"score-test-{spec.name}-{seed}"):
        info = log_detector(model, spec, input_example=_example(), registered_model_name=name)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


@pytest.fixture(scope="module")
def scored(spark, labelled_archive, make_config):
    cfg = make_config(labelled_archive.config.storage.root, *OVERRIDES)
    _register(cfg, vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6), seed=1)
    _register(cfg, schmorl_spec(image_size=64, score_threshold=0.0, detections_per_image=3), seed=2)
    first = score_archive(spark, cfg)
    return cfg, first


def _predictions(spark, cfg):
    return table_ref(cfg, Table.PREDICTIONS).read(spark)


def test_every_frame_is_scored_once_with_both_models(spark, scored):
    cfg, summary = scored
    images = table_ref(cfg, Table.IMAGES).read(spark)
    n_images = images.count()
    assert summary.frames_scored == summary.frames_in_images == n_images > 0
    assert summary.skipped == {}
    rows = _predictions(spark, cfg)
    assert rows.count() == n_images
    assert rows.select("sop_instance_uid", "frame_index").distinct().count() == n_images
    row = rows.where("n_vertebrae > 0").first()
    assert row.vertebra_model_name == "score_test_vertebra" and row.vertebra_model_version == "1"
    assert row.schmorl_model_uri == "models:/score_test_schmorl/1" and row.score_run_id == summary.run_id
    assert (row.vertebra_threshold, row.schmorl_threshold, row.crop_size) == (0.0, 0.0, cfg.crops.size)
    assert summary.vertebrae > 0 and summary.schmorl_nodes > 0
    run = mlflow.get_run(summary.run_id)
    assert run.data.params["vertebra_model"] == "models:/score_test_vertebra/1"
    assert run.data.metrics["frames_scored"] == n_images


def test_boxes_are_in_pixels_millimetres_and_patient_coordinates(spark, scored):
    cfg, _ = scored
    instances = (
        table_ref(cfg, Table.INSTANCES)
        .read(spark)
        .select("sop_instance_uid", "image_position_patient", "image_orientation_patient")
    )
    rows = _predictions(spark, cfg).where("n_schmorl_nodes > 0").join(instances, "sop_instance_uid").collect()
    assert rows
    for row in rows:
        levels = {v.level for v in row.vertebrae}
        for box in [*row.vertebrae, *row.schmorl_nodes]:
            x0, y0, x1, y1 = box.box_xyxy_px
            assert 0 <= x0 < x1 <= row.width and 0 <= y0 < y1 <= row.height
            row_mm, col_mm = row.pixel_spacing
            assert box.box_xyxy_mm == pytest.approx([x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm])
            centre = pixel_to_patient(
                [(x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5],
                position=row.image_position_patient,
                orientation=row.image_orientation_patient,
                pixel_spacing=row.pixel_spacing,
            )
            assert box.center_patient_mm == pytest.approx(centre.tolist())
            assert len(box.corners_patient_mm) == 4
        for node in row.schmorl_nodes:
            assert node.parent_level in levels and node.endplate in ("superior", "inferior")
        assert row.max_schmorl_score == max(n.score for n in row.schmorl_nodes)


def test_study_findings_summarise_each_series(spark, scored):
    cfg, summary = scored
    findings = table_ref(cfg, Table.STUDY_FINDINGS).read(spark)
    preds = _predictions(spark, cfg)
    assert findings.count() == preds.select("series_key").distinct().count() == summary.series_updated
    per_level = (
        preds.select("series_key", F.explode("schmorl_nodes").alias("n"))
        .groupBy("series_key", "n.parent_level")
        .agg(F.max("n.score").alias("best"), F.count("*").alias("n"))
        .collect()
    )
    expected = {(r.series_key, r.parent_level): (r.best, r.n) for r in per_level}
    got = {(row.series_key, f.level): (f.max_score, f.nodes) for row in findings.collect() for f in row.level_findings}
    assert got == expected
    row = findings.where(F.size("levels_with_nodes") > 1).first()
    if row is not None:  # head to feet
        from radlake.models.levels import LEVELS

        order = [LEVELS.index(level) for level in row.levels_with_nodes]
        assert order == sorted(order)
    assert summary.findings and summary.series_with_nodes == findings.where(F.size("levels_with_nodes") > 0).count()


def test_a_rerun_scores_nothing_and_writes_nothing(spark, scored):
    cfg, first = scored
    version = table_ref(cfg, Table.PREDICTIONS).version(spark)
    again = score_archive(spark, cfg)
    assert again.frames_scored == 0 and again.frames_already_scored == first.frames_in_images
    assert table_ref(cfg, Table.PREDICTIONS).version(spark) == version
    assert _predictions(spark, cfg).count() == first.frames_in_images
    # Its run says so, and shows no review: nothing of it is new.
    assert mlflow.get_run(again.run_id).data.tags["mlflow.note.content"].startswith("Nothing new to score")
    assert again.artifacts == [] and not mlflow.MlflowClient().list_artifacts(again.run_id, "review")


def test_a_new_champion_scores_the_archive_again_and_keeps_the_old_rows(spark, scored):
    cfg, first = scored
    before = {(r.sop_instance_uid, r.frame_index): r.n_vertebrae for r in _predictions(spark, cfg).collect()}
    version = _register(cfg, vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6), seed=5)
    second = score_archive(spark, cfg)
    assert second.vertebra_model["version"] == version != first.vertebra_model["version"]
    assert second.frames_scored == first.frames_in_images
    rows = _predictions(spark, cfg)
    assert rows.count() == 2 * first.frames_in_images
    old = rows.where(F.col("score_run_id") == first.run_id).collect()
    assert {(r.sop_instance_uid, r.frame_index): r.n_vertebrae for r in old} == before
    findings = table_ref(cfg, Table.STUDY_FINDINGS).read(spark)
    assert findings.select("vertebra_model_version").distinct().count() == 2


def test_a_model_that_does_not_resolve_fails_before_the_scan(spark, scored):
    cfg, _ = scored
    version = table_ref(cfg, Table.PREDICTIONS).version(spark)
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        score_archive(spark, cfg, schmorl_model="models:/no_such_model@champion")
    assert table_ref(cfg, Table.PREDICTIONS).version(spark) == version


class _NotADetector(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_model_with_another_signature_fails_before_the_scan(spark, scored):
    cfg, _ = scored
    configure_mlflow(cfg)
    with mlflow.start_run(run_name="not-a-detector"):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_NotADetector(), input_example=pd.DataFrame({"text": ["a"]})
        )
    version = table_ref(cfg, Table.PREDICTIONS).version(spark)
    with pytest.raises(ModelSignatureError, match="inputs .*pixels"):
        score_archive(spark, cfg, vertebra_model=info.model_uri)
    assert table_ref(cfg, Table.PREDICTIONS).version(spark) == version


def test_frames_whose_pixels_cannot_be_decoded_are_skipped_and_counted(spark, scored, add_images):
    cfg, _ = scored
    # A separate images table holding only frames without pixels, in the same MLflow store.
    bad = cfg.model_copy(
        update={"tables": cfg.tables.model_copy(update={"images": "score_test_bad_images", "predictions": "score_bad"})}
    )
    add_images(bad, [("1.2.3.4", 0, "1.2.3", 64, 64, [1.0, 1.0]), ("1.2.3.5", 0, "1.2.3", 64, 64, None)])
    summary = score_archive(spark, bad)
    assert summary.frames_scored == 0 and summary.skipped == {"no_pixels": 2}


def _frame_table(nodes, vertebrae, orientation=(0, 1, 0, 0, 0, -1)) -> pa.Table:
    from pyspark.sql.pandas.types import to_arrow_schema

    from radlake.score.stacks import FRAMES_TO_FINISH

    row = {
        "sop_instance_uid": "1.2",
        "frame_index": 0,
        "study_instance_uid": "1",
        "series_instance_uid": "1.1",
        "series_key": "k",
        "slice_index": 0,
        "plane": "SAGITTAL",
        "height": 100,
        "width": 100,
        "pixel_spacing": [0.5, 0.25],
        "position": [0.0, 0.0, 0.0],
        "orientation": list(orientation),
        "vertebrae": vertebrae,
        "nodes": nodes,
    }
    return pa.Table.from_pylist([row], schema=to_arrow_schema(FRAMES_TO_FINISH))


def test_finish_merges_a_node_found_in_two_crops_and_names_its_endplate():
    # Two vertebrae as a detector logged before the level evidence names them: levels only.
    l1 = {"index": 1, "level": "L1", "score": 0.9, "box": [20.0, 10.0, 60.0, 40.0]}
    l2 = {"index": 0, "level": "L2", "score": 0.8, "box": [20.0, 45.0, 60.0, 75.0]}
    nodes = [
        # the same node, on L1's inferior endplate, seen from both crops
        {
            "vertebra_index": 1,
            "vertebra_box": l1["box"],
            "crop_box_xyxy_px": [10, 2, 70, 48],
            "score": 0.7,
            "box": [30.0, 36.0, 36.0, 41.0],
        },
        {
            "vertebra_index": 0,
            "vertebra_box": l2["box"],
            "crop_box_xyxy_px": [10, 37, 70, 83],
            "score": 0.5,
            "box": [30.5, 36.0, 36.0, 41.5],
        },
    ]
    out = finish_stacks(_frame_table(nodes, [l2, l1]), merge_iou=0.3, min_probability=0.8)
    row = out.to_pylist()[0]
    assert out.schema.names == FRAME_RESULT.fieldNames()
    assert [v["level"] for v in row["vertebrae"]] == ["L1", "L2"]  # head to feet
    assert {v["level_status"] for v in row["vertebrae"]} == {"identified"}
    assert row["n_schmorl_nodes"] == 1
    (node,) = row["schmorl_nodes"]
    assert (node["parent_level"], node["endplate"], node["score"]) == ("L1", "inferior", 0.7)
    assert node["box_xyxy_mm"] == pytest.approx([30 * 0.25, 36 * 0.5, 36 * 0.25, 41 * 0.5])
    # rows run head to feet (IOP[5] = -1): y grows towards the feet, x towards the patient's posterior
    assert node["center_patient_mm"] == pytest.approx([0.0, (33 - 0.5) * 0.25, -(38.5 - 0.5) * 0.5])
    assert row["max_schmorl_score"] == 0.7


def test_a_detector_logged_without_params_is_held_to_the_threshold(spark, scored):
    from mlflow.models import ModelSignature

    from radlake.models.pyfunc import DetectorModel, _signature, check_detector_signature

    cfg, first = scored
    # the fixture's first vertebra model had this seed and spec: the same weights
    seen = sorted(
        v.score
        for r in _predictions(spark, cfg).where(F.col("score_run_id") == first.run_id).collect()
        for v in r.vertebrae
    )
    threshold = seen[len(seen) // 2]
    spec = vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6)
    model = _confident_detector(spec, seed=1)
    configure_mlflow(cfg)
    # as logged before the signature had params
    with_params = _signature(spec)
    with mlflow.start_run(run_name="detector-without-params"), tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), f"{tmp}/weights.pt")
        Path(tmp, "spec.json").write_text(json.dumps(spec.as_dict()))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=DetectorModel(),
            artifacts={"weights": f"{tmp}/weights.pt", "spec": f"{tmp}/spec.json"},
            signature=ModelSignature(inputs=with_params.inputs, outputs=with_params.outputs),
        )
    assert check_detector_signature(info.model_uri) == ()
    strict = cfg.model_copy(update={"score": cfg.score.model_copy(update={"vertebra_threshold": threshold})})
    summary = score_archive(spark, strict, vertebra_model=info.model_uri)
    assert summary.frames_scored == summary.frames_in_images
    rows = _predictions(spark, cfg).where(F.col("score_run_id") == summary.run_id).collect()
    scores = [v.score for r in rows for v in r.vertebrae]
    assert scores and min(scores) >= threshold and len(scores) < len(seen)
    assert {r.vertebra_threshold for r in rows} == {threshold}


def _found(rows) -> dict:
    """Per frame, its vertebrae and nodes as (level, score, box) rounded to 1e-3."""

    def boxes(items, level: str):
        return sorted((b[level] or "", round(b.score, 3), tuple(round(v, 3) for v in b.box_xyxy_px)) for b in items)

    return {
        (r.sop_instance_uid, r.frame_index): (boxes(r.vertebrae, "level"), boxes(r.schmorl_nodes, "parent_level"))
        for r in rows
    }


def test_a_detector_pickled_before_models_from_code_loads_and_scores_as_before(spark, scored):
    """A registered vertebra detector of the old form (a pickled DetectorModel) scores like the same weights from code."""
    cfg, first = scored
    spec = vertebra_spec(image_size=128, score_threshold=0.0, detections_per_image=6)
    configure_mlflow(cfg)
    with mlflow.start_run(run_name="pickled-detector"):
        info = log_pickled_detector(
            _confident_detector(spec, seed=1), spec, input_example=_example(), registered_model_name=cfg.models.vertebra
        )
    uri = f"models:/{cfg.models.vertebra}/{info.registered_model_version}"
    assert is_pickled(uri) and not is_pickled(first.vertebra_model["uri"])
    assert mlflow.pyfunc.load_model(uri).metadata.signature.params is not None
    summary = score_archive(spark, cfg, vertebra_model=uri, schmorl_model=first.schmorl_model["uri"])
    assert summary.frames_scored == summary.frames_in_images and summary.vertebra_model["uri"] == uri
    rows = _predictions(spark, cfg)
    again = rows.where(F.col("score_run_id") == summary.run_id).collect()
    before = rows.where(F.col("score_run_id") == first.run_id).collect()
    assert _found(again) == _found(before) and any(r.n_vertebrae for r in again)


def test_the_score_run_is_described_and_carries_review_pngs_and_the_sr(spark, scored):
    import pydicom
    from PIL import Image

    cfg, first = scored
    run = mlflow.get_run(first.run_id)
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(
        f"Scored {first.frames_scored} frames (0 already scored) with {first.vertebra_model['uri']} +"
    )
    assert f"{first.vertebrae} vertebrae, {first.schmorl_nodes} Schmorl's nodes" in note and "\n" not in note
    # The study shown is the one with the strongest Schmorl's-node finding of the run.
    [top] = (
        _predictions(spark, cfg)
        .where(F.col("score_run_id") == first.run_id)
        .groupBy("study_instance_uid")
        .agg(F.max("max_schmorl_score").alias("best"), F.sum("n_vertebrae").alias("vertebrae"))
        .orderBy(F.desc_nulls_last("best"), F.desc("vertebrae"), "study_instance_uid")
        .limit(1)
        .collect()
    )
    pngs = [a for a in first.artifacts if a.endswith(".png")]
    [sr] = [a for a in first.artifacts if a.endswith(".dcm")]
    assert pngs and all(a.startswith(f"review/{top.study_instance_uid}/") for a in pngs)
    assert sr.startswith(f"sr/{top.study_instance_uid}/SR_") and "sr/summary.json" in first.artifacts
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{first.run_id}/sr/summary.json"))
    assert summary["files"] == [sr] and summary["studies"] == 1 and summary["measurement_groups"] > 0
    assert {k: sorted(v) for k, v in summary["review_files"].items()} == {top.study_instance_uid: sorted(pngs)}
    # At most score.artifact_slices slices per series, each a readable PNG; the SR is a DICOM SR of the study.
    assert len(pngs) <= cfg.score.artifact_slices * len({p.rsplit("_slice", 1)[0] for p in pngs})
    local = Path(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path="review"))
    with Image.open(local / pngs[0].removeprefix("review/")) as image:
        assert image.format == "PNG" and min(image.size) >= 64
    dataset = pydicom.dcmread(mlflow.artifacts.download_artifacts(run_id=first.run_id, artifact_path=sr))
    assert dataset.Modality == "SR" and dataset.StudyInstanceUID == top.study_instance_uid
    assert json.loads(mlflow.artifacts.load_text(f"runs:/{first.run_id}/score/summary.json"))["artifacts"] == sorted(
        first.artifacts
    )
