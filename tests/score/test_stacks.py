"""Scoring per series stack: levels decoded once over the stack's frames, then each frame finished."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema

from radlake.models.levels import ANCHOR_LEVELS, LEVELS, VERTEBRA_CLASSES, level_scores
from radlake.score.stacks import FRAME_RESULT, FRAMES_TO_FINISH, finish_stacks

#: A sagittal stack: rows run head to feet (column cosines -z), columns anterior to posterior.
ORIENTATION = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
SPACING = [0.8, 0.8]  # mm
BODY_ROWS = 34.0  # body height in pixels (27 mm)
STEP_ROWS = 48.0  # centre-to-centre distance in pixels (38 mm)


def _scores(look: str, confidence: float) -> list[float]:
    per_class = np.full(len(VERTEBRA_CLASSES), 0.03)
    per_class[VERTEBRA_CLASSES.index(look if look in ANCHOR_LEVELS else "vertebra")] = confidence
    return level_scores(per_class[None], VERTEBRA_CLASSES)[0].tolist()


def _frame(slice_index: int, x_mm: float, looks: list[str], *, confidence: float, nodes=()) -> dict:
    vertebrae = []
    for k, look in enumerate(looks):
        y0 = 40 + k * STEP_ROWS
        vertebrae.append(
            {
                "index": k,
                "level": None,
                "level_status": "uncertain",
                "level_probability": 0.2,
                "level_scores": _scores(look, confidence),
                "score": confidence,
                "box": [100.0, y0, 142.0, y0 + BODY_ROWS],
            }
        )
    return {
        "sop_instance_uid": f"1.2.3.{slice_index}",
        "frame_index": 0,
        "study_instance_uid": "1.2",
        "series_instance_uid": "1.2.3",
        "series_key": "1.2.3/SAGITTAL",
        "slice_index": slice_index,
        "plane": "SAGITTAL",
        "height": 512,
        "width": 512,
        "pixel_spacing": SPACING,
        "position": [x_mm, -100.0, 200.0],  # only x changes across a sagittal stack
        "orientation": ORIENTATION,
        "vertebrae": vertebrae,
        "nodes": [
            {
                "vertebra_index": k,
                "vertebra_box": vertebrae[k]["box"],
                "crop_box_xyxy_px": [80.0, 0.0, 160.0, 512.0],
                "score": 0.7,
                "box": [110.0, vertebrae[k]["box"][1], 120.0, vertebrae[k]["box"][1] + 6],
            }
            for k in nodes
        ],  # fmt: skip
    }


def _finish(frames: list[dict]) -> list[dict]:
    table = pa.Table.from_pylist(frames, schema=to_arrow_schema(FRAMES_TO_FINISH))
    out = finish_stacks(table, merge_iou=0.3, min_probability=0.8)
    assert out.schema == to_arrow_schema(FRAME_RESULT)
    return sorted(out.to_pylist(), key=lambda r: r["slice_index"])


def test_the_stack_names_the_lateral_frames_from_the_mid_sagittal_anchor():
    frames = [
        _frame(0, -8.0, ["v"] * 6, confidence=0.5, nodes=[2]),  # lateral: plain bodies only
        _frame(1, 0.0, ["v", "v", "v", "v", "L5", "S1"], confidence=0.85),
        _frame(2, 8.0, ["v"] * 5, confidence=0.5),
    ]
    lateral, middle, other = _finish(frames)
    assert [v["level"] for v in middle["vertebrae"]] == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert [v["level"] for v in lateral["vertebrae"]] == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert [v["level"] for v in other["vertebrae"]] == ["L1", "L2", "L3", "L4", "L5"]
    assert {v["level_status"] for f in (lateral, middle, other) for v in f["vertebrae"]} == {"identified"}
    assert all(v["level_probability"] >= 0.8 for v in lateral["vertebrae"])
    [node] = lateral["schmorl_nodes"]
    assert node["parent_level"] == "L3" and node["parent_level_status"] == "identified"
    assert node["endplate"] == "superior"
    # Each box also in mm and patient coordinates.
    assert lateral["vertebrae"][0]["center_patient_mm"][0] == pytest.approx(-8.0)


def test_a_stack_without_an_anchor_is_uncertain_and_names_no_level():
    frames = [_frame(i, x, ["v"] * 5, confidence=0.8, nodes=[1] if i == 1 else ()) for i, x in enumerate((-4, 0, 4))]
    finished = _finish(frames)
    assert {v["level_status"] for f in finished for v in f["vertebrae"]} == {"uncertain"}
    assert {v["level"] for f in finished for v in f["vertebrae"]} == {None}
    [node] = finished[1]["schmorl_nodes"]
    assert node["parent_level"] is None and node["parent_level_status"] == "uncertain"


def test_a_body_below_s1_is_dropped_with_the_nodes_in_its_crop():
    frames = [_frame(0, 0.0, ["v", "v", "L5", "S1", "v"], confidence=0.85, nodes=[4])]
    frames[0]["vertebrae"][4]["score"] = 0.45  # a weaker detection of S2
    frames[0]["vertebrae"][4]["level_scores"] = _scores("v", 0.45)
    [finished] = _finish(frames)
    assert [v["level"] for v in finished["vertebrae"]] == ["L3", "L4", "L5", "S1"]
    assert finished["schmorl_nodes"] == [] and finished["n_vertebrae"] == 4
    assert LEVELS[-1] == "S1"
