"""Executor side of scoring, per series stack: levels decoded once over the stack, then each frame finished.

The vertebra detector names the levels of one frame's bodies; a stack of sagittal
frames shows each vertebra several times, and its mid-sagittal frames show the anchor
(L5, S1) best. :func:`finish_stacks` receives every frame of one stack (grouped by
``series_key`` in Spark), rebuilds each body's place in the stack's image plane from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing
(:func:`radlake.dicom.geometry.in_plane_frame`), decodes the levels of the whole stack
at once (:func:`radlake.models.levels.label_stack`) and then finishes each frame:

- every vertebra gets the stack's decision: ``level`` (named only when
  ``level_status`` is ``identified``), ``level_status`` and ``level_probability``;
  bodies the decoding puts ``outside`` the labelled levels (a sacral segment below S1,
  a false detection) are dropped, with the nodes found in their crops;
- node boxes are clipped to their crop's region and the frame, the same node found in
  the overlapping crops of neighbouring vertebrae is merged (NMS at ``merge_iou``),
  and each node takes the level and status of its vertebra and the endplate it sits on
  (``ImageOrientationPatient[5]`` says which way the rows run);
- every box gets its millimetres and patient coordinates
  (:func:`radlake.dicom.geometry.box_geometry`).

Boxes are ``xyxy`` pixels of their frame (x = column, y = row, origin at the top-left
corner).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructType

from radlake.score.schema import PREDICTIONS, RUN_COLUMNS
from radlake.tables import struct_fields

_DOUBLES = ArrayType(DoubleType())
#: Columns of ``images`` carried into ``predictions``.
IMAGE_COLUMNS = (
    "study_instance_uid",
    "series_instance_uid",
    "series_key",
    "slice_index",
    "plane",
    "height",
    "width",
    "pixel_spacing",
)
#: One predictions row as the executors build it (the run columns are added in Spark).
FRAME_RESULT = StructType([f for f in PREDICTIONS.fields if f.name not in RUN_COLUMNS])
#: What stage 1 says of a vertebra's level (the pyfunc's fields), carried to the stack's decoding.
LEVEL_EVIDENCE = struct_fields(
    ("level", StringType()),
    ("level_status", StringType()),
    ("level_probability", DoubleType()),
    ("level_scores", _DOUBLES),
)
#: A vertebra found by stage 1: its place in the frame's detections (``index``), box, score and level evidence.
FOUND_VERTEBRA = StructType(
    struct_fields(("index", IntegerType())) + LEVEL_EVIDENCE + struct_fields(("score", DoubleType()), ("box", _DOUBLES))
)
#: A node found by stage 2 in the crop of vertebra ``vertebra_index``, mapped to the frame's pixels.
FOUND_NODE = StructType(
    struct_fields(
        ("vertebra_index", IntegerType()),
        ("vertebra_box", _DOUBLES),
        ("crop_box_xyxy_px", _DOUBLES),
        ("score", DoubleType()),
        ("box", _DOUBLES),
    )
)
#: What :func:`finish_stacks` reads per frame: the image keys and geometry (``position`` is
#: this frame's ImagePositionPatient), the vertebrae found and the nodes found in their crops.
FRAMES_TO_FINISH = StructType(
    [f for f in FRAME_RESULT.fields if f.name in ("sop_instance_uid", "frame_index", *IMAGE_COLUMNS)]
    + struct_fields(
        ("position", _DOUBLES),
        ("orientation", _DOUBLES),
        ("vertebrae", ArrayType(FOUND_VERTEBRA)),
        ("nodes", ArrayType(FOUND_NODE)),
    )
)


def decode_stack(frames: list[dict[str, Any]], *, min_probability: float) -> dict[tuple[int, int], dict[str, Any]]:
    """``{(frame position in frames, vertebra index): {level, level_status, level_probability}}`` for one stack.

    The stage-1 detections of each frame (``box``, ``score``, ``level_scores``) are decoded
    together by :func:`radlake.models.levels.label_frames`.
    """
    from radlake.models.levels import label_frames

    decisions = label_frames(frames, min_probability=min_probability)
    out = {}
    for i, (frame, per_frame) in enumerate(zip(frames, decisions, strict=True)):
        for v, decision in zip(frame.get("vertebrae") or [], per_frame, strict=True):
            out[(i, int(v["index"]))] = {
                "level": decision.level,
                "level_status": decision.status.value,
                "level_probability": decision.probability,
            }
    return out


def _inside(node: dict, width: int, height: int) -> dict | None:
    """A node box clipped to its crop's region and to the frame (``None`` if nothing is left).

    A box can reach into the crop's letterbox padding or past the frame's edge, where the
    crop region did.
    """
    cx0, cy0, cx1, cy1 = node["crop_box_xyxy_px"]
    x0, y0, x1, y1 = node["box"]
    x0, x1 = max(x0, cx0, 0.0), min(x1, cx1, float(width))
    y0, y1 = max(y0, cy0, 0.0), min(y1, cy1, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return {**node, "box": [x0, y0, x1, y1]}


def finish_frame(row: dict[str, Any], levels: dict[int, dict[str, Any]], *, merge_iou: float) -> dict[str, Any]:
    """One frame's :data:`FRAME_RESULT` row, its vertebrae labelled by ``levels`` (vertebra index → decision)."""
    import torch
    from torchvision.ops import nms

    from radlake.dicom.geometry import box_geometry
    from radlake.models.crops import endplate_of
    from radlake.vocabulary import LevelStatus

    spacing, position, orientation = row["pixel_spacing"], row["position"], row["orientation"]
    if orientation is not None and len(orientation) != 6:
        orientation = None

    def geometry(box) -> dict:
        box_px = [round(float(v), 3) for v in box]  # 1/1000 pixel, as in ``annotations``
        return {
            "box_xyxy_px": box_px,
            **box_geometry(box_px, pixel_spacing=spacing, position=position, orientation=orientation),
        }

    kept = {
        int(v["index"]): (v, levels[int(v["index"])])
        for v in row["vertebrae"] or []
        if levels[int(v["index"])]["level_status"] != LevelStatus.OUTSIDE.value
    }
    vertebrae = sorted(kept.values(), key=lambda pair: (pair[0]["box"][1] + pair[0]["box"][3]) / 2)
    nodes = [
        n
        for n in (_inside(n, row["width"], row["height"]) for n in row["nodes"] or [])
        if n and int(n["vertebra_index"]) in kept
    ]
    if nodes:
        boxes = torch.tensor([n["box"] for n in nodes], dtype=torch.float64)
        scores = torch.tensor([n["score"] for n in nodes], dtype=torch.float64)
        nodes = [nodes[i] for i in nms(boxes, scores, merge_iou).tolist()]
    row_z = orientation[5] if orientation is not None else None
    found_nodes = []
    for n in nodes:
        parent = kept[int(n["vertebra_index"])][1]
        found_nodes.append(
            {
                "parent_level": parent["level"],
                "parent_level_status": parent["level_status"],
                "endplate": endplate_of(n["box"], n["vertebra_box"], row_z),
                "score": float(n["score"]),
                **geometry(n["box"]),
            }
        )
    return {
        **{k: row[k] for k in FRAME_RESULT.fieldNames() if k in row},
        "vertebrae": [{**decision, "score": float(v["score"]), **geometry(v["box"])} for v, decision in vertebrae],
        "schmorl_nodes": found_nodes,
        "n_vertebrae": len(vertebrae),
        "n_schmorl_nodes": len(found_nodes),
        "max_schmorl_score": float(max(n["score"] for n in found_nodes)) if found_nodes else None,
    }


def finish_stacks(table: pa.Table, *, merge_iou: float, min_probability: float) -> pa.Table:
    """Executor side, one stack (``groupBy(...).applyInArrow``): :data:`FRAMES_TO_FINISH` → :data:`FRAME_RESULT`.

    See the module docstring. Frames are ordered by slice index for a stable output.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    frames = sorted(
        table.to_pylist(), key=lambda f: (f.get("slice_index") or 0, f["sop_instance_uid"], f["frame_index"])
    )
    decisions = decode_stack(frames, min_probability=min_probability)
    out = []
    for i, frame in enumerate(frames):
        levels = {key[1]: decision for key, decision in decisions.items() if key[0] == i}
        out.append(finish_frame(frame, levels, merge_iou=merge_iou))
    return pa.Table.from_pylist(out, schema=to_arrow_schema(FRAME_RESULT))
