"""``radlake export-sr``: TID 1500 SR from hand-made predictions whose boxes are the labelled ones."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import radlake.score.sr
from radlake.dicom.geometry import box_geometry
from radlake.errors import RadlakeError
from radlake.score.schema import PREDICTIONS
from radlake.score.sr import (
    DETECTOR_SCORE,
    LEVEL_CODES,
    S1_VERTEBRA,
    SCHMORL_NODE,
    NoPredictionsError,
    StudyNotFoundError,
    build_sr,
    export_sr,
    level_code,
)
from radlake.tables import Table, table_ref

#: Model pairs of this file's fake predictions: the newer one has every labelled box, the older the vertebrae only.
NEW = ("models:/sr_test_vertebra/2", "models:/sr_test_schmorl/2")
OLD = ("models:/sr_test_vertebra/1", "models:/sr_test_schmorl/1")
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
KEYS = ("sop_instance_uid", "frame_index")


def _score(box) -> float:
    """A made-up but reproducible detector score for a box."""
    return round(0.5 + (int(sum(box)) % 50) / 100, 3)


def write_predictions(spark, labelled, config) -> dict:
    """``config``'s ``predictions`` table: one row per frame of ``images`` and pair, boxes from ``annotations``.

    Returns ``{(sop, frame): {"vertebrae": [...], "schmorl_nodes": [...], "study": uid}}`` of pair :data:`NEW`.
    """
    source = labelled.config
    images = table_ref(source, Table.IMAGES).read(spark).drop("pixels").collect()
    geometry = {
        r.sop_instance_uid: r
        for r in table_ref(source, Table.INSTANCES)
        .read(spark)
        .select("sop_instance_uid", "image_position_patient", "image_orientation_patient", "frame_positions")
        .collect()
    }
    boxes: dict[tuple, dict[str, list]] = {}
    for a in table_ref(source, Table.ANNOTATIONS).read(spark).collect():
        inst, key = geometry[a.sop_instance_uid], (a.sop_instance_uid, a.frame_index)
        position = inst.frame_positions[a.frame_index] if inst.frame_positions else inst.image_position_patient
        geo = box_geometry(
            a.box_xyxy_px,
            pixel_spacing=a.pixel_spacing,
            position=position,
            orientation=inst.image_orientation_patient,
        )
        entry = {"score": _score(a.box_xyxy_px), "box_xyxy_px": list(a.box_xyxy_px), **geo}
        frame = boxes.setdefault(key, {"vertebrae": [], "schmorl_nodes": []})
        if a.label_class == "vertebra":
            frame["vertebrae"].append({"level": a.level, **entry})
        else:
            frame["schmorl_nodes"].append({"parent_level": a.parent_level, "endplate": a.endplate, **entry})
    rows = []
    for pair, at, with_nodes in ((OLD, T0, False), (NEW, T0 + timedelta(hours=1), True)):
        for img in images:
            found = boxes.get((img.sop_instance_uid, img.frame_index), {"vertebrae": [], "schmorl_nodes": []})
            nodes = found["schmorl_nodes"] if with_nodes else []
            row = {f.name: None for f in PREDICTIONS.fields}
            row.update({c: img[c] for c in (*KEYS, "study_instance_uid", "series_instance_uid", "series_key")})
            row.update({c: img[c] for c in ("slice_index", "plane", "height", "width", "pixel_spacing")})
            row.update(
                vertebrae=found["vertebrae"],
                schmorl_nodes=nodes,
                n_vertebrae=len(found["vertebrae"]),
                n_schmorl_nodes=len(nodes),
                max_schmorl_score=max((n["score"] for n in nodes), default=None),
                vertebra_model_uri=pair[0],
                vertebra_model_name=pair[0].split("/")[1],
                vertebra_model_version=pair[0].split("/")[2],
                vertebra_model_run_id="run-v",
                schmorl_model_uri=pair[1],
                schmorl_model_name=pair[1].split("/")[1],
                schmorl_model_version=pair[1].split("/")[2],
                schmorl_model_run_id="run-s",
                vertebra_threshold=0.3,
                schmorl_threshold=0.3,
                score_run_id="score-run",
                scored_at=at,
            )
            rows.append(tuple(row[f.name] for f in PREDICTIONS.fields))
    ref = table_ref(config, Table.PREDICTIONS)
    spark.createDataFrame(rows, PREDICTIONS).write.format("delta").mode("overwrite").save(ref.path)
    study_of = {(i.sop_instance_uid, i.frame_index): i.study_instance_uid for i in images}
    return {k: {**v, "study": study_of[k]} for k, v in boxes.items()}


@pytest.fixture(scope="module")
def predicted(spark, labelled_archive, make_config, tmp_path_factory):
    """(config, boxes of pair NEW per frame, study with the most nodes, its SR export summary)."""
    cfg = make_config(labelled_archive.config.storage.root, "tables.predictions=sr_test_predictions")
    boxes = write_predictions(spark, labelled_archive, cfg)
    nodes_per_study: dict[str, int] = {}
    for frame in boxes.values():
        nodes_per_study[frame["study"]] = nodes_per_study.get(frame["study"], 0) + len(frame["schmorl_nodes"])
    study = max(nodes_per_study, key=lambda s: (nodes_per_study[s], s))
    assert nodes_per_study[study] > 0, "the fixture archive must hold a study with Schmorl's nodes"
    out = tmp_path_factory.mktemp("sr-out")
    summary = export_sr(spark, cfg, study_uid=study, out_dir=out)
    return cfg, boxes, study, summary


def _read(path) -> hd.sr.Comprehensive3DSR:
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    return hd.sr.Comprehensive3DSR.from_dataset(ds)


def _study_boxes(boxes: dict, study: str) -> dict:
    return {k: v for k, v in boxes.items() if v["study"] == study}


def test_one_sr_per_study_with_a_group_per_vertebra_and_node(predicted):
    _, boxes, study, summary = predicted
    mine = _study_boxes(boxes, study)
    n_vertebrae = sum(len(f["vertebrae"]) for f in mine.values())
    n_nodes = sum(len(f["schmorl_nodes"]) for f in mine.values())
    assert summary.studies == 1 and len(summary.files) == 1
    assert (summary.vertebra_groups, summary.schmorl_groups) == (n_vertebrae, n_nodes)
    assert summary.measurement_groups == n_vertebrae + n_nodes
    sr = hd.sr.srread(summary.files[0])
    assert isinstance(sr, hd.sr.Comprehensive3DSR) and sr.StudyInstanceUID == study
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == n_vertebrae + n_nodes
    assert len(report.get_planar_roi_measurement_groups(finding_type=codes.SCT.Vertebra)) == n_vertebrae
    assert len(report.get_planar_roi_measurement_groups(finding_type=SCHMORL_NODE)) == n_nodes
    assert summary.as_dict()["files"] == summary.files


def test_finding_sites_regions_and_scores_match_the_boxes(spark, predicted):
    cfg, boxes, study, summary = predicted
    expected: dict[tuple, list] = {}  # (sop, frame, kind, level) -> [(box, score, endplate)]
    for (sop, frame), found in _study_boxes(boxes, study).items():
        for v in found["vertebrae"]:
            expected.setdefault((sop, frame, "vertebra", v["level"]), []).append((v["box_xyxy_px"], v["score"], None))
        for n in found["schmorl_nodes"]:
            item = (n["box_xyxy_px"], n["score"], n["endplate"])
            expected.setdefault((sop, frame, "node", n["parent_level"]), []).append(item)
    sr = _read(summary.files[0])
    instances = {
        r.sop_instance_uid: r
        for r in table_ref(cfg, Table.INSTANCES)
        .read(spark)
        .where(f"study_instance_uid = '{study}'")
        .select("sop_instance_uid", "sop_class_uid", "number_of_frames")
        .collect()
    }
    found: dict[tuple, list] = {}
    for group in sr.content.get_planar_roi_measurement_groups():
        kind = "vertebra" if group.finding_type == codes.SCT.Vertebra else "node"
        assert group.finding_type in (codes.SCT.Vertebra, SCHMORL_NODE)
        [site] = group.finding_sites
        [level] = [lv for lv, code in LEVEL_CODES.items() if site.value == code]
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        inst = instances[ref.ReferencedSOPInstanceUID]  # the referenced instance exists in `instances`
        assert ref.ReferencedSOPClassUID == inst.sop_class_uid
        frame = int(ref.get("ReferencedFrameNumber", 1)) - 1
        coords = region.value
        assert coords.shape == (5, 2) and np.allclose(coords[0], coords[-1])  # closed
        box = [coords[:, 0].min(), coords[:, 1].min(), coords[:, 0].max(), coords[:, 1].max()]
        [score] = [m.value for m in group.get_measurements(name=DETECTOR_SCORE)]
        modifier = site.topographical_modifier
        endplate = None if modifier is None else {"264217000": "superior", "261089000": "inferior"}[modifier.value]
        assert (kind == "vertebra") == (endplate is None)
        found.setdefault((inst.sop_instance_uid, frame, kind, level), []).append((box, float(score), endplate))
    assert set(found) == set(expected)
    for key, items in expected.items():
        got = sorted(found[key])
        for (want_box, want_score, want_end), (box, score, end) in zip(sorted(items), got, strict=True):
            assert np.allclose(box, want_box, atol=1e-3), key  # FL (float32) graphic data
            assert score == pytest.approx(want_score) and end == want_end


def test_evidence_and_patient_come_from_the_deidentified_header(spark, predicted, labelled_archive):
    cfg, boxes, study, summary = predicted
    ds = pydicom.dcmread(summary.files[0])
    sops = {k[0] for k in _study_boxes(boxes, study)}
    evidence = {uid[2] for uid in hd.sr.Comprehensive3DSR.from_dataset(ds).get_evidence()}
    assert evidence == sops
    row = (
        table_ref(cfg, Table.INSTANCES)
        .read(spark)
        .where(f"sop_instance_uid = '{sorted(sops)[0]}'")
        .select("header_json")
        .first()
    )
    header = Dataset.from_json(row.header_json)
    assert str(ds.PatientName) == str(header.get("PatientName", "")) and ds.PatientID == header.PatientID
    # The name in the archive (before de-identification) appears nowhere in the SR file.
    original = _original_header(labelled_archive.archive, study)
    assert str(original.PatientName) and str(original.PatientName) != str(ds.PatientName)
    raw = open(summary.files[0], "rb").read()
    assert str(original.PatientName).encode() not in raw and original.PatientID.encode() not in raw
    # Observer device and private codes are declared.
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99RADLAKE"
    text = raw.decode("latin-1")
    assert "radlake" in text and "sr_test_vertebra 2" in text and "sr_test_schmorl 2" in text


def _original_header(archive, study: str) -> Dataset:
    """The header of one file of ``study`` as stored in the synthetic archive (not de-identified)."""
    for path in sorted(archive.rglob("*")):
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if name.endswith("/"):
                        continue
                    ds = pydicom.dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True, force=True)
                    if ds.get("StudyInstanceUID") == study:
                        return ds
        elif path.is_file() and path.suffix != ".json":
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if ds.get("StudyInstanceUID") == study:
                return ds
    raise AssertionError(f"study {study} not found in the archive")


def test_default_pair_is_the_latest_and_an_older_pair_can_be_chosen(spark, predicted, tmp_path):
    cfg, boxes, study, summary = predicted
    mine = _study_boxes(boxes, study)
    old = export_sr(spark, cfg, study_uid=study, out_dir=tmp_path, model_pair=OLD)
    assert old.schmorl_groups == 0 and old.vertebra_groups == sum(len(f["vertebrae"]) for f in mine.values())
    assert old.files[0] != summary.files[0]  # one file per study and pair
    assert b"sr_test_vertebra 1" in open(old.files[0], "rb").read()
    # Exporting the same predictions again gives the same UIDs.
    again = export_sr(spark, cfg, study_uid=study, out_dir=tmp_path)
    first, second = pydicom.dcmread(summary.files[0]), pydicom.dcmread(again.files[0])
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)


def test_every_study_is_exported_by_default_each_built_on_the_executors(spark, predicted, tmp_path, monkeypatch):
    cfg, boxes, _, _ = predicted
    studies = {f["study"] for f in boxes.values()}

    def built_on_the_driver(*args, **kwargs):
        raise AssertionError("an SR was built on the driver")

    # The executors' Python workers import their own radlake.score.sr: this patch reaches the driver only.
    monkeypatch.setattr(radlake.score.sr, "build_sr", built_on_the_driver)
    summary = export_sr(spark, cfg, out_dir=tmp_path)
    assert summary.studies == len(studies) and summary.studies_without_findings == 0
    assert {p.split("/")[-2] for p in summary.files} == studies
    assert summary.measurement_groups == sum(len(f["vertebrae"]) + len(f["schmorl_nodes"]) for f in boxes.values())


def test_unknown_study_pair_or_missing_table_is_a_clear_error(spark, predicted, make_config, tmp_path):
    cfg, _, study, _ = predicted
    with pytest.raises(StudyNotFoundError, match="1.2.3.404"):
        export_sr(spark, cfg, study_uid="1.2.3.404", out_dir=tmp_path)
    with pytest.raises(StudyNotFoundError, match="models:/nope/1"):
        export_sr(spark, cfg, study_uid=study, out_dir=tmp_path, model_pair=("models:/nope/1", "models:/nope/2"))
    with pytest.raises(ValueError, match="model_pair"):
        export_sr(spark, cfg, out_dir=tmp_path, model_pair=("only-one",))
    empty = make_config(tmp_path / "root")
    with pytest.raises(NoPredictionsError, match="radlake score") as info:
        export_sr(spark, empty, out_dir=tmp_path)
    assert isinstance(info.value, RadlakeError)
    assert not list(tmp_path.rglob("*.dcm"))


def test_level_codes_come_from_pydicom_or_the_private_scheme():
    assert level_code("L3") == codes.SCT.L3Vertebra and level_code("C2") == codes.SCT.C2Vertebra
    assert level_code("S1") == S1_VERTEBRA and S1_VERTEBRA.scheme_designator == "99RADLAKE"
    assert level_code(None) is None and level_code("L9") is None


def test_multiframe_regions_name_the_frame_and_s1_uses_the_private_code():
    """Driver-side build only: an Enhanced MR instance of 10 frames, boxes on frame index 3."""
    header = Dataset()
    header.PatientName, header.PatientID, header.StudyDate = "DEID^ONLY", "pseudo-1", "20260101"
    header.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
    frame = {
        "sop_instance_uid": "1.2.3.4.5",
        "frame_index": 3,
        "series_instance_uid": "1.2.3.4",
        "series_key": "abc",
        "slice_index": 3,
        "sop_class_uid": pydicom.uid.EnhancedMRImageStorage,
        "number_of_frames": 10,
        "modality": "MR",
        "series_number": 7,
        "patient_id": "pseudo-1",
        "header_json": header.to_json(),
        "vertebrae": [{"level": "S1", "score": 0.8, "box_xyxy_px": [10.5, 20.25, 30.0, 41.0]}],
        "schmorl_nodes": [
            {"parent_level": "L5", "endplate": "inferior", "score": 0.7, "box_xyxy_px": [12.0, 38.0, 15.0, 40.0]}
        ],
    }
    document = {"study_instance_uid": "1.2.3", "vertebra_model_uri": NEW[0], "schmorl_model_uri": NEW[1]}
    sr = hd.sr.Comprehensive3DSR.from_dataset(build_sr(document, [frame]))
    assert sr.StudyInstanceUID == "1.2.3" and str(sr.PatientName) == "DEID^ONLY" and sr.PatientID == "pseudo-1"
    vertebra, node = sr.content.get_planar_roi_measurement_groups()
    assert vertebra.finding_sites[0].value == S1_VERTEBRA and node.finding_sites[0].value == codes.SCT.L5Vertebra
    assert node.finding_sites[0].topographical_modifier == codes.SCT.Inferior
    for group, box in ((vertebra, [10.5, 20.25, 30.0, 41.0]), (node, [12.0, 38.0, 15.0, 40.0])):
        ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == "1.2.3.4.5" and ref.ReferencedFrameNumber == 4
        x0, y0, x1, y1 = box
        assert np.allclose(group.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    with pytest.raises(ValueError, match="no vertebra"):
        build_sr(document, [{**frame, "vertebrae": [], "schmorl_nodes": []}])
