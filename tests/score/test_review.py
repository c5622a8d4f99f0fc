"""``radlake review``: one PNG per sagittal frame, windowed, with the boxes of the chosen model pair drawn."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from radlake.dicom.pixels import VALUE_COLUMNS, row_values
from radlake.score.review import (
    NODE_COLOUR,
    VERTEBRA_COLOUR,
    display_scale,
    render_frame,
    review_file_name,
    window_to_uint8,
    write_review,
)
from radlake.score.schema import PREDICTIONS
from radlake.score.sr import NoPredictionsError, StudyNotFoundError
from radlake.tables import Table, table_ref

PAIR = ("models:/review_test_vertebra/1", "models:/review_test_schmorl/1")
KEYS = ("sop_instance_uid", "frame_index")


def _key(img) -> tuple:
    return (img.sop_instance_uid, img.frame_index)


@pytest.fixture(scope="module")
def scored(spark, labelled_archive, make_config):
    """(config, study with the most nodes, boxes per frame, the frame left without a prediction row)."""
    cfg = make_config(labelled_archive.config.storage.root, "tables.predictions=review_test_predictions")
    boxes: dict[tuple, dict[str, list]] = {}
    for a in table_ref(cfg, Table.ANNOTATIONS).read(spark).collect():
        frame = boxes.setdefault((a.sop_instance_uid, a.frame_index), {"vertebrae": [], "schmorl_nodes": []})
        score = round(0.5 + (int(sum(a.box_xyxy_px)) % 50) / 100, 3)
        if a.label_class == "vertebra":
            frame["vertebrae"].append({"level": a.level, "score": score, "box_xyxy_px": list(a.box_xyxy_px)})
        else:
            frame["schmorl_nodes"].append(
                {"parent_level": a.parent_level, "score": score, "box_xyxy_px": a.box_xyxy_px}
            )
    images = table_ref(cfg, Table.IMAGES).read(spark).drop("pixels").collect()
    study_of = {(i.sop_instance_uid, i.frame_index): i.study_instance_uid for i in images}
    nodes: dict[str, int] = {}
    for key, found in boxes.items():
        nodes[study_of[key]] = nodes.get(study_of[key], 0) + len(found["schmorl_nodes"])
    study = max(nodes, key=lambda s: (nodes[s], s))
    sagittal = sorted(
        (i for i in images if i.study_instance_uid == study and i.plane == "SAGITTAL"),
        key=lambda i: (i.series_key, i.slice_index),
    )
    # The frame with the fewest nodes gets no prediction row at all (its labelled boxes are not drawn).
    unscored_key = min((_key(i) for i in sagittal), key=lambda k: len(boxes.get(k, {}).get("schmorl_nodes", [])))
    rows = []
    for img in images:
        key = (img.sop_instance_uid, img.frame_index)
        if key == unscored_key:
            continue  # this frame gets no prediction row at all
        found = boxes.get(key, {"vertebrae": [], "schmorl_nodes": []})
        row = {f.name: None for f in PREDICTIONS.fields}
        row.update({c: img[c] for c in (*KEYS, "study_instance_uid", "series_instance_uid", "series_key")})
        row.update({c: img[c] for c in ("slice_index", "plane", "height", "width", "pixel_spacing")})
        row.update(
            vertebrae=found["vertebrae"],
            schmorl_nodes=found["schmorl_nodes"],
            vertebra_model_uri=PAIR[0],
            schmorl_model_uri=PAIR[1],
            scored_at=datetime(2026, 11, 1, tzinfo=UTC),
        )
        rows.append(tuple(row[f.name] for f in PREDICTIONS.fields))
    path = table_ref(cfg, Table.PREDICTIONS).path
    spark.createDataFrame(rows, PREDICTIONS).write.format("delta").mode("overwrite").save(path)
    return cfg, study, sagittal, boxes, unscored_key


@pytest.fixture(scope="module")
def review(spark, scored, tmp_path_factory):
    cfg, study, *_ = scored
    return write_review(spark, cfg, study_uid=study, out_dir=tmp_path_factory.mktemp("review"))


def _pixels(spark, cfg, key) -> np.ndarray:
    sop, frame = key
    row = (
        table_ref(cfg, Table.IMAGES)
        .read(spark)
        .where((F.col("sop_instance_uid") == sop) & (F.col("frame_index") == frame))
        .select(*VALUE_COLUMNS)
        .first()
    )
    return row_values(row)


def test_one_png_per_sagittal_frame_with_the_expected_size(scored, review):
    _, study, sagittal, boxes, _ = scored
    assert review.study_instance_uid == study and review.model_pair == list(PAIR)
    assert review.frames == len(sagittal) == len(review.files) == len(set(review.files))
    assert review.frames_with_predictions == len(sagittal) - 1
    empty = {"vertebrae": [], "schmorl_nodes": []}
    mine = [boxes.get(_key(i), empty) for i in sagittal if _key(i) != scored[4]]
    assert review.vertebrae == sum(len(b["vertebrae"]) for b in mine) > 0
    assert review.schmorl_nodes == sum(len(b["schmorl_nodes"]) for b in mine) > 0
    for img, path in zip(sagittal, review.files, strict=True):  # both ordered by series and slice
        assert path.endswith(f"_slice{img.slice_index:03d}.png") and img.series_key[:12] in path
        scale = display_scale(img.height, img.width)
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "RGB"
            assert png.size == (img.width * scale, img.height * scale)
    assert review.as_dict()["frames"] == review.frames


def test_boxes_are_drawn_in_their_colours_and_nothing_else_changes(spark, scored, review):
    cfg, _, sagittal, boxes, unscored = scored
    candidates = [k for k in range(len(sagittal)) if _key(sagittal[k]) != unscored]
    index = max(candidates, key=lambda k: len(boxes.get(_key(sagittal[k]), {}).get("schmorl_nodes", [])))
    img, path = sagittal[index], review.files[index]
    found = boxes[_key(img)]
    assert found["schmorl_nodes"], "the chosen frame must show a Schmorl's node"
    scale = display_scale(img.height, img.width)
    plain = np.asarray(render_frame(_pixels(spark, cfg, _key(img)), scale=scale))
    drawn = np.asarray(Image.open(path).convert("RGB"))
    assert plain.shape == drawn.shape
    for items, colour in ((found["vertebrae"], VERTEBRA_COLOUR), (found["schmorl_nodes"], NODE_COLOUR)):
        for item in items:
            x0, y0, x1, y1 = (round(v * scale) for v in item["box_xyxy_px"])
            x1, y1 = min(x1, drawn.shape[1]) - 1, min(y1, drawn.shape[0]) - 1
            outline = np.concatenate([drawn[y0, x0:x1], drawn[y1, x0:x1], drawn[y0:y1, x0], drawn[y0:y1, x1]])
            before = np.concatenate([plain[y0, x0:x1], plain[y1, x0:x1], plain[y0:y1, x0], plain[y0:y1, x1]])
            assert (outline != before).any(axis=1).mean() > 0.9
            if colour == NODE_COLOUR:  # nodes are drawn last: their whole outline has their colour
                assert (outline == colour).all(axis=1).mean() > 0.9
            else:
                assert (outline == colour).all(axis=1).mean() > 0.5
    # Far from every box and label (the image's right border is clear on sagittal spine frames) nothing changed.
    assert np.array_equal(drawn[:, -2:], plain[:, -2:])


def test_frame_without_prediction_row_is_written_plain(spark, scored, review):
    cfg, _, sagittal, _, unscored = scored
    [index] = [k for k, img in enumerate(sagittal) if _key(img) == unscored]
    scale = display_scale(sagittal[index].height, sagittal[index].width)
    plain = np.asarray(render_frame(_pixels(spark, cfg, unscored), scale=scale))
    assert np.array_equal(np.asarray(Image.open(review.files[index]).convert("RGB")), plain)


def test_max_slices_keeps_the_central_slices_of_each_stack(spark, scored, tmp_path):
    cfg, study, sagittal, _, _ = scored
    summary = write_review(spark, cfg, study_uid=study, out_dir=tmp_path, max_slices=1, min_size=1)
    stacks: dict[str, list[int]] = {}
    for img in sagittal:
        stacks.setdefault(img.series_key, []).append(img.slice_index)
    assert summary.frames == len(stacks) == len(list(tmp_path.glob("*.png")))
    for key, slices in stacks.items():
        middle = sorted(slices)[(len(slices) - 1) // 2]
        assert any(key[:12] in p and p.endswith(f"_slice{middle:03d}.png") for p in summary.files)
    img = sagittal[0]
    with Image.open(summary.files[0]) as png:  # min_size=1: the stored pixel grid
        assert png.size == (img.width, img.height)


def test_unknown_study_pair_or_missing_table_is_a_clear_error(spark, scored, make_config, tmp_path):
    cfg, study, *_ = scored
    with pytest.raises(StudyNotFoundError, match="1.2.3.404"):
        write_review(spark, cfg, study_uid="1.2.3.404", out_dir=tmp_path)
    with pytest.raises(StudyNotFoundError, match="models:/nope/1"):
        write_review(spark, cfg, study_uid=study, out_dir=tmp_path, model_pair=("models:/nope/1", "models:/nope/2"))
    with pytest.raises(ValueError, match="max_slices"):
        write_review(spark, cfg, study_uid=study, out_dir=tmp_path, max_slices=0)
    with pytest.raises(NoPredictionsError, match="radlake score"):
        write_review(spark, make_config(tmp_path / "root"), study_uid=study, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.png"))


def test_window_names_and_scale():
    ramp = np.arange(100, dtype=np.float32).reshape(10, 10)
    grey = window_to_uint8(ramp)
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert window_to_uint8(np.full((4, 4), 7.0)).max() == 0
    with pytest.raises(ValueError, match="image"):
        window_to_uint8(np.zeros(5))
    assert review_file_name("0123456789abcdef", 3, 4) == "0123456789ab_series3_slice004.png"
    assert display_scale(128, 100) == 4 and display_scale(600, 400) == 1
    box = {"level": "L1", "score": 0.9, "box_xyxy_px": [35, 20, 45, 30]}
    drawn = np.asarray(render_frame(np.kron(ramp, np.ones((5, 5))), [box], scale=2))  # 50 x 50 px, shown 100 x 100
    assert drawn.shape == (100, 100, 3) and tuple(drawn[40, 80]) == VERTEBRA_COLOUR  # top edge (row 40)
    assert tuple(drawn[50, 80]) != VERTEBRA_COLOUR  # inside: not filled
    with pytest.raises(ValueError, match="scale"):
        render_frame(ramp, scale=0)
