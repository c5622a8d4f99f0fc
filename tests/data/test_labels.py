"""Annotations import: counts, units, rejections, re-imports and both file formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from radlake.cli import main
from radlake.data.labels import (
    LabelsError,
    LabelsFormatError,
    annotation_id,
    import_labels,
    read_labels_file,
)
from radlake.tables import Table, table_ref

#: Hand-made frames: (sop, frame, study, height rows, width columns, [row, column] spacing mm).
FRAMES = [
    ("1.9.1", 0, "1.9", 100, 200, [0.5, 0.8]),
    ("1.9.1", 1, "1.9", 100, 200, [0.5, 0.8]),
    ("1.9.2", 0, "1.9", 100, 200, None),
]
CATEGORIES = [{"id": 1, "name": "vertebra"}, {"id": 2, "name": "schmorl_node"}, {"id": 3, "name": "disc"}]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, make_config, add_images) -> Path:
    """A storage root whose images table holds only :data:`FRAMES` (no pixels)."""
    root = tmp_path_factory.mktemp("labels-tiny")
    add_images(make_config(root), FRAMES)
    return root


def _coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def _ann(image_id: int, category_id: int, bbox: list, **names) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **names}


def _rows(spark, config, *drop: str) -> set[tuple]:
    """The annotations table as a set of tuples (arrays as tuples), without the ``drop`` columns."""
    df = table_ref(config, Table.ANNOTATIONS).read(spark)
    keep = [c for c in df.columns if c not in drop]
    return {tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in df.select(*keep).collect()}


# ------------------------------------------------------------------ the synthetic archive


def test_box_counts_match_labels_json(spark, labelled_archive):
    la = labelled_archive
    images = la.labels["images"]
    expected = {
        (sop, "vertebra", v["level"], None, None, tuple(v["xyxy"])) for sop, e in images.items() for v in e["vertebrae"]
    } | {
        (sop, "schmorl_node", None, n["parent_level"], n["endplate"], tuple(n["xyxy"]))
        for sop, e in images.items()
        for n in e["nodes"]
    }
    n_nodes = sum(len(e["nodes"]) for e in images.values())
    assert n_nodes > 0 and len(expected) == sum(len(e["vertebrae"]) for e in images.values()) + n_nodes
    assert la.imported.rejected == 0 and la.imported.rejections == []
    assert la.imported.inserted == la.imported.accepted == len(expected)
    assert la.imported.by_class == {"vertebra": len(expected) - n_nodes, "schmorl_node": n_nodes}
    ann = table_ref(la.config, Table.ANNOTATIONS).read(spark).collect()
    stored = {
        (r.sop_instance_uid, r.label_class, r.level, r.parent_level, r.endplate, tuple(r.box_xyxy_px)) for r in ann
    }
    assert len(ann) == len(stored) == len(expected)
    assert stored == expected
    # Study and series come from the images table and agree with the file; ids are the documented hash.
    for r in ann:
        entry = images[r.sop_instance_uid]
        assert (r.study_instance_uid, r.series_instance_uid) == (
            entry["study_instance_uid"],
            entry["series_instance_uid"],
        )
        assert (r.image_height, r.image_width, r.frame_index) == (entry["rows"], entry["columns"], 0)
        assert r.source_file == "labels.json" and r.import_run_id == la.imported.run_id
        names = {"level": r.level, "parent_level": r.parent_level, "endplate": r.endplate}
        assert r.annotation_id == annotation_id(r.sop_instance_uid, 0, r.label_class, r.box_xyxy_px, **names)


def test_mm_boxes_use_row_and_column_spacing(spark, labelled_archive):
    la = labelled_archive
    anisotropic = {
        sop: e["pixel_spacing"]
        for sop, e in la.labels["images"].items()
        if e["vertebrae"] and abs(e["pixel_spacing"][0] - e["pixel_spacing"][1]) > 0.05
    }
    assert anisotropic, "the fixture archive must hold a study with row spacing != column spacing"
    stored = {
        r.sop_instance_uid: r.pixel_spacing
        for r in table_ref(la.config, Table.IMAGES)
        .read(spark)
        .where(F.col("sop_instance_uid").isin(list(anisotropic)))
        .select("sop_instance_uid", "pixel_spacing")
        .collect()
    }
    rows = (
        table_ref(la.config, Table.ANNOTATIONS)
        .read(spark)
        .where(F.col("sop_instance_uid").isin(list(anisotropic)))
        .collect()
    )
    assert rows
    for r in rows:
        row_mm, col_mm = stored[r.sop_instance_uid]  # PixelSpacing order: [row, column]
        assert [row_mm, col_mm] == pytest.approx(anisotropic[r.sop_instance_uid], abs=1e-4)  # the file agrees
        x0, y0, x1, y1 = r.box_xyxy_px
        assert r.box_xyxy_mm == pytest.approx([x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm], rel=1e-12)


def test_reimport_adds_nothing(spark, labelled_archive):
    la = labelled_archive
    ref = table_ref(la.config, Table.ANNOTATIONS)
    version, before = ref.version(spark), _rows(spark, la.config)
    again = import_labels(spark, la.config, la.labels_path)
    assert (again.inserted, again.replaced, again.rejected) == (0, 0, 0)
    assert again.unchanged == again.accepted == la.imported.accepted
    assert ref.version(spark) == version  # nothing to write: no commit at all
    assert _rows(spark, la.config) == before


def test_coco_import_of_the_same_boxes_gives_the_same_rows(spark, labelled_archive, make_config, tmp_path):
    la = labelled_archive
    images, annotations = [], []
    for i, (sop, entry) in enumerate(sorted(la.labels["images"].items())):
        image = {"id": 100 + i, "sop_instance_uid": sop, "width": entry["columns"], "height": entry["rows"]}
        if i % 2:
            image["frame_index"] = 0  # optional: defaults to 0
        images.append(image)
        for v in entry["vertebrae"]:
            x0, y0, x1, y1 = v["xyxy"]
            annotations.append(_ann(100 + i, 1, [x0, y0, x1 - x0, y1 - y0], level=v["level"], truncated=v["truncated"]))
        for n in entry["nodes"]:
            x0, y0, x1, y1 = n["xyxy"]
            names = {"parent_level": n["parent_level"], "endplate": n["endplate"]}
            annotations.append(_ann(100 + i, 2, [x0, y0, x1 - x0, y1 - y0], **names))
    coco = _coco(tmp_path / "coco.json", images, annotations)
    cfg = make_config(la.config.storage.root, "tables.annotations=annotations_coco")
    summary = import_labels(spark, cfg, coco)
    assert summary.format == "coco" and summary.rejected == 0 and summary.inserted == la.imported.accepted
    run_columns = ("source_file", "import_run_id", "imported_at")
    assert _rows(spark, cfg, *run_columns) == _rows(spark, la.config, *run_columns)


# ------------------------------------------------------------------ hand-made images and files


def test_invalid_boxes_are_rejected_with_reasons_and_near_ones_clipped(spark, tiny_root, make_config, tmp_path):
    cfg = make_config(tiny_root, "tables.annotations=ann_checks")
    images = [
        {"id": 1, "sop_instance_uid": "1.9.1", "frame_index": 0, "width": 200, "height": 100},
        {"id": 2, "sop_instance_uid": "1.9.1", "frame_index": 1},
        {"id": 3, "sop_instance_uid": "9.9.9"},
        {"id": 4, "sop_instance_uid": "1.9.1", "frame_index": 7},
        {"id": 5, "sop_instance_uid": "1.9.2", "width": 256, "height": 256},
        {"id": 6, "sop_instance_uid": "1.9.2"},
    ]
    annotations = [
        _ann(1, 1, [20, 10, 40, 30], level="L3"),  # 0 kept
        _ann(1, 2, [-0.6, 70, 10, 30.5], parent_level="L3", endplate="superior"),  # 1 overhangs < 1 px: clipped
        _ann(2, 1, [190, 10, 13, 20], level="L4"),  # 2 x1 = 203 > 200 + 1
        _ann(2, 1, [10, 10, 0, 5], level="L4"),  # 3 zero width
        _ann(3, 1, [10, 10, 5, 5], level="L4"),  # 4 unknown SOPInstanceUID
        _ann(4, 1, [10, 10, 5, 5], level="L4"),  # 5 unknown frame
        _ann(1, 3, [10, 10, 5, 5]),  # 6 unknown category
        _ann(1, 1, [10, 10, 5, 5], level="L9"),  # 7 unknown level
        _ann(1, 1, [20, 10, 40, 30], level="L3"),  # 8 duplicate of 0
        _ann(1, 1, [1, 2, 3], level="L3"),  # 9 malformed bbox
        _ann(5, 1, [10, 10, 5, 5], level="L4"),  # 10 drawn on another image size
        _ann(6, 1, [5, 5, 5, 5], level="L4"),  # 11 kept, frame without pixel spacing
        _ann(2, 1, [0, 0, 200, 100], level="L5"),  # 12 kept: the whole frame
    ]
    summary = import_labels(spark, cfg, _coco(tmp_path / "checks.json", images, annotations))

    reasons = {int(re.match(r"annotations\[(\d+)\]", r.item).group(1)): r.reason for r in summary.rejections}
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 8, 9, 10}
    assert "more than 1.0 pixel outside the 200x100" in reasons[2]
    assert reasons[3].startswith("degenerate box")
    assert "no frame 0 of SOPInstanceUID 9.9.9" in reasons[4]
    assert "no frame 7 of SOPInstanceUID 1.9.1" in reasons[5]
    assert "category 'disc'" in reasons[6]
    assert "'L9' is not a vertebral level" in reasons[7]
    assert reasons[8].startswith("duplicate of annotations[0]")
    assert "4 finite numbers" in reasons[9]
    assert "256x256" in reasons[10] and "200x100" in reasons[10]
    assert (summary.boxes_in_file, summary.accepted, summary.rejected) == (13, 4, 9)
    assert (summary.inserted, summary.clipped, summary.without_spacing) == (4, 1, 1)

    rows = {
        (r.sop_instance_uid, r.frame_index, r.label_class, r.level or r.parent_level): r
        for r in table_ref(cfg, Table.ANNOTATIONS).read(spark).collect()
    }
    assert set(rows) == {
        ("1.9.1", 0, "vertebra", "L3"),
        ("1.9.1", 0, "schmorl_node", "L3"),
        ("1.9.2", 0, "vertebra", "L4"),
        ("1.9.1", 1, "vertebra", "L5"),
    }
    kept = rows["1.9.1", 0, "vertebra", "L3"]
    assert kept.box_xyxy_px == [20, 10, 60, 40]
    # spacing [0.5 row, 0.8 column]: x scales by 0.8, y by 0.5
    assert kept.box_xyxy_mm == pytest.approx([16.0, 5.0, 48.0, 20.0])
    assert not kept.clipped and kept.truncated is None
    clipped = rows["1.9.1", 0, "schmorl_node", "L3"]
    assert clipped.box_xyxy_px == pytest.approx([0.0, 70.0, 9.4, 100.0])
    assert clipped.clipped and clipped.truncated and clipped.endplate == "superior"
    assert clipped.box_xyxy_mm == pytest.approx([0.0, 35.0, 7.52, 50.0])
    assert rows["1.9.2", 0, "vertebra", "L4"].box_xyxy_mm is None
    assert rows["1.9.1", 1, "vertebra", "L5"].box_xyxy_px == [0, 0, 200, 100]


def test_corrected_file_replaces_its_own_boxes_frame_by_frame(spark, tiny_root, make_config, tmp_path):
    cfg = make_config(tiny_root, "tables.annotations=ann_corrections")
    f0 = {"id": 1, "sop_instance_uid": "1.9.1"}
    f1 = {"id": 2, "sop_instance_uid": "1.9.1", "frame_index": 1}
    g0 = {"id": 3, "sop_instance_uid": "1.9.2"}
    a1, a2 = _ann(1, 1, [10, 10, 20, 20], level="L1"), _ann(1, 1, [30, 30, 20, 20], level="L2")
    b1, c1 = _ann(2, 1, [10, 10, 20, 20], level="L1"), _ann(3, 1, [5, 5, 5, 5], level="L1")
    first = import_labels(spark, cfg, _coco(tmp_path / "v1" / "boxes.json", [f0, f1, g0], [a1, a2, b1, c1]))
    other = import_labels(spark, cfg, _coco(tmp_path / "other.json", [f0], [_ann(1, 1, [50, 50, 10, 10], level="L4")]))
    assert (first.inserted, other.inserted) == (4, 1)

    # The same file name again: on 1.9.1 frame 0, a2 moved by 2 px; 1.9.2 listed without boxes;
    # 1.9.1 frame 1 not listed.
    a2_moved = _ann(1, 1, [32, 30, 20, 20], level="L2")
    fixed = import_labels(spark, cfg, _coco(tmp_path / "v2" / "boxes.json", [f0, g0], [a1, a2_moved]))
    assert (fixed.inserted, fixed.unchanged, fixed.replaced) == (1, 1, 2)
    stored = {(r[0], r[1], r[2], tuple(r[3])) for r in _rows_of(spark, cfg)}
    assert stored == {
        ("boxes.json", "1.9.1", 0, (10, 10, 30, 30)),  # a1 unchanged
        ("boxes.json", "1.9.1", 0, (32, 30, 52, 50)),  # a2 replaced by its correction
        ("other.json", "1.9.1", 0, (50, 50, 60, 60)),  # another file's box: untouched
        ("boxes.json", "1.9.1", 1, (10, 10, 30, 30)),  # frame not listed: kept
    }  # c1 on 1.9.2 is gone: the file lists that frame with no boxes


def _rows_of(spark, config) -> list[tuple]:
    df = table_ref(config, Table.ANNOTATIONS).read(spark)
    return [tuple(r) for r in df.select("source_file", "sop_instance_uid", "frame_index", "box_xyxy_px").collect()]


def test_file_in_neither_format_is_a_clear_error(tmp_path):
    cases = {
        "list.json": "[1, 2, 3]",
        "keys.json": json.dumps({"boxes": [], "frames": []}),
        "text.json": "not json at all",
        "coco-partial.json": json.dumps({"images": [], "annotations": []}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(LabelsFormatError, match=re.escape(str(path))) as info:
            read_labels_file(path)
        assert "radlake-synth-labels" in str(info.value) and "COCO" in str(info.value)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"format": "radlake-synth-labels", "version": 9, "images": {}}))
    with pytest.raises(LabelsFormatError, match="version 9"):
        read_labels_file(future)
    with pytest.raises(LabelsError, match="does not exist"):
        read_labels_file(tmp_path / "missing.json")


def test_cli_prints_rejections_and_both_summaries(spark, tiny_root, tmp_path, capsys):
    path = _coco(
        tmp_path / "cli.json",
        [{"id": 1, "sop_instance_uid": "1.9.1"}],
        [_ann(1, 1, [20, 10, 40, 30], level="L3"), _ann(1, 1, [150, 10, 60, 30], level="L4")],
    )
    common = ["--set", f"storage.root={tiny_root}", "--set", "tables.annotations=ann_cli"]
    assert main(["labels", "import", "--file", str(path), *common]) == 0
    out, err = capsys.readouterr()
    assert "rejected annotations[1]:" in err and "outside" in err
    printed = json.loads(out)
    assert printed["labels"]["inserted"] == 1 and printed["labels"]["rejected"] == 1
    assert printed["splits"]["table_by_split"] == {"train": 1, "val": 0, "test": 0}  # one study: train

    assert main(["labels", "import", "--file", str(tmp_path / "nope.json"), *common]) == 2
    assert "radlake labels: error: Labels file" in capsys.readouterr().err
